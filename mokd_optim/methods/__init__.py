"""Balancing methods and their registry.

``available()`` lists the names; ``get(name, **options)`` builds one. Every method maps the
per-objective information (Gram matrix of the gradients over the balanced parameters, loss
values) to weights on the raw gradients; see :class:`Method`.
"""

from mokd_optim.methods._base import Method
from mokd_optim.methods._fixed import Sum, Weighted
from mokd_optim.methods._mgda import MGDA, gradient_normalizers, mgda_weights
from mokd_optim.methods._mokd import STEP_RULES, MoKD, mokd_simplex_weights, mokd_weights
from mokd_optim.methods._registry import available, get, register

__all__ = [
    "MGDA",
    "STEP_RULES",
    "Method",
    "MoKD",
    "Sum",
    "Weighted",
    "available",
    "get",
    "gradient_normalizers",
    "mgda_weights",
    "mokd_simplex_weights",
    "mokd_weights",
    "register",
]
