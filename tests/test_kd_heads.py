"""Connectors: SubspaceHead options, spatial alignment and build_heads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mokd_optim.kd import (
    ModulePathError,
    PointwiseLinear,
    SubspaceHead,
    align_features,
    build_heads,
)
from tests._kd_support import TinyNet


def test_width_defaults_to_teacher_and_expansion_needs_a_teacher_projector() -> None:
    assert SubspaceHead(16, 32).width == 32
    assert SubspaceHead(16, 32, expansion=2.0, teacher_projector="fixed").width == 64
    assert SubspaceHead(16, 32, width=48, teacher_projector="linear").width == 48
    with pytest.raises(
        ValueError,
        match="projection width 64 differs from the teacher's 32 channels; pass teacher_projector='fixed'",
    ):
        SubspaceHead(16, 32, expansion=2.0)
    with pytest.raises(ValueError, match="unknown kind 'conv3x3'"):
        SubspaceHead(16, 32, kind="conv3x3")
    with pytest.raises(
        ValueError, match="orthogonal=True is available for the 'linear', 'conv1x1' and 'mlp' kinds"
    ):
        SubspaceHead(16, 32, kind="conv_bn_relu", orthogonal=True)


@pytest.mark.parametrize("kind", ["linear", "conv1x1"])
def test_linear_head_is_one_channel_map_on_every_layout(kind: str) -> None:
    torch.manual_seed(0)
    head = SubspaceHead(6, 10, kind=kind)
    weight, bias = head.projector.weight, head.projector.bias
    vector, tokens, fmap = torch.randn(4, 6), torch.randn(4, 5, 6), torch.randn(4, 6, 3, 2)
    torch.testing.assert_close(head.project(vector), vector @ weight.T + bias)
    torch.testing.assert_close(head.project(tokens), tokens @ weight.T + bias)
    expected_map = torch.einsum("dc,nchw->ndhw", weight, fmap) + bias[None, :, None, None]
    torch.testing.assert_close(head.project(fmap), expected_map)
    # On maps the projection commutes with spatial averaging (it is pointwise and linear).
    torch.testing.assert_close(
        head.project(fmap).mean(dim=(2, 3)), head.project(fmap.mean(dim=(2, 3)))
    )


def test_mlp_and_conv_bn_relu_heads() -> None:
    torch.manual_seed(1)
    mlp = SubspaceHead(6, 10, kind="mlp", hidden=7)
    first, _, second = mlp.projector
    assert (first.in_features, first.out_features, second.out_features) == (6, 7, 10)
    x = torch.randn(3, 6, 4, 4)
    expected = torch.einsum(
        "dh,nhxy->ndxy",
        second.weight,
        torch.relu(
            torch.einsum("hc,ncxy->nhxy", first.weight, x) + first.bias[None, :, None, None]
        ),
    )
    torch.testing.assert_close(mlp.project(x), expected + second.bias[None, :, None, None])

    conv = SubspaceHead(6, 10, kind="conv_bn_relu", kernel_size=3)
    out = conv.project(x)
    assert out.shape == (3, 10, 4, 4) and bool((out >= 0).all())
    conv.eval()  # a vector is a 1x1 map: the kernel's centre tap acts on it
    vec = torch.randn(3, 6)
    as_map = conv.project(vec[:, :, None, None])[:, :, 0, 0]
    torch.testing.assert_close(conv.project(vec), as_map)
    with pytest.raises(ValueError, match="does not take tokens"):
        conv.project(torch.randn(3, 5, 6))


@pytest.mark.parametrize("wide", [True, False])
def test_orthogonal_head_preserves_geometry_through_training(wide: bool) -> None:
    torch.manual_seed(2)
    c_s, c_t = (8, 16) if wide else (16, 8)
    head = SubspaceHead(c_s, c_t, orthogonal=True, bias=False)
    assert head.projector.parametrizations.weight is not None
    opt = torch.optim.SGD(head.parameters(), lr=0.5)
    for _ in range(3):
        loss = (head.project(torch.randn(5, c_s)) - torch.randn(5, c_t)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    w = head.projector.weight.detach()
    gram = w.T @ w if wide else w @ w.T
    torch.testing.assert_close(gram, torch.eye(min(c_s, c_t)), atol=1e-5, rtol=0)
    if wide:  # an isometric embedding: distances between student features are kept
        a, b = torch.randn(2, 1, c_s)
        assert torch.dist(head.project(a), head.project(b)).item() == pytest.approx(
            torch.dist(a, b).item(), rel=1e-5
        )


def test_teacher_projectors() -> None:
    fixed = SubspaceHead(8, 12, expansion=2.0, teacher_projector="fixed", seed=3)
    assert "teacher_embedding" in fixed.state_dict()
    assert all(not name.startswith("teacher") for name, _ in fixed.named_parameters())
    e = fixed.teacher_embedding
    assert e.shape == (24, 12)
    torch.testing.assert_close(e.T @ e, torch.eye(12), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        e, SubspaceHead(8, 12, expansion=2.0, teacher_projector="fixed", seed=3).teacher_embedding
    )
    t = torch.randn(2, 12, 3, 3)
    projected = fixed.project_teacher(t)
    assert projected.shape == (2, 24, 3, 3)
    torch.testing.assert_close(projected.norm(dim=1), t.norm(dim=1))  # isometric per position
    linear = SubspaceHead(8, 12, width=20, teacher_projector="linear")
    assert linear.project_teacher(torch.randn(2, 12)).shape == (2, 20)
    assert {name for name, _ in linear.named_parameters()} >= {
        "teacher_projector.weight",
        "teacher_projector.bias",
    }
    identity = SubspaceHead(8, 12)
    t_vec = torch.randn(2, 12)
    assert identity.project_teacher(t_vec) is t_vec


def test_alignment_modes() -> None:
    s, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 4, 4)
    a, b = align_features(s, t, "interpolate")
    torch.testing.assert_close(
        a, F.interpolate(s, size=(4, 4), mode="bilinear", align_corners=False)
    )
    assert b is t
    a, b = align_features(s, t, "pool")
    torch.testing.assert_close(a, F.avg_pool2d(s, 2))
    assert b is t
    a, b = align_features(
        torch.randn(2, 4, 8, 2), torch.randn(2, 4, 4, 4), "pool"
    )  # mixed: both pooled
    assert a.shape == b.shape == (2, 4, 4, 2)
    a, b = align_features(s, t, "global")
    torch.testing.assert_close(a, s.mean(dim=(2, 3)))
    torch.testing.assert_close(b, t.mean(dim=(2, 3)))
    a, b = align_features(s, torch.randn(2, 4), "global")
    assert a.shape == b.shape == (2, 4)
    with pytest.raises(ValueError, match="use align='global' to pool the map"):
        align_features(s, torch.randn(2, 4), "interpolate")
    with pytest.raises(ValueError, match="5 tokens and teacher 7"):
        align_features(torch.randn(2, 5, 4), torch.randn(2, 7, 4))


def test_head_forward_projects_and_aligns_and_names_itself_in_errors() -> None:
    head = SubspaceHead(
        4,
        6,
        expansion=1.5,
        teacher_projector="fixed",
        align="interpolate",
        student_path="layer1",
        teacher_path="layer2",
    )
    s, t = head(torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4))
    assert s.shape == t.shape == (2, 9, 4, 4)
    with pytest.raises(
        ValueError,
        match=r"SubspaceHead\('layer1' -> 'layer2'\): expected a student feature with 4 channels, got shape \(2, 5, 8, 8\)",
    ):
        head(torch.randn(2, 5, 8, 8), torch.randn(2, 6, 4, 4))
    # half-precision features are cast to the head's dtype
    s_half, _ = head(
        torch.randn(2, 4, 8, 8, dtype=torch.bfloat16), torch.randn(2, 6, 4, 4, dtype=torch.bfloat16)
    )
    assert s_half.dtype == torch.float32


class BNNet(nn.Module):
    """Stages with BatchNorm, to check the dry run leaves running statistics alone."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.b = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
        )
        self.head = nn.Linear(2 * width, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b(self.a(x)).mean(dim=(2, 3)))


def test_build_heads_infers_widths_without_side_effects() -> None:
    torch.manual_seed(4)
    student, teacher = BNNet(4), BNNet(6)
    teacher.eval()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    heads = build_heads(
        student,
        teacher,
        [("a", "a"), ("b", "b", {"kind": "mlp"}), ("a", "b")],
        torch.randn(3, 3, 8, 8),
        expansion=2.0,
        teacher_projector="fixed",
    )
    assert list(heads) == ["a", "b", "a_to_b"]
    assert (heads["a"].student_channels, heads["a"].teacher_channels, heads["a"].width) == (
        4,
        6,
        12,
    )
    assert (heads["b"].kind, heads["b"].width) == ("mlp", 24)
    assert (heads["a_to_b"].student_path, heads["a_to_b"].teacher_path) == ("a", "b")
    assert student.training and not teacher.training
    for key, value in student.state_dict().items():
        assert torch.equal(value, before[key]), key  # BatchNorm statistics untouched
    assert all(len(m._forward_hooks) == 0 for m in [*student.modules(), *teacher.modules()])
    s, t = heads["a_to_b"](torch.randn(2, 4, 8, 8), torch.randn(2, 12, 4, 4))
    assert s.shape == t.shape == (2, 24, 4, 4)

    named = build_heads(student, teacher, {"low": ("a", "a")}, torch.randn(2, 3, 8, 8))
    assert list(named) == ["low"] and named["low"].width == 6


def test_build_heads_errors() -> None:
    student, teacher = TinyNet(4), TinyNet(8)
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(
        ModulePathError,
        match=r"no module at path 'layer11' in TinyNet; close matches: 'layer1\.1', 'layer1'",
    ):
        build_heads(student, teacher, [("layer1", "layer11")], x)
    with pytest.raises(ValueError, match="duplicate head names"):
        build_heads(student, teacher, [("layer1", "layer1"), ("layer1", "layer1")], x)
    with pytest.raises(ValueError, match="pairs is empty"):
        build_heads(student, teacher, [], x)
    with pytest.raises(RuntimeError, match="dry forward pass of the student failed"):
        build_heads(student, teacher, [("layer1", "layer1")], torch.randn(2, 5, 8, 8))
    assert all(len(m._forward_hooks) == 0 for m in student.modules())


def test_pointwise_linear_is_an_nn_linear() -> None:
    layer = PointwiseLinear(3, 5)
    assert isinstance(layer, nn.Linear)
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(layer(x), F.conv2d(x, layer.weight[:, :, None, None], layer.bias))
