"""Knowledge distillation: losses, feature recorders, projection heads and the ``Distiller``.

Read like mmrazor's distillers:

- *losses* (:mod:`mokd_optim.kd.losses`): :func:`kd_loss` (Hinton), :func:`dkd_loss` (DKD),
  :func:`dist_loss` (DIST), feature losses (:func:`feature_loss` and friends); pure functions
  plus thin ``nn.Module`` wrappers;
- *recorders* (:mod:`mokd_optim.kd.hooks`): :class:`FeatureRecorder` captures module outputs by
  path on plain, DDP-wrapped and ``torch.compile``d models;
- *connectors* (:mod:`mokd_optim.kd.heads`): :class:`SubspaceHead` projectors and
  :func:`build_heads` for several stages at once;
- :class:`Distiller` (:mod:`mokd_optim.kd.distiller`) bundles them and returns the loss dict
  for :meth:`mokd_optim.MultiObjectiveOptimizer.backward`;
- :class:`TeacherTrust` (:mod:`mokd_optim.kd.trust`): the teacher's record against the student
  on the labels, the evidence ``mokd``'s agreement share takes through ``set_trust``.

See ``docs/kd.md``.
"""

from mokd_optim.kd.distiller import FEATURE_REDUCTIONS, LOGIT_LOSSES, Distiller, DistillerOutput
from mokd_optim.kd.heads import (
    ALIGN_MODES,
    HEAD_KINDS,
    TEACHER_PROJECTORS,
    PointwiseLinear,
    SubspaceHead,
    align_features,
    build_heads,
    feature_channels,
)
from mokd_optim.kd.hooks import (
    CAPTURE_MODES,
    FeatureRecorder,
    ModulePathError,
    resolve_module,
    unwrap_model,
)
from mokd_optim.kd.losses import (
    FEATURE_LOSSES,
    TEACHER_NORMS,
    DISTLoss,
    DKDLoss,
    FeatureLoss,
    KDLoss,
    cosine_feature_loss,
    dist_loss,
    dkd_loss,
    dkd_terms,
    feature_loss,
    kd_loss,
    kl_divergence_rows,
    layer_norm_features,
    mse_feature_loss,
    smooth_l1_feature_loss,
)
from mokd_optim.kd.trust import TRUST_DECAY, TeacherTrust

__all__ = [
    "ALIGN_MODES",
    "CAPTURE_MODES",
    "FEATURE_LOSSES",
    "FEATURE_REDUCTIONS",
    "HEAD_KINDS",
    "LOGIT_LOSSES",
    "TEACHER_NORMS",
    "TEACHER_PROJECTORS",
    "TRUST_DECAY",
    "DISTLoss",
    "DKDLoss",
    "Distiller",
    "DistillerOutput",
    "FeatureLoss",
    "FeatureRecorder",
    "KDLoss",
    "ModulePathError",
    "PointwiseLinear",
    "SubspaceHead",
    "TeacherTrust",
    "align_features",
    "build_heads",
    "cosine_feature_loss",
    "dist_loss",
    "dkd_loss",
    "dkd_terms",
    "feature_channels",
    "feature_loss",
    "kd_loss",
    "kl_divergence_rows",
    "layer_norm_features",
    "mse_feature_loss",
    "resolve_module",
    "smooth_l1_feature_loss",
    "unwrap_model",
]
