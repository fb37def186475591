"""Distiller: frozen teacher, loss dict, gradient routing with the optimizer, export, checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mokd_optim import MultiObjectiveOptimizer
from mokd_optim.kd import (
    Distiller,
    DistillerOutput,
    SubspaceHead,
    build_heads,
    dist_loss,
    dkd_loss,
    kd_loss,
)
from tests._kd_support import TinyNet, free_port

PAIRS = [("layer1", "layer1"), ("layer2", "layer2")]


def make(seed: int = 0, **options) -> tuple[Distiller, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    student, teacher = TinyNet(width=4), TinyNet(width=8)
    x, y = torch.randn(6, 3, 16, 16), torch.randint(0, 10, (6,))
    heads = build_heads(student, teacher, PAIRS, x[:2], expansion=1.5, teacher_projector="fixed")
    return Distiller(student, teacher, heads, **options), x, y


def grads(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor | None]:
    return list(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))


def test_teacher_is_frozen_unregistered_and_run_without_grad() -> None:
    distiller, x, y = make()
    teacher = distiller.teacher
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert not any(id(p) in teacher_ids for p in distiller.parameters())
    assert all(not p.requires_grad for p in teacher.parameters())
    assert not any(key.startswith("teacher") for key in distiller.state_dict())
    assert {key.split(".")[0] for key in distiller.state_dict()} == {"student", "heads"}
    assert all(not name.startswith("teacher") for name, _ in distiller.named_modules())
    grad_modes = []
    teacher.register_forward_pre_hook(lambda *_: grad_modes.append(torch.is_grad_enabled()))
    distiller.train()
    assert distiller.student.training and distiller.heads.training and not teacher.training
    teacher.train()  # a stray call is undone at the next forward
    _, losses = distiller(x, y)
    assert not teacher.training and grad_modes == [False]
    sum(losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in distiller.student_parameters())


def test_forward_returns_output_and_named_losses_with_their_definitions() -> None:
    distiller, x, y = make(
        logit_options={"T": 3.0}, feature_loss="mse", feature_options={"teacher_norm": None}
    )
    result = distiller(x, y)
    assert isinstance(result, DistillerOutput)
    output, losses = result
    assert list(losses) == ["task", "kd", "feat"]
    student, teacher = distiller.student, distiller.teacher
    torch.testing.assert_close(output, student(x))
    with torch.no_grad():
        t_logits = teacher(x)
    torch.testing.assert_close(losses["task"], F.cross_entropy(output, y))
    torch.testing.assert_close(losses["kd"], kd_loss(output, t_logits, T=3.0))
    # feat = mean over heads of MSE(head(student stage), fixed embedding of teacher stage)
    s1 = student.layer1(student.stem(x))
    s2 = student.layer2(s1)
    with torch.no_grad():
        t1 = teacher.layer1(teacher.stem(x))
        t2 = teacher.layer2(t1)
    per_head = [
        F.mse_loss(*distiller.heads["layer1"](s1, t1)),
        F.mse_loss(*distiller.heads["layer2"](s2, t2)),
    ]
    torch.testing.assert_close(losses["feat"], (per_head[0] + per_head[1]) / 2)


def test_feature_reductions_and_logit_loss_choices() -> None:
    distiller, x, y = make(seed=1)
    mean = distiller(x, y).losses["feat"]
    distiller.feature_reduction = "sum"
    torch.testing.assert_close(distiller(x, y).losses["feat"], 2 * mean)
    distiller.feature_reduction = "separate"
    losses = distiller(x, y).losses
    assert list(losses) == ["task", "kd", "feat.layer1", "feat.layer2"]
    torch.testing.assert_close(losses["feat.layer1"] + losses["feat.layer2"], 2 * mean)

    dkd, x, y = make(seed=1, logit_loss="dkd", logit_options={"alpha": 1.0, "beta": 2.0, "T": 2.0})
    out, losses = dkd(x, y)
    with torch.no_grad():
        t_logits = dkd.teacher(x)
    torch.testing.assert_close(losses["kd"], dkd_loss(out, t_logits, y, alpha=1.0, beta=2.0, T=2.0))
    with pytest.raises(ValueError, match="'task' loss needs target"):
        dkd(x)
    no_task, x, y = make(seed=1, task_loss=None, logit_loss="dist")
    out, losses = no_task(x)
    assert list(losses) == ["kd", "feat"]
    with torch.no_grad():
        torch.testing.assert_close(losses["kd"], dist_loss(out, no_task.teacher(x)))
    custom, x, y = make(seed=1, logit_loss=lambda s, t, target: (s - t).abs().mean())
    out, losses = custom(x, y)
    with torch.no_grad():
        torch.testing.assert_close(losses["kd"], (out - custom.teacher(x)).abs().mean())


def test_head_gradient_is_the_plain_feature_gradient_and_student_gets_the_balanced_one() -> None:
    distiller, x, y = make(seed=2)
    opt = MultiObjectiveOptimizer(torch.optim.SGD(distiller.param_groups(), lr=0.1), "mokd")
    _, losses = distiller(x, y)
    heads, students = distiller.head_parameters(), distiller.student_parameters()
    assert heads and students
    # Which objective reaches what: heads only by "feat", the student by all three.
    for name in ("task", "kd"):
        assert all(g is None for g in grads(losses[name], heads)), name
    feat_head_grads = grads(losses["feat"], heads)
    assert all(g is not None and g.abs().sum() > 0 for g in feat_head_grads)
    per_objective = {name: grads(loss, students) for name, loss in losses.items()}
    opt.zero_grad()
    stats = opt.backward(losses)
    assert stats.names == ("task", "kd", "feat")
    weights = stats.weights
    assert torch.isfinite(weights).all() and not torch.allclose(
        weights, torch.ones(3, dtype=weights.dtype)
    )
    for param, expected in zip(heads, feat_head_grads):
        torch.testing.assert_close(param.grad, expected, rtol=0, atol=0)  # weight 1, untouched
    for index, param in enumerate(students):
        combined = sum(
            float(weights[k]) * (g[index] if g[index] is not None else torch.zeros_like(param))
            for k, g in enumerate(per_objective.values())
        )
        torch.testing.assert_close(param.grad, combined, rtol=1e-5, atol=1e-7)
    teacher_before = copy.deepcopy(distiller.teacher.state_dict())
    opt.step()
    for key, value in distiller.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key])


def test_separate_feature_objectives_route_each_head_to_its_own_loss() -> None:
    distiller, x, y = make(seed=3, feature_reduction="separate")
    opt = MultiObjectiveOptimizer(torch.optim.SGD(distiller.param_groups(), lr=0.1), "mokd")
    _, losses = distiller(x, y)
    expected = {
        name: grads(losses[f"feat.{name}"], list(head.parameters()))
        for name, head in distiller.heads.items()
    }
    opt.zero_grad()
    opt.backward(losses)
    for name, head in distiller.heads.items():
        for param, grad in zip(head.parameters(), expected[name]):
            torch.testing.assert_close(param.grad, grad, rtol=0, atol=0)


def test_param_groups_cover_student_and_heads_once() -> None:
    distiller, _, _ = make()
    groups = distiller.param_groups(weight_decay=5e-4, head_weight_decay=0.0, head_lr=0.01)
    assert [g["name"] for g in groups] == ["student", "heads"]
    assert groups[0]["weight_decay"] == 5e-4 and "lr" not in groups[0]
    assert groups[1]["weight_decay"] == 0.0 and groups[1]["lr"] == 0.01
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in distiller.parameters() if p.requires_grad}
    opt = torch.optim.SGD(groups, lr=0.1)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01]
    assert distiller.heads["layer1"].teacher_embedding is not None  # a buffer, not in any group


def test_export_gives_the_bare_student_with_identical_outputs() -> None:
    distiller, x, y = make(seed=4)
    student = distiller.student
    reference = copy.deepcopy(student)  # deepcopy keeps hooks too; compare structure by names
    exported = distiller.student_for_export()
    assert exported is not student
    assert [(n, type(m)) for n, m in exported.named_modules()] == [
        (n, type(m)) for n, m in reference.named_modules()
    ]
    assert all(
        len(m._forward_hooks) == 0 and len(m._forward_pre_hooks) == 0 for m in exported.modules()
    )
    assert set(exported.state_dict()) == set(student.state_dict())
    student.eval()
    exported.eval()
    with torch.no_grad():
        assert torch.equal(exported(x), student(x))
    # The distiller keeps recording after a copying export.
    assert distiller(x, y).losses["feat"].requires_grad
    in_place = distiller.student_for_export(copy=False)
    assert in_place is student and all(len(m._forward_hooks) == 0 for m in student.modules())
    distiller(x, y)  # re-attaches its hooks for further training
    assert len(student.layer1._forward_hooks) == 1


def test_state_dict_round_trip_with_and_without_the_teacher() -> None:
    distiller, x, y = make(seed=5)
    state = distiller.state_dict()
    assert any(key.startswith("heads.layer1.") for key in state)
    fresh, _, _ = make(seed=6)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh(x, y).losses["task"], distiller(x, y).losses["task"])

    saving, _, _ = make(seed=5, save_teacher=True)
    with_teacher = saving.state_dict()
    teacher_keys = {key for key in with_teacher if key.startswith("teacher.")}
    assert teacher_keys == {f"teacher.{key}" for key in saving.teacher.state_dict()}
    other, _, _ = make(seed=7, save_teacher=True)
    other.load_state_dict(with_teacher)
    for key, value in saving.teacher.state_dict().items():
        assert torch.equal(other.teacher.state_dict()[key], value)
    assert all(not p.requires_grad for p in other.teacher.parameters())
    plain, _, _ = make(seed=7)
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\) in state_dict: \"teacher\."):
        plain.load_state_dict(with_teacher)


def test_teacher_input_renormalisation_and_dtype() -> None:
    s_mean, s_std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    t_mean, t_std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    distiller, x, y = make(
        seed=8,
        student_normalization=(s_mean, s_std),
        teacher_normalization=(t_mean, t_std),
        teacher_dtype=torch.bfloat16,
    )
    seen = []
    distiller.teacher.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    _, losses = distiller(x, y)
    raw = x * torch.tensor(s_std).view(1, 3, 1, 1) + torch.tensor(s_mean).view(1, 3, 1, 1)
    expected = (raw - torch.tensor(t_mean).view(1, 3, 1, 1)) / torch.tensor(t_std).view(1, 3, 1, 1)
    assert seen[0].dtype == torch.bfloat16
    torch.testing.assert_close(seen[0], expected.to(torch.bfloat16))
    assert all(p.dtype == torch.bfloat16 for p in distiller.teacher.parameters())
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    distiller.to(torch.float64)  # the teacher follows device moves but keeps its dtype
    assert all(p.dtype == torch.bfloat16 for p in distiller.teacher.parameters())
    assert all(p.dtype == torch.float64 for p in distiller.student.parameters())
    with pytest.raises(
        ValueError, match="give both student_normalization and teacher_normalization"
    ):
        make(student_normalization=(s_mean, s_std))


def test_configuration_errors_are_explicit() -> None:
    student, teacher = TinyNet(4), TinyNet(8)
    with pytest.raises(ValueError, match="share parameters"):
        Distiller(student, student)
    with pytest.raises(ValueError, match="does not know which layers it connects"):
        Distiller(student, teacher, nn.ModuleDict({"h": SubspaceHead(8, 16)}))
    with pytest.raises(TypeError, match="heads must be SubspaceHead"):
        Distiller(student, teacher, nn.ModuleDict({"h": nn.Linear(2, 2)}))
    with pytest.raises(ValueError, match="unknown logit_loss 'kl'"):
        Distiller(student, teacher, logit_loss="kl")
    with pytest.raises(TypeError, match=r"logit_loss 'kd': bad logit_options \{'tau': 2\.0\}"):
        Distiller(student, teacher, logit_options={"tau": 2.0})
    with pytest.raises(ValueError, match="the distiller has no loss"):
        Distiller(student, teacher, task_loss=None, logit_loss=None)
    with pytest.raises(ValueError, match="unknown feature_reduction"):
        Distiller(student, teacher, feature_reduction="max")


def test_ddp_wrapped_student_and_teacher_rules() -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
    )
    try:
        torch.manual_seed(9)
        student, teacher = TinyNet(4), TinyNet(8)
        x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
        ddp_student = DistributedDataParallel(student)
        heads = build_heads(
            ddp_student,
            teacher,
            [("module.layer2", "layer2")],
            x[:2],
            teacher_projector="fixed",
            expansion=2.0,
        )
        assert heads["module_layer2_to_layer2"].student_channels == 16
        distiller = Distiller(ddp_student, teacher, heads)
        _, losses = distiller(x, y)
        assert list(losses) == ["task", "kd", "feat"] and all(
            torch.isfinite(v) for v in losses.values()
        )
        exported = distiller.student_for_export()
        assert isinstance(exported, TinyNet)
        with torch.no_grad():
            student.eval()
            exported.eval()
            assert torch.equal(exported(x), student(x))
        with pytest.raises(
            TypeError, match="teacher must not be wrapped in DistributedDataParallel"
        ):
            Distiller(TinyNet(4), DistributedDataParallel(TinyNet(8)))
    finally:
        dist.destroy_process_group()


def test_compiled_student_trains_and_exports_bare() -> None:
    torch.manual_seed(10)
    student, teacher = TinyNet(width=4), TinyNet(width=8)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    reference = copy.deepcopy(student)
    compiled = torch.compile(student)
    heads = build_heads(
        compiled, teacher, [("layer2", "layer2")], x[:2], teacher_projector="fixed", expansion=2.0
    )
    distiller = Distiller(compiled, teacher, heads)
    eager = Distiller(reference, copy.deepcopy(teacher), copy.deepcopy(heads))
    out, losses = distiller(x, y)
    out_ref, losses_ref = eager(x, y)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    for name in ("task", "kd", "feat"):
        torch.testing.assert_close(losses[name], losses_ref[name], rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(losses["feat"], student.layer1[0].weight)
    (grad_ref,) = torch.autograd.grad(losses_ref["feat"], reference.layer1[0].weight)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-4, atol=1e-6)
    exported = distiller.student_for_export()
    assert type(exported) is TinyNet and all(len(m._forward_hooks) == 0 for m in exported.modules())
    with torch.no_grad():
        assert torch.equal(exported(x), reference(x))
