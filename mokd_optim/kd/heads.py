"""Connectors: projection ("subspace") heads between student and teacher features.

A :class:`SubspaceHead` maps a student feature into a space of width ``D`` where it is
compared with the teacher's feature (MoKD projects into a higher-dimensional space; DTO-KD uses
one lightweight projector per tapped stage). It is used only in training and dropped at export.

Feature layouts (the channel dimension is where the projection acts):

- ``(N, C)`` vectors (pooled features, embeddings);
- ``(N, L, C)`` tokens (transformers; channels last);
- ``(N, C, H, W)`` maps (CNNs; channels at dim 1).

:func:`build_heads` builds one head per ``(student path, teacher path)`` pair ("multi-scale"),
inferring every width from one dry forward pass of both models.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import orthogonal as orthogonal_parametrization

from mokd_optim.kd.hooks import FeatureRecorder

__all__ = [
    "ALIGN_MODES",
    "HEAD_KINDS",
    "TEACHER_PROJECTORS",
    "PointwiseLinear",
    "SubspaceHead",
    "align_features",
    "build_heads",
    "feature_channels",
]

HEAD_KINDS = ("linear", "conv1x1", "mlp", "conv_bn_relu")
"""Student projector architectures (see :class:`SubspaceHead`)."""

ALIGN_MODES = ("interpolate", "pool", "global")
"""How student and teacher maps of different spatial size are brought together."""

TEACHER_PROJECTORS = (None, "fixed", "linear")
"""Teacher-side projectors: none (identity), a fixed isometric embedding, a trainable linear map."""


def feature_channels(x: Tensor) -> int:
    """Channel count of a feature: ``C`` of ``(N, C)``, ``(N, L, C)`` or ``(N, C, H, W)``.

    Raises ``ValueError`` for other ranks.
    """
    if x.ndim in (2, 3):
        return int(x.shape[-1])
    if x.ndim == 4:
        return int(x.shape[1])
    raise ValueError(
        f"features must be (N, C), (N, L, C) or (N, C, H, W), got shape {tuple(x.shape)}"
    )


class PointwiseLinear(nn.Linear):
    """A linear map of the channel dimension, applied at every position.

    ``weight`` is ``(out, in)`` as in :class:`torch.nn.Linear` (so
    ``torch.nn.utils.parametrizations.orthogonal`` applies directly); on ``(N, C, H, W)`` maps
    it runs as a 1x1 convolution with that weight, on ``(N, C)`` / ``(N, L, C)`` as a linear
    layer.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 4:
            return F.conv2d(x, self.weight[:, :, None, None], self.bias)
        return F.linear(x, self.weight, self.bias)


def _fixed_embedding(out_channels: int, in_channels: int, seed: int) -> Tensor:
    """A ``(out, in)`` matrix with orthonormal columns (``out >= in``: an isometric embedding)
    or orthonormal rows (``out < in``), from a seeded Gaussian (the global RNG is untouched)."""
    generator = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(
        max(out_channels, in_channels),
        min(out_channels, in_channels),
        generator=generator,
        dtype=torch.float64,
    )
    q, r = torch.linalg.qr(gaussian)
    q = q * torch.where(torch.diagonal(r) < 0, -1.0, 1.0)[None, :]
    matrix = q if out_channels >= in_channels else q.T
    return matrix.to(torch.float32).contiguous()


def align_features(
    student: Tensor, teacher: Tensor, mode: str = "interpolate", *, name: str = "head"
) -> tuple[Tensor, Tensor]:
    """Bring a projected student feature and a teacher feature to the same shape.

    - vectors and tokens: returned as they are (token counts must already agree);
    - maps of equal size: unchanged, except for ``"global"``;
    - ``"interpolate"``: the student map is resized (bilinear) to the teacher's ``H x W``;
    - ``"pool"``: each map is adaptive-average-pooled to the element-wise smaller ``H x W``;
    - ``"global"``: maps are averaged over ``H x W`` into vectors (also a map against a vector).

    Raises:
        ValueError: unknown mode, layouts that cannot be matched (token counts differ, tokens
            against maps, a map against a vector without ``"global"``).
    """
    if mode not in ALIGN_MODES:
        raise ValueError(f"{name}: unknown align mode {mode!r}; choose one of {ALIGN_MODES}")
    if mode == "global":
        if student.ndim == 4:
            student = student.mean(dim=(2, 3))
        if teacher.ndim == 4:
            teacher = teacher.mean(dim=(2, 3))
    if student.ndim != teacher.ndim:
        hint = (
            " (use align='global' to pool the map)"
            if {student.ndim, teacher.ndim} == {2, 4}
            else ""
        )
        raise ValueError(
            f"{name}: cannot compare a student feature of shape {tuple(student.shape)} with a teacher feature "
            f"of shape {tuple(teacher.shape)}{hint}"
        )
    if student.ndim == 3 and student.shape[1] != teacher.shape[1]:
        raise ValueError(
            f"{name}: student has {student.shape[1]} tokens and teacher {teacher.shape[1]}; tokens are not "
            "resampled, pool them or tap layers with the same token count"
        )
    if student.ndim == 4 and student.shape[-2:] != teacher.shape[-2:]:
        if mode == "interpolate":
            student = F.interpolate(
                student, size=teacher.shape[-2:], mode="bilinear", align_corners=False
            )
        else:
            size = (
                min(student.shape[-2], teacher.shape[-2]),
                min(student.shape[-1], teacher.shape[-1]),
            )
            if student.shape[-2:] != size:
                student = F.adaptive_avg_pool2d(student, size)
            if teacher.shape[-2:] != size:
                teacher = F.adaptive_avg_pool2d(teacher, size)
    return student, teacher


class SubspaceHead(nn.Module):
    """Project a student feature into a ``D``-dimensional space shared with the teacher.

    Args:
        student_channels: channels ``C_s`` of the student feature.
        teacher_channels: channels ``C_t`` of the teacher feature.
        width: the projection width ``D``; default ``round(C_t * expansion)``.
        expansion: ``D = C_t * expansion`` when ``width`` is not given (``> 1`` projects into a
            higher-dimensional space, as MoKD does; needs a ``teacher_projector``).
        kind: the student projector:

            - ``"linear"``: one linear map of the channels at every position (on maps it is a
              1x1 convolution); the VkD/MoKD default;
            - ``"conv1x1"``: the same map, under the name CNN users look for;
            - ``"mlp"``: linear -> ReLU -> linear, hidden width ``hidden`` (default ``D``);
            - ``"conv_bn_relu"``: ``kernel_size`` convolution -> BatchNorm -> ReLU on maps
              (linear -> BatchNorm1d -> ReLU on vectors; not for tokens). Its output is
              non-negative, so pair it with non-negative teacher features (post-ReLU stages)
              rather than a LayerNorm-ed teacher.
        hidden: hidden width of ``"mlp"``.
        kernel_size: odd kernel size of ``"conv_bn_relu"``.
        orthogonal: parametrise every linear map of the projector with
            ``torch.nn.utils.parametrizations.orthogonal`` (orthonormal rows or columns, so
            the projection preserves or isometrically embeds the student geometry). Linear,
            conv1x1 and mlp kinds only.
        bias: whether the linear maps have a bias.
        align: ``"interpolate"`` (default), ``"pool"`` or ``"global"``; see
            :func:`align_features`.
        teacher_projector: the teacher side, mapped to the same ``D``:

            - ``None``: identity; requires ``D == C_t``;
            - ``"fixed"``: a fixed random matrix with orthonormal columns (an isometric
              embedding of the teacher's space into ``D``; orthonormal rows when ``D < C_t``),
              stored as a buffer (in ``state_dict``) and never trained;
            - ``"linear"``: a trainable linear map. Both sides then move; a feature loss can
              be lowered by shrinking both projections, so use a LayerNorm-ed teacher
              (``teacher_norm="layernorm"``) or the cosine loss with it.
        seed: seed of the ``"fixed"`` teacher matrix.
        student_path, teacher_path: the module paths the head connects (set by
            :func:`build_heads`; used by :class:`~mokd_optim.kd.Distiller` and in messages).

    Inputs of another floating dtype than the head's parameters are cast to it. Gradient
    routing: the head's parameters are reached only by the feature loss; with
    :class:`~mokd_optim.MultiObjectiveOptimizer` they get that loss's plain gradient.

    Raises:
        ValueError: non-positive widths, unknown kind / align / teacher projector, ``D != C_t``
            without a teacher projector, an option the kind does not support.
    """

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        *,
        width: Optional[int] = None,
        expansion: float = 1.0,
        kind: str = "linear",
        hidden: Optional[int] = None,
        kernel_size: int = 3,
        orthogonal: bool = False,
        bias: bool = True,
        align: str = "interpolate",
        teacher_projector: Optional[str] = None,
        seed: int = 0,
        student_path: Optional[str] = None,
        teacher_path: Optional[str] = None,
    ) -> None:
        super().__init__()
        label = (
            f"SubspaceHead({student_path!r} -> {teacher_path!r})"
            if student_path is not None
            else "SubspaceHead"
        )
        for value, what in (
            (student_channels, "student_channels"),
            (teacher_channels, "teacher_channels"),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{label}: {what} must be a positive int, got {value!r}")
        if kind not in HEAD_KINDS:
            raise ValueError(f"{label}: unknown kind {kind!r}; choose one of {HEAD_KINDS}")
        if align not in ALIGN_MODES:
            raise ValueError(f"{label}: unknown align mode {align!r}; choose one of {ALIGN_MODES}")
        if teacher_projector not in TEACHER_PROJECTORS:
            raise ValueError(
                f"{label}: unknown teacher_projector {teacher_projector!r}; choose one of {TEACHER_PROJECTORS}"
            )
        if width is None:
            if not (
                isinstance(expansion, (int, float)) and math.isfinite(expansion) and expansion > 0
            ):
                raise ValueError(
                    f"{label}: expansion must be a finite number > 0, got {expansion!r}"
                )
            width = max(1, round(teacher_channels * expansion))
        elif isinstance(width, bool) or not isinstance(width, int) or width <= 0:
            raise ValueError(f"{label}: width must be a positive int, got {width!r}")
        if teacher_projector is None and width != teacher_channels:
            raise ValueError(
                f"{label}: the projection width {width} differs from the teacher's {teacher_channels} channels; "
                "pass teacher_projector='fixed' (isometric embedding) or 'linear' to map the teacher to the same width"
            )
        if orthogonal and kind == "conv_bn_relu":
            raise ValueError(
                f"{label}: orthogonal=True is available for the 'linear', 'conv1x1' and 'mlp' kinds"
            )
        if kind == "conv_bn_relu" and (kernel_size < 1 or kernel_size % 2 == 0):
            raise ValueError(f"{label}: kernel_size must be a positive odd int, got {kernel_size}")
        self.student_channels = student_channels
        self.teacher_channels = teacher_channels
        self.width = width
        self.kind = kind
        self.hidden = (hidden or width) if kind == "mlp" else None
        self.kernel_size = kernel_size if kind == "conv_bn_relu" else None
        self.orthogonal = orthogonal
        self.align = align
        self.teacher_projector_kind = teacher_projector
        self.student_path = student_path
        self.teacher_path = teacher_path
        self._label = label

        self.projector = self._build_projector(kind, student_channels, width, bias)
        if orthogonal:
            for module in self.projector.modules():
                if isinstance(module, PointwiseLinear):
                    orthogonal_parametrization(module)
        self.teacher_projector: Optional[nn.Module] = None
        if teacher_projector == "linear":
            self.teacher_projector = PointwiseLinear(teacher_channels, width, bias=bias)
        if teacher_projector == "fixed":
            self.register_buffer(
                "teacher_embedding", _fixed_embedding(width, teacher_channels, seed)
            )
        else:
            self.teacher_embedding: Optional[Tensor] = None

    def _build_projector(self, kind: str, channels: int, width: int, bias: bool) -> nn.Module:
        if kind in ("linear", "conv1x1"):
            return PointwiseLinear(channels, width, bias=bias)
        if kind == "mlp":
            assert self.hidden is not None
            return nn.Sequential(
                PointwiseLinear(channels, self.hidden, bias=bias),
                nn.ReLU(),
                PointwiseLinear(self.hidden, width, bias=bias),
            )
        # conv_bn_relu: the spatial and the vector variant share one BatchNorm and ReLU; the
        # input rank picks the path in _project.
        assert self.kernel_size is not None
        return nn.ModuleDict(
            {
                "conv": nn.Conv2d(
                    channels, width, self.kernel_size, padding=self.kernel_size // 2, bias=False
                ),
                "bn": nn.BatchNorm2d(width),
                "relu": nn.ReLU(),
            }
        )

    def _parameter_dtype(self) -> torch.dtype:
        for tensor in self.parameters():
            return tensor.dtype
        return torch.float32 if self.teacher_embedding is None else self.teacher_embedding.dtype

    def _check(self, x: Tensor, channels: int, role: str) -> Tensor:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            kind = type(x).__name__ if not isinstance(x, Tensor) else str(x.dtype)
            path = self.student_path if role == "student" else self.teacher_path
            where = f" at {path!r}" if path is not None else ""
            raise TypeError(
                f"{self._label}: the {role} feature{where} must be a floating point tensor, got {kind}"
            )
        got = feature_channels(x)
        if got != channels:
            raise ValueError(
                f"{self._label}: expected a {role} feature with {channels} channels, got shape {tuple(x.shape)} "
                f"({got} channels); rebuild the head for this layer"
            )
        dtype = self._parameter_dtype()
        return x if x.dtype == dtype else x.to(dtype)

    def project(self, student: Tensor) -> Tensor:
        """The student feature in the ``D``-dimensional space; same layout, ``D`` channels.

        Raises ``ValueError`` / ``TypeError`` for a feature with the wrong channel count or dtype.
        """
        x = self._check(student, self.student_channels, "student")
        if self.kind != "conv_bn_relu":
            return self.projector(x)
        assert isinstance(self.projector, nn.ModuleDict)
        conv = cast(nn.Conv2d, self.projector["conv"])
        bn, relu = self.projector["bn"], self.projector["relu"]
        if x.ndim == 4:
            return relu(bn(conv(x)))
        if x.ndim == 2:
            # A vector is a 1x1 map: the centre tap of the kernel is its linear map.
            assert self.kernel_size is not None
            centre = self.kernel_size // 2
            y = F.linear(x, conv.weight[:, :, centre, centre])
            return relu(bn(y[:, :, None, None]))[:, :, 0, 0]
        raise ValueError(
            f"{self._label}: kind 'conv_bn_relu' does not take tokens of shape {tuple(x.shape)}; use 'linear' or 'mlp'"
        )

    def project_teacher(self, teacher: Tensor) -> Tensor:
        """The teacher feature in the ``D``-dimensional space (identity without a projector)."""
        t = self._check(teacher, self.teacher_channels, "teacher")
        if self.teacher_projector is not None:
            return self.teacher_projector(t)
        if self.teacher_embedding is not None:
            weight = self.teacher_embedding.to(t.dtype)
            return F.conv2d(t, weight[:, :, None, None]) if t.ndim == 4 else F.linear(t, weight)
        return t

    def forward(self, student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
        """Project both sides and align them spatially.

        Args:
            student: ``(N, C_s)``, ``(N, L, C_s)`` or ``(N, C_s, H_s, W_s)``.
            teacher: the teacher feature in a matching layout with ``C_t`` channels.

        Returns:
            ``(student_projected, teacher_projected)``, both with ``D`` channels and the same
            shape, ready for a feature loss.

        Raises:
            ValueError: channel counts differ from the head's, or layouts cannot be aligned.
        """
        return align_features(
            self.project(student), self.project_teacher(teacher), self.align, name=self._label
        )

    def extra_repr(self) -> str:
        parts = [
            f"{self.student_channels} -> {self.width} (teacher {self.teacher_channels})",
            f"kind={self.kind!r}",
        ]
        if self.orthogonal:
            parts.append("orthogonal=True")
        parts.append(f"align={self.align!r}")
        if self.teacher_projector_kind is not None:
            parts.append(f"teacher_projector={self.teacher_projector_kind!r}")
        if self.student_path is not None:
            parts.append(f"paths={self.student_path!r} -> {self.teacher_path!r}")
        return ", ".join(parts)


PairSpec = Union[tuple[str, str], tuple[str, str, Mapping[str, Any]]]


def _dry_run(model: nn.Module, paths: Sequence[str], sample: Any, role: str) -> dict[str, Any]:
    """Record ``paths`` in one forward under ``no_grad`` and eval mode (BatchNorm statistics
    and training flags are left exactly as they were)."""
    modes = [(module, module.training) for module in model.modules()]
    recorder = FeatureRecorder(model, list(dict.fromkeys(paths)))
    try:
        model.eval()
        with torch.no_grad():
            model(sample)
        features = recorder.pop()
    except Exception as error:
        raise RuntimeError(
            f"build_heads: the dry forward pass of the {role} failed: {error}"
        ) from error
    finally:
        recorder.remove()
        for module, mode in modes:
            module.training = mode
    return features


def _key(student_path: str, teacher_path: str) -> str:
    name = student_path if student_path == teacher_path else f"{student_path}_to_{teacher_path}"
    return (name or "output").replace(".", "_")


def build_heads(
    student: nn.Module,
    teacher: nn.Module,
    pairs: Union[Sequence[PairSpec], Mapping[str, PairSpec]],
    sample_input: Any,
    *,
    teacher_input: Any = None,
    **head_options: Any,
) -> nn.ModuleDict:
    """One :class:`SubspaceHead` per ``(student path, teacher path)`` pair, widths inferred.

    Both models run once on the sample (eval mode, no grad; training flags and BatchNorm
    statistics are left unchanged) and the recorded features give each head's
    ``student_channels`` and ``teacher_channels``.

    Args:
        student, teacher: the models (DDP / ``torch.compile`` wrappers are looked through).
        pairs: ``[(student_path, teacher_path), ...]`` or with a third element, a dict of
            per-pair head options overriding ``head_options``; or a mapping name -> pair to
            choose the keys. Default keys: the student path (or ``"<s>_to_<t>"`` when the paths
            differ) with dots replaced by ``_``.
        sample_input: a batch the student accepts (a few samples suffice).
        teacher_input: the teacher's sample when it differs (other normalisation, resolution
            or dtype); default ``sample_input``.
        **head_options: :class:`SubspaceHead` options shared by all heads (``kind``,
            ``expansion``, ``width``, ``orthogonal``, ``align``, ``teacher_projector``, ...).

    Returns:
        ``nn.ModuleDict`` name -> head, on the device of the student's features and in the
        dtype of the student's parameters; each head's ``student_path`` / ``teacher_path`` set.

    Raises:
        ModulePathError: a path does not exist (close matches listed).
        ValueError: no pairs, duplicate keys, a malformed pair, a feature that is not a
            tensor of a supported layout, or a head option error.
        RuntimeError: the dry forward pass failed (the original error is chained).
    """
    items: list[tuple[Optional[str], Any]]
    if isinstance(pairs, Mapping):
        items = [(str(name), pair) for name, pair in pairs.items()]
    else:
        items = [(None, pair) for pair in pairs]
    if not items:
        raise ValueError(
            "build_heads: pairs is empty; give at least one (student_path, teacher_path)"
        )
    specs: list[tuple[str, str, str, dict[str, Any]]] = []
    for name, pair in items:
        if (
            not isinstance(pair, (tuple, list))
            or len(pair) not in (2, 3)
            or not all(isinstance(p, str) for p in pair[:2])
        ):
            raise ValueError(
                f"build_heads: each pair must be (student_path, teacher_path[, options]), got {pair!r}"
            )
        options = dict(head_options)
        if len(pair) == 3:
            options.update(pair[2])
        key = name if name is not None else _key(pair[0], pair[1])
        if "." in key or not key:
            raise ValueError(f"build_heads: head name {key!r} must be non-empty and contain no '.'")
        specs.append((key, pair[0], pair[1], options))
    keys = [spec[0] for spec in specs]
    if len(set(keys)) != len(keys):
        raise ValueError(
            f"build_heads: duplicate head names {keys}; pass a mapping name -> pair to name them"
        )

    student_features = _dry_run(student, [spec[1] for spec in specs], sample_input, "student")
    teacher_features = _dry_run(
        teacher,
        [spec[2] for spec in specs],
        sample_input if teacher_input is None else teacher_input,
        "teacher",
    )
    dtype = next((p.dtype for p in student.parameters() if p.is_floating_point()), torch.float32)
    heads = nn.ModuleDict()
    for key, student_path, teacher_path, options in specs:
        s_feat, t_feat = student_features[student_path], teacher_features[teacher_path]
        for role, path, feat in (
            ("student", student_path, s_feat),
            ("teacher", teacher_path, t_feat),
        ):
            if not isinstance(feat, Tensor) or feat.ndim not in (2, 3, 4):
                shape = tuple(feat.shape) if isinstance(feat, Tensor) else type(feat).__name__
                raise ValueError(
                    f"build_heads: the {role} module at {path!r} produced {shape}; a head needs a tensor of shape "
                    "(N, C), (N, L, C) or (N, C, H, W); tap a module that returns one"
                )
        head = SubspaceHead(
            feature_channels(s_feat),
            feature_channels(t_feat),
            student_path=student_path,
            teacher_path=teacher_path,
            **options,
        )
        heads[key] = head.to(device=s_feat.device, dtype=dtype)
    return heads
