"""Balancing methods and their registry.

``available()`` lists the names; ``get(name, **options)`` builds one. Every method maps the
per-objective information (Gram matrix of the gradients over the balanced parameters, loss
values) to weights on the raw gradients; see :class:`Method`. docs/methods.md describes each
method (formula, options, cost, when to use it, paper).

Registered names: ``"mokd"``, ``"mokd-amortized"``, ``"mgda"``, ``"pcgrad"``, ``"cagrad"``,
``"nash-mtl"``, ``"imtl-g"``, ``"aligned-mtl"``, ``"upgrad"``, ``"dualproj"``, ``"config"``,
``"famo"``, ``"sum"``, ``"weighted"``.
"""

from mokd_optim.methods._aligned_mtl import SCALE_MODES, AlignedMTL, aligned_mtl_weights
from mokd_optim.methods._amortized import OBSERVE_MODES, AmortizedLogits
from mokd_optim.methods._base import ZERO_NORM_RTOL, Method
from mokd_optim.methods._cagrad import CAGrad, cagrad_dual_weights, cagrad_weights
from mokd_optim.methods._config import ConFIG, config_weights
from mokd_optim.methods._dualproj import DualProj, dualproj_weights
from mokd_optim.methods._famo import FAMO
from mokd_optim.methods._fixed import Sum, Weighted
from mokd_optim.methods._imtl_g import IMTLG, imtl_g_weights
from mokd_optim.methods._mgda import MGDA, gradient_normalizers, mgda_weights
from mokd_optim.methods._mokd import STEP_RULES, MoKD, mokd_simplex_weights, mokd_weights
from mokd_optim.methods._mokd_amortized import MoKDAmortized
from mokd_optim.methods._nash_mtl import NashMTL, nash_two
from mokd_optim.methods._pcgrad import PCGrad, pcgrad_weights
from mokd_optim.methods._registry import available, get, register
from mokd_optim.methods._upgrad import UPGrad, upgrad_weights

__all__ = [
    "FAMO",
    "IMTLG",
    "MGDA",
    "OBSERVE_MODES",
    "SCALE_MODES",
    "STEP_RULES",
    "ZERO_NORM_RTOL",
    "AlignedMTL",
    "AmortizedLogits",
    "CAGrad",
    "ConFIG",
    "DualProj",
    "Method",
    "MoKD",
    "MoKDAmortized",
    "NashMTL",
    "PCGrad",
    "Sum",
    "UPGrad",
    "Weighted",
    "aligned_mtl_weights",
    "available",
    "cagrad_dual_weights",
    "cagrad_weights",
    "config_weights",
    "dualproj_weights",
    "get",
    "gradient_normalizers",
    "imtl_g_weights",
    "mgda_weights",
    "mokd_simplex_weights",
    "mokd_weights",
    "nash_two",
    "pcgrad_weights",
    "register",
    "upgrad_weights",
]
