"""``Distiller``: a student, a frozen teacher and projection heads, returning named losses.

The distiller reads like mmrazor's: *recorders* capture the tapped features
(:mod:`mokd_optim.kd.hooks`), *connectors* project them (:mod:`mokd_optim.kd.heads`), *losses*
compare them (:mod:`mokd_optim.kd.losses`). Its ``forward(x, target)`` returns the student's
output and a loss dict ready for :meth:`mokd_optim.MultiObjectiveOptimizer.backward`.

Gradient routing with :class:`~mokd_optim.MultiObjectiveOptimizer` (it follows from the
optimizer's rule that only parameters reached by two or more objectives are balanced):

- student parameters reached by several losses (the backbone: ``task``, ``kd`` and ``feat``;
  the classifier: ``task`` and ``kd``) get the balanced combination ``sum_i w_i g_i``;
- head parameters are reached only by the feature loss (``feat``, or their own ``feat.<name>``
  objective), so they get its plain, unweighted gradient;
- the teacher gets no gradient: it runs under ``torch.no_grad()`` with ``requires_grad=False``.
"""

from __future__ import annotations

import copy as copy_module
from collections.abc import Mapping, Sequence
from typing import Any, Callable, NamedTuple, Optional, Union, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from mokd_optim.kd.heads import SubspaceHead
from mokd_optim.kd.hooks import FeatureRecorder, unwrap_model
from mokd_optim.kd.losses import DISTLoss, DKDLoss, FeatureLoss, KDLoss

__all__ = ["FEATURE_REDUCTIONS", "LOGIT_LOSSES", "Distiller", "DistillerOutput"]

LOGIT_LOSSES = ("kd", "dkd", "dist")
"""Built-in logit losses of the distiller: Hinton KD, DKD, DIST."""

FEATURE_REDUCTIONS = ("mean", "sum", "separate")
"""How the feature losses of several heads become objectives: one ``feat`` (mean or sum over
heads) or one ``feat.<head name>`` objective per head."""

Normalization = tuple[Sequence[float], Sequence[float]]


class DistillerOutput(NamedTuple):
    """What :meth:`Distiller.forward` returns: the student's ``output`` and the ``losses``."""

    output: Any
    losses: dict[str, Tensor]


def _build_logit_loss(
    logit_loss: Union[str, Callable[..., Tensor], None], options: Mapping[str, Any]
) -> Optional[Callable[..., Tensor]]:
    if logit_loss is None:
        if options:
            raise ValueError("logit_options were given but logit_loss is None")
        return None
    if isinstance(logit_loss, str):
        classes = {"kd": KDLoss, "dkd": DKDLoss, "dist": DISTLoss}
        if logit_loss not in classes:
            raise ValueError(
                f"unknown logit_loss {logit_loss!r}; choose one of {LOGIT_LOSSES}, a callable, or None"
            )
        try:
            return classes[logit_loss](**options)
        except TypeError as error:
            raise TypeError(
                f"logit_loss {logit_loss!r}: bad logit_options {dict(options)}: {error}"
            ) from error
    if not callable(logit_loss):
        raise TypeError(
            f"logit_loss must be one of {LOGIT_LOSSES}, a callable (student_logits, teacher_logits, target) or None"
        )
    if options:
        raise ValueError(
            "logit_options only apply to the built-in logit losses; bind options into your callable"
        )
    return logit_loss


def _affine_from(
    student_norm: Optional[Normalization], teacher_norm: Optional[Normalization]
) -> Optional[tuple[Tensor, Tensor]]:
    """``(scale, shift)`` with ``x_teacher = x * scale + shift`` per channel, or None."""
    if student_norm is None and teacher_norm is None:
        return None
    if student_norm is None or teacher_norm is None:
        raise ValueError(
            "give both student_normalization and teacher_normalization ((mean, std) each) to re-normalise the "
            "teacher's input, or neither"
        )
    tensors = []
    for role, (mean, std) in (("student", student_norm), ("teacher", teacher_norm)):
        mean_t = torch.as_tensor(mean, dtype=torch.float64).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float64).flatten()
        if mean_t.shape != std_t.shape or not bool((std_t > 0).all()):
            raise ValueError(
                f"{role}_normalization: mean and std need the same length and std > 0, got {mean!r}, {std!r}"
            )
        tensors.append((mean_t, std_t))
    (s_mean, s_std), (t_mean, t_std) = tensors
    if s_mean.numel() != t_mean.numel() and 1 not in (s_mean.numel(), t_mean.numel()):
        raise ValueError(
            f"student and teacher normalizations have {s_mean.numel()} and {t_mean.numel()} channels"
        )
    scale = s_std / t_std
    shift = (s_mean - t_mean) / t_std
    return scale.to(torch.float32), shift.to(torch.float32)


class Distiller(nn.Module):
    """Bundle a student, a frozen teacher and projection heads; ``forward`` returns named losses.

    Args:
        student: the model being trained (plain, ``DistributedDataParallel``-wrapped or
            ``torch.compile``d).
        teacher: the frozen teacher. It is put in eval mode (kept there by :meth:`train`),
            made ``requires_grad_(False)``, run under ``torch.no_grad()``, and **not registered
            as a submodule**: it is absent from ``parameters()``, ``named_modules()`` and
            (unless ``save_teacher``) ``state_dict()``, so neither an optimizer nor a DDP
            wrapper of the distiller ever sees it. ``.to()`` / ``.cuda()`` still move it.
            Must not be DDP-wrapped.
        heads: ``nn.ModuleDict`` (or mapping) name -> :class:`SubspaceHead` with
            ``student_path`` and ``teacher_path`` set (e.g. from
            :func:`~mokd_optim.kd.build_heads`); ``None`` for logit-only distillation.
        task_loss: ``f(output, target) -> scalar`` (objective ``"task"``); ``None`` to leave
            it out. Default cross-entropy.
        logit_loss: ``"kd"`` (default), ``"dkd"``, ``"dist"``, a callable
            ``f(student_logits, teacher_logits, target) -> scalar``, or ``None``; objective
            ``"kd"``.
        logit_options: options of the built-in logit loss, e.g. ``{"T": 4.0}``.
        feature_loss: ``"smooth_l1"`` (default), ``"mse"`` or ``"cosine"``, applied to each
            head's ``(student, teacher)`` projections.
        feature_options: options of the feature loss; default ``{"teacher_norm":
            "layernorm"}`` (teacher LayerNorm-ed without affine parameters, as in VkD).
        feature_reduction: ``"mean"`` (default) or ``"sum"`` over heads into one ``"feat"``
            objective, or ``"separate"``: one ``"feat.<head name>"`` objective per head.
        student_normalization, teacher_normalization: ``(mean, std)`` per channel that each
            model expects; when given, the student's input is re-normalised for the teacher.
        teacher_transform: applied to the teacher's input after re-normalisation (e.g. a
            resize when the teacher expects another resolution).
        teacher_dtype: run the teacher in this dtype (e.g. ``torch.bfloat16``); its outputs
            are compared in ``float32``.
        save_teacher: include the teacher's tensors (under ``teacher.``) in ``state_dict()``
            and load them back. Default False: checkpoints hold the student and the heads;
            the teacher is re-created from its own weights.

    Objectives appear in the order ``task``, ``kd``, ``feat`` (the task loss first, which is
    what :class:`~mokd_optim.methods.MoKD`'s default ``anchor=0`` expects).

    Raises:
        TypeError: a DDP-wrapped teacher, heads that are not :class:`SubspaceHead` objects,
            a non-callable loss.
        ValueError: teacher and student share parameters, heads without paths, unknown loss
            names or reductions, a normalisation given for one side only.
        ModulePathError: a head's path does not exist in its model.
    """

    teacher_input_scale: Optional[Tensor]
    teacher_input_shift: Optional[Tensor]
    teacher_transform: Optional[Callable[[Tensor], Tensor]]

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        heads: Optional[Union[nn.ModuleDict, Mapping[str, SubspaceHead]]] = None,
        *,
        task_loss: Optional[Callable[[Any, Tensor], Tensor]] = F.cross_entropy,
        logit_loss: Union[str, Callable[..., Tensor], None] = "kd",
        logit_options: Optional[Mapping[str, Any]] = None,
        feature_loss: str = "smooth_l1",
        feature_options: Optional[Mapping[str, Any]] = None,
        feature_reduction: str = "mean",
        student_normalization: Optional[Normalization] = None,
        teacher_normalization: Optional[Normalization] = None,
        teacher_transform: Optional[Callable[[Tensor], Tensor]] = None,
        teacher_dtype: Optional[torch.dtype] = None,
        save_teacher: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(student, nn.Module) or not isinstance(teacher, nn.Module):
            raise TypeError("student and teacher must be nn.Module objects")
        if isinstance(teacher, (DistributedDataParallel, nn.DataParallel)):
            raise TypeError(
                "the teacher must not be wrapped in DistributedDataParallel/DataParallel: it is frozen and never "
                "synchronised; pass the bare teacher (each rank runs its own copy)"
            )
        student_ids = {id(p) for p in student.parameters()}
        if any(id(p) in student_ids for p in teacher.parameters()):
            raise ValueError(
                "teacher and student share parameters; the teacher must be a separate, frozen model"
            )
        if feature_reduction not in FEATURE_REDUCTIONS:
            raise ValueError(
                f"unknown feature_reduction {feature_reduction!r}; choose one of {FEATURE_REDUCTIONS}"
            )
        if task_loss is not None and not callable(task_loss):
            raise TypeError("task_loss must be a callable (output, target) -> scalar, or None")

        self.student = student
        teacher.requires_grad_(False)
        if teacher_dtype is not None:
            teacher.to(teacher_dtype)
        teacher.eval()
        # A tuple keeps the teacher out of nn.Module registration (parameters, state_dict, DDP).
        self._teacher_slot = (teacher,)
        self.teacher_dtype = teacher_dtype
        self.save_teacher = save_teacher

        if heads is None:
            heads = nn.ModuleDict()
        elif not isinstance(heads, nn.ModuleDict):
            heads = nn.ModuleDict(dict(heads))
        for name, head in heads.items():
            if not isinstance(head, SubspaceHead):
                raise TypeError(
                    f"head {name!r} is a {type(head).__name__}; heads must be SubspaceHead objects"
                )
            if head.student_path is None or head.teacher_path is None:
                raise ValueError(
                    f"head {name!r} does not know which layers it connects; build it with build_heads() or pass "
                    "student_path= and teacher_path= to SubspaceHead"
                )
        self.heads = heads

        self.task_loss = task_loss
        self.logit_loss = _build_logit_loss(logit_loss, dict(logit_options or {}))
        options = (
            {"teacher_norm": "layernorm"} if feature_options is None else dict(feature_options)
        )
        self.feature_loss = FeatureLoss(feature_loss, **options)
        self.feature_reduction = feature_reduction
        if self.task_loss is None and self.logit_loss is None and len(self.heads) == 0:
            raise ValueError(
                "the distiller has no loss: enable task_loss, logit_loss or give heads"
            )

        affine = _affine_from(student_normalization, teacher_normalization)
        self.register_buffer(
            "teacher_input_scale", None if affine is None else affine[0], persistent=False
        )
        self.register_buffer(
            "teacher_input_shift", None if affine is None else affine[1], persistent=False
        )
        self.teacher_transform = teacher_transform

        student_paths = list(
            dict.fromkeys(cast(str, head.student_path) for head in self.heads.values())
        )
        teacher_paths = list(
            dict.fromkeys(cast(str, head.teacher_path) for head in self.heads.values())
        )
        self._student_recorder = FeatureRecorder(student, student_paths) if student_paths else None
        self._teacher_recorder = FeatureRecorder(teacher, teacher_paths) if teacher_paths else None

    # The teacher -------------------------------------------------------------------------

    @property
    def teacher(self) -> nn.Module:
        """The frozen teacher (not a registered submodule; see the class docstring)."""
        return self._teacher_slot[0]

    def train(self, mode: bool = True) -> Distiller:
        """Set the student and heads to ``mode``; the teacher always stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Distiller:
        super()._apply(fn, recurse)
        self.teacher._apply(fn)
        if self.teacher_dtype is not None:
            self.teacher.to(self.teacher_dtype)
        return self

    def teacher_input(self, x: Tensor) -> Tensor:
        """The teacher's input for a student batch ``x`` ``(N, C, ...)``: re-normalised
        (``x * std_s / std_t + (mean_s - mean_t) / std_t`` per channel), transformed, cast."""
        scale, shift = self.teacher_input_scale, self.teacher_input_shift
        if scale is not None and shift is not None:
            shape = (1, -1) + (1,) * (x.ndim - 2)
            x = x * scale.to(x.dtype).view(shape) + shift.to(x.dtype).view(shape)
        if self.teacher_transform is not None:
            x = self.teacher_transform(x)
        if self.teacher_dtype is not None and x.is_floating_point():
            x = x.to(self.teacher_dtype)
        return x

    # Parameters --------------------------------------------------------------------------

    def head_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the heads (they receive only the distillation gradient)."""
        return [p for p in self.heads.parameters() if p.requires_grad]

    def student_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the student (they receive the balanced gradient)."""
        return [p for p in self.student.parameters() if p.requires_grad]

    def param_groups(
        self,
        *,
        weight_decay: float = 0.0,
        head_weight_decay: float = 0.0,
        lr: Optional[float] = None,
        head_lr: Optional[float] = None,
    ) -> list[dict[str, Any]]:
        """Parameter groups for a ``torch.optim`` optimizer: ``"student"`` and ``"heads"``.

        ``lr`` / ``head_lr`` are set only when given (else the optimizer's default applies).
        The heads group is left out when the heads have no trainable parameters.
        """
        groups: list[dict[str, Any]] = [
            {"params": self.student_parameters(), "weight_decay": weight_decay, "name": "student"}
        ]
        if lr is not None:
            groups[0]["lr"] = lr
        head_params = self.head_parameters()
        if head_params:
            groups.append(
                {"params": head_params, "weight_decay": head_weight_decay, "name": "heads"}
            )
            if head_lr is not None:
                groups[1]["lr"] = head_lr
        return groups

    # Forward -----------------------------------------------------------------------------

    def _attach(self) -> None:
        for recorder in (self._student_recorder, self._teacher_recorder):
            if recorder is not None and not recorder.attached:
                recorder.attach()

    def forward(self, x: Any, target: Optional[Tensor] = None) -> DistillerOutput:
        """Run student and teacher on ``x`` and compute the configured losses.

        Args:
            x: the student's input batch (re-normalised for the teacher when configured).
            target: class indices ``(N,)`` (or whatever ``task_loss`` takes); needed by the
                task loss and by DKD.

        Returns:
            :class:`DistillerOutput` ``(output, losses)``: the student's output and a dict
            with ``"task"``, ``"kd"`` and ``"feat"`` (or ``"feat.<head>"``) scalars, for the
            losses that are enabled.

        Raises:
            ValueError: ``target`` missing for a loss that needs it.
            TypeError: a model output that is not a tensor where logits are needed.
        """
        self._attach()
        teacher = self.teacher
        if teacher.training:  # someone called teacher.train(); a frozen teacher stays in eval
            teacher.eval()
        output = self.student(x)
        student_features = (
            self._student_recorder.pop() if self._student_recorder is not None else {}
        )
        with torch.no_grad():
            teacher_output = teacher(self.teacher_input(x))
            teacher_features = (
                self._teacher_recorder.pop() if self._teacher_recorder is not None else {}
            )

        losses: dict[str, Tensor] = {}
        if self.task_loss is not None:
            if target is None:
                raise ValueError(
                    "Distiller: the 'task' loss needs target; call distiller(x, target) or pass task_loss=None"
                )
            losses["task"] = self.task_loss(output, target)
        if self.logit_loss is not None:
            for role, value in (("student", output), ("teacher", teacher_output)):
                if not isinstance(value, Tensor):
                    raise TypeError(
                        f"Distiller: the 'kd' loss needs logits but the {role} returned {type(value).__name__}; "
                        "pass logit_loss=None and compute it from the outputs yourself"
                    )
            if getattr(self.logit_loss, "needs_target", False) and target is None:
                raise ValueError(
                    "Distiller: the 'kd' loss (DKD) needs target; call distiller(x, target)"
                )
            losses["kd"] = self.logit_loss(output, teacher_output, target)
        if len(self.heads):
            per_head = {}
            for name, module in self.heads.items():
                head = cast(SubspaceHead, module)
                student_feature = student_features[cast(str, head.student_path)]
                teacher_feature = teacher_features[cast(str, head.teacher_path)]
                projected_student, projected_teacher = head(student_feature, teacher_feature)
                per_head[name] = self.feature_loss(projected_student, projected_teacher)
            if self.feature_reduction == "separate":
                losses.update({f"feat.{name}": value for name, value in per_head.items()})
            else:
                total = torch.stack(list(per_head.values())).sum()
                losses["feat"] = (
                    total / len(per_head) if self.feature_reduction == "mean" else total
                )
        return DistillerOutput(output, losses)

    # Export and checkpoints --------------------------------------------------------------

    def student_for_export(self, copy: bool = True) -> nn.Module:
        """The bare student: no heads, no recorder hooks, no DDP / compile wrapper.

        Its module structure and outputs are those of the student (no inference overhead).

        Args:
            copy: ``True`` (default) returns an independent deep copy; the distiller keeps
                training as before. ``False`` returns the student module itself with the
                distiller's hooks removed (no extra memory); the distiller re-registers them
                at its next forward, so export after training is finished.
        """
        recorder = self._student_recorder
        if recorder is not None:
            recorder.remove()
        bare = unwrap_model(self.student)
        if not copy:
            return bare
        try:
            return copy_module.deepcopy(bare)
        finally:
            if recorder is not None:
                recorder.attach()

    def state_dict(
        self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False
    ) -> Any:
        """Student and head tensors; the teacher's too (under ``teacher.``) if ``save_teacher``."""
        result = super().state_dict(
            *args, destination=destination, prefix=prefix, keep_vars=keep_vars
        )
        if self.save_teacher:
            self.teacher.state_dict(
                destination=result, prefix=prefix + "teacher.", keep_vars=keep_vars
            )
        return result

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        teacher_prefix = prefix + "teacher."
        if self.save_teacher:
            teacher_keys = [key for key in state_dict if key.startswith(teacher_prefix)]
            teacher_state = {
                key[len(teacher_prefix) :]: state_dict.pop(key) for key in teacher_keys
            }
            result = self.teacher.load_state_dict(teacher_state, strict=False)
            missing_keys.extend(teacher_prefix + key for key in result.missing_keys)
            unexpected_keys.extend(teacher_prefix + key for key in result.unexpected_keys)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        parts = [f"teacher={type(unwrap_model(self.teacher)).__name__} (frozen, not registered)"]
        if self.teacher_dtype is not None:
            parts.append(f"teacher_dtype={self.teacher_dtype}")
        parts.append(f"feature_reduction={self.feature_reduction!r}")
        return ", ".join(parts)
