"""Holes found by an adversarial probe (issue 12): non-finite gradients on parameters reached
by one objective, expanded gradients written as ``.grad``, accumulation windows kept on errors,
one objective, float64 overflow in the Gram matrix, meta-device losses and sparse gradients."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mokd_optim import MultiObjectiveOptimizer, ObjectiveError
from tests.models import TwoHeadMLP


def _data(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.rand(16, 1, 8, 8, generator=generator),
        torch.randint(0, 10, (16,), generator=generator),
        torch.randn(16, 48, generator=generator),
    )


def _losses(model: TwoHeadMLP, data, *, poison: bool = False):
    """Task and KD losses; ``poison`` adds ``sqrt(b - b.detach())`` on the projector's bias
    (reached by the KD loss only): the value is an exact 0, its gradient is inf."""
    x, y, target = data
    logits, projected, features = model(x)
    kd = F.mse_loss(projected, target)
    if poison:
        bias = model.projector.bias[0]
        kd = kd + torch.sqrt(bias - bias.detach())
    return {"task": F.cross_entropy(logits, y), "kd": kd}, features


def _snapshot(model, opt):
    state = copy.deepcopy(opt.state_dict())
    return (
        [p.detach().clone() for p in model.parameters()],
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        state,
    )


def _assert_same(before, after) -> None:
    for a, b in zip(before[0], after[0]):
        assert torch.equal(a, b)
    for a, b in zip(before[1], after[1]):
        assert (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
    assert _flatten(before[2]) == _flatten(after[2])


def _flatten(state) -> list:
    """A comparable list of every value in a (nested) state dict."""
    if isinstance(state, dict):
        return [(k, _flatten(v)) for k, v in state.items()]
    if isinstance(state, (list, tuple)):
        return [_flatten(v) for v in state]
    if isinstance(state, torch.Tensor):
        return [state.dtype, tuple(state.shape), state.tolist()]
    return [state]


SETUPS = {
    "loop": ("mokd", {"strategy": "loop"}),
    "vmap": ("mokd", {"strategy": "vmap"}),
    "representation": ("mokd", {"strategy": "representation"}),
    "amortized-famo": ("famo", {"observe": "next_batch"}),
    "amortized-weighted": ("weighted", {"weights": [1.0, 0.5]}),
    "per-group": ("mgda", {"balance": "per_group"}),
}


def _make(setup: str, *, grads_present: bool = True):
    method, options = SETUPS[setup]
    torch.manual_seed(0)
    model = TwoHeadMLP()
    opt = MultiObjectiveOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), method, **options
    )
    features_kw = setup == "representation"
    for step in range(2):  # momentum buffers and method state exist
        losses, features = _losses(model, _data(step))
        opt.zero_grad()
        opt.backward(losses, **({"features": features} if features_kw else {}))
        opt.step()
    if grads_present:
        losses, features = _losses(model, _data(5))
        opt.backward(losses, **({"features": features} if features_kw else {}))
    return model, opt


@pytest.mark.parametrize("grads_present", [True, False])
@pytest.mark.parametrize("setup", list(SETUPS))
def test_inf_gradient_on_a_private_parameter_is_refused(setup: str, grads_present: bool) -> None:
    model, opt = _make(setup, grads_present=grads_present)
    if not grads_present:
        opt.zero_grad()
    losses, features = _losses(model, _data(7), poison=True)
    assert all(torch.isfinite(loss) for loss in losses.values())
    before = _snapshot(model, opt)
    kwargs = {"features": features} if setup == "representation" else {}
    with pytest.raises(ObjectiveError, match="gradient is not finite") as info:
        opt.backward(losses, **kwargs)
    assert info.value.objective == "kd"
    _assert_same(before, _snapshot(model, opt))


@pytest.mark.parametrize("setup", ["loop", "vmap", "amortized-famo", "amortized-weighted"])
def test_bad_micro_batch_is_refused_and_the_window_kept(setup: str) -> None:
    """The bad micro-batch itself raises; the window is as it was, so closing it with a clean
    micro-batch gives exactly the update of the two clean micro-batches."""
    results = []
    for with_bad in (False, True):
        model, opt = _make(setup)
        opt.zero_grad()
        opt.backward(_losses(model, _data(10))[0], accumulate=True)
        if with_bad:
            before = _snapshot(model, opt)
            with pytest.raises(ObjectiveError, match="gradient is not finite") as info:
                opt.backward(_losses(model, _data(11), poison=True)[0], accumulate=True)
            assert info.value.objective == "kd"
            assert opt.accumulating
            _assert_same(before, _snapshot(model, opt))
        stats = opt.backward(_losses(model, _data(12))[0])
        results.append(([p.grad.clone() for p in model.parameters()], stats.weights.clone()))
    (grads_a, weights_a), (grads_b, weights_b) = results
    assert torch.equal(weights_a, weights_b)
    for a, b in zip(grads_a, grads_b):
        assert torch.equal(a, b)


def test_bad_closing_micro_batch_keeps_the_window() -> None:
    model, opt = _make("loop")
    opt.zero_grad()
    opt.backward(_losses(model, _data(10))[0], accumulate=True)
    window = opt._window
    with pytest.raises(ObjectiveError, match="gradient is not finite"):
        opt.backward(_losses(model, _data(11), poison=True)[0])
    assert opt.accumulating and opt._window is window
    assert all(p.grad is None for p in model.parameters())


# Expanded (stride-0) gradients ----------------------------------------------------------


class GainModel(nn.Module):
    """A shared trunk and a private ``gain`` used through ``.sum()``: autograd returns its
    gradient as an expanded (stride-0) view. ``dense=True`` computes the same values through
    ``(gain * 1).sum()``, whose gradient autograd returns dense (the reference)."""

    def __init__(self, dense: bool = False) -> None:
        super().__init__()
        self.trunk = nn.Linear(6, 4)
        self.head = nn.Linear(4, 3)
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, 5))
        self.dense = dense

    def losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = torch.tanh(self.trunk(x))
        task = self.head(features).pow(2).mean()
        gain = self.gain * torch.ones(5) if self.dense else self.gain
        aux = features.sin().mean() + gain.sum()
        return {"task": task, "aux": aux}


def _optimizer_configs() -> list:
    configs = []
    for name in sorted(dir(torch.optim)):
        cls = getattr(torch.optim, name)
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
            continue
        # Optimizer: abstract. LBFGS: closure-only. SparseAdam: sparse gradients only.
        # Muon: 2-D parameters only.
        if name in ("Optimizer", "LBFGS", "SparseAdam", "Muon"):
            continue
        parameters = inspect.signature(cls).parameters
        variants: list[dict] = [{}]
        if "foreach" in parameters:
            variants += [{"foreach": True}, {"foreach": False}]
        if "fused" in parameters and name in ("SGD", "Adam", "AdamW", "Adagrad"):
            variants.append({"fused": True})  # the fused CPU kernels torch ships
        for variant in variants:
            label = "-".join(f"{k}={v}" for k, v in variant.items()) or "default"
            configs.append(pytest.param(name, variant, id=f"{name}-{label}"))
    return configs


def _train_gain_model(dense: bool, make_base, steps: int = 3, **options) -> GainModel:
    torch.manual_seed(0)
    model = GainModel(dense=dense)
    opt = MultiObjectiveOptimizer(make_base(model.parameters()), "mgda", **options)
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(0))
    for _ in range(steps):
        opt.zero_grad()
        opt.backward(model.losses(x))
        assert model.gain.grad.stride() == model.gain.stride()
        opt.step()
    return model


@pytest.mark.parametrize(("name", "variant"), _optimizer_configs())
def test_every_torch_optimizer_sees_a_dense_gradient(name: str, variant: dict) -> None:
    """The update is that of a dense ``.grad`` with the same values (what ``loss.backward()``
    would leave), for every optimizer of ``torch.optim`` and its foreach / fused variants."""
    cls = getattr(torch.optim, name)
    models = [
        _train_gain_model(dense, lambda params: cls(params, lr=0.1, **variant))
        for dense in (False, True)
    ]
    for a, b in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


def test_expanded_gradient_with_clipping_and_a_second_backward() -> None:
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(0))
    models = []
    for dense in (False, True):
        torch.manual_seed(0)
        model = GainModel(dense=dense)
        opt = MultiObjectiveOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1), "mgda", max_norm=0.05
        )
        opt.backward(model.losses(x))
        opt.backward(model.losses(x))  # adds, as autograd does
        opt.step()
        models.append(model)
    for a, b in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


def test_a_gradient_autograd_returns_for_two_parameters_is_not_shared() -> None:
    """``a + b`` gives both parameters the same gradient tensor; their ``.grad`` must not alias."""
    a = nn.Parameter(torch.ones(4))
    b = nn.Parameter(torch.ones(4))
    shared = nn.Parameter(torch.ones(4))
    opt = MultiObjectiveOptimizer(torch.optim.SGD([a, b, shared], lr=0.1), "mgda")
    opt.backward({"x": ((a + b) * shared).sum(), "y": shared.pow(2).sum()})
    assert a.grad.data_ptr() != b.grad.data_ptr()
    a.grad.add_(1.0)
    assert torch.equal(b.grad, torch.ones(4))


# Option values ---------------------------------------------------------------------------

NAN, INF = float("nan"), float("inf")
BAD_OPTIONS = [
    ("weighted", {"weights": [NAN, 1.0]}, "weights"),
    ("weighted", {"weights": [INF, 1.0]}, "weights"),
    ("weighted", {"weights": {"task": NAN}}, "weights"),
    ("weighted", {"weights": [-1.0, 1.0]}, "weights"),
    ("weighted", {"weights": ["1", 1.0]}, "weights"),
    ("weighted", {"weights": 2.0}, "weights"),
    ("famo", {"lr": NAN}, "lr"),
    ("famo", {"lr": "0.1"}, "lr"),
    ("famo", {"weight_decay": INF}, "weight_decay"),
    ("famo", {"eps": -1.0}, "eps"),
    ("famo", {"min_losses": [NAN, 0.0]}, "min_losses"),
    ("famo", {"observe": "later"}, "observe"),
    ("mokd-amortized", {"lr": -0.1}, "lr"),
    ("mokd-amortized", {"floor": NAN}, "floor"),
    ("mokd-amortized", {"step": "long"}, "step"),
    ("cagrad", {"c": NAN}, "c"),
    ("cagrad", {"c": "0.4"}, "c"),
    ("cagrad", {"rescale": True}, "rescale"),
    ("nash-mtl", {"tol": INF}, "tol"),
    ("nash-mtl", {"max_iter": 2.5}, "max_iter"),
    ("nash-mtl", {"update_every": 0}, "update_every"),
    ("aligned-mtl", {"rtol": NAN}, "rtol"),
    ("imtl-g", {"fix_sign": "yes"}, "fix_sign"),
    ("mgda", {"backend": "fast"}, "backend"),
    ("mokd", {"backend": "fast"}, "backend"),
    ("mokd", {"simplex": "no"}, "simplex"),
    ("pcgrad", {"seed": 1.5}, "seed"),
    ("upgrad", {"backend": 3}, "backend"),
]


@pytest.mark.parametrize(("method", "options", "option"), BAD_OPTIONS)
def test_bad_method_options_raise_value_error_naming_the_option(
    method: str, options: dict, option: str
) -> None:
    base = torch.optim.SGD([nn.Parameter(torch.ones(2))], lr=0.1)
    with pytest.raises(ValueError, match=rf"{method}: .*{option}"):
        MultiObjectiveOptimizer(base, method, **options)


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"max_norm": "1"}, "max_norm"),
        ({"max_norm": NAN}, "max_norm"),
        ({"max_norm": INF}, "max_norm"),
        ({"max_norm": -1.0}, "max_norm"),
        ({"bucket_bytes": 1.5}, "bucket_bytes"),
        ({"validate": "yes"}, "validate"),
    ],
)
def test_bad_optimizer_options_raise_value_error_naming_the_option(
    options: dict, option: str
) -> None:
    base = torch.optim.SGD([nn.Parameter(torch.ones(2))], lr=0.1)
    with pytest.raises(ValueError, match=option):
        MultiObjectiveOptimizer(base, **options)


def test_numpy_and_tensor_numbers_are_accepted_as_options() -> None:
    import numpy as np

    base = torch.optim.SGD([nn.Parameter(torch.ones(2))], lr=0.1)
    opt = MultiObjectiveOptimizer(
        base, "weighted", weights=[np.float32(0.5), torch.tensor(2.0)], max_norm=np.float64(1.0)
    )
    assert opt.method.fixed == (0.5, 2.0)


# Clear errors and honest statistics ------------------------------------------------------


def test_loss_on_the_meta_device_is_named() -> None:
    model = TwoHeadMLP()
    opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    meta = torch.zeros((), device="meta", requires_grad=True)
    with pytest.raises(ObjectiveError, match="'meta' device") as info:
        opt.backward({"task": meta * 2, "kd": meta * 3})
    assert info.value.objective == "task"


class EmbeddingModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(20, 6, sparse=True)
        self.task = nn.Linear(6, 3)
        self.aux = nn.Linear(6, 2)

    def losses(self) -> dict[str, torch.Tensor]:
        features = self.embedding(torch.tensor([1, 4, 7, 4]))
        return {"task": self.task(features).pow(2).mean(), "aux": self.aux(features).exp().mean()}


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_sparse_gradients_are_refused_clearly_before_anything_changes(strategy: str) -> None:
    torch.manual_seed(0)
    model = EmbeddingModel()
    opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), strategy=strategy)
    with pytest.raises(ObjectiveError, match="is sparse.*sparse=False") as info:
        opt.backward(model.losses())
    assert info.value.objective == "task"
    assert all(p.grad is None for p in model.parameters())


def test_sparse_gradients_work_with_the_single_backward_strategies() -> None:
    torch.manual_seed(0)
    model = EmbeddingModel()
    reference = copy.deepcopy(model)
    opt = MultiObjectiveOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), "weighted", weights=[1.0, 0.5]
    )
    opt.backward(model.losses())
    assert model.embedding.weight.grad.is_sparse
    opt.step()
    losses = reference.losses()
    (losses["task"] + 0.5 * losses["aux"]).backward()
    torch.optim.SGD(reference.parameters(), lr=0.1).step()
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("method", ["mokd", "mgda", "imtl-g", "upgrad"])
def test_one_objective_statistics_describe_the_written_update(method: str) -> None:
    torch.manual_seed(0)
    model = TwoHeadMLP()
    opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), method)
    x, y, _ = _data()
    stats = opt.backward({"task": F.cross_entropy(model(x)[0], y)})
    written = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
    assert stats.weights.tolist() == [1.0]
    torch.testing.assert_close(stats.combined_norm.float(), written.norm(), rtol=1e-5, atol=0)
    torch.testing.assert_close(stats.gram[0, 0].float(), written.pow(2).sum(), rtol=1e-5, atol=0)


def test_finite_gradient_whose_squared_norm_overflows_is_not_called_non_finite() -> None:
    shared = nn.Parameter(torch.ones(4, dtype=torch.float64))
    opt = MultiObjectiveOptimizer(torch.optim.SGD([shared], lr=0.1), "mgda")
    losses = {"big": (shared * 1e200).sum(), "small": shared.pow(2).sum()}
    with pytest.raises(ObjectiveError, match="finite but its squared norm overflows") as info:
        opt.backward(losses)
    assert info.value.objective == "big"
    assert shared.grad is None


# Loading state and checkpoints: check everything, then change ---------------------------


def _famo_optimizer(model: nn.Module, groups: int = 1, **options) -> MultiObjectiveOptimizer:
    params = list(model.parameters())
    param_groups = (
        [{"params": params}]
        if groups == 1
        else [{"params": params[:2]}, {"params": params[2:], "lr": 0.01}]
    )
    return MultiObjectiveOptimizer(
        torch.optim.SGD(param_groups, lr=0.1, momentum=0.9), "famo", observe="next_batch", **options
    )


def _train(model: TwoHeadMLP, opt: MultiObjectiveOptimizer, steps: int, names=("task", "kd")):
    for step in range(steps):
        losses, _ = _losses(model, _data(step))
        if len(names) == 3:
            losses["feat"] = losses["kd"] * 0.5 + 0.1
        opt.zero_grad()
        opt.backward(losses)
        opt.step()


def test_load_state_dict_with_a_wrong_optimizer_part_changes_nothing() -> None:
    torch.manual_seed(0)
    model = TwoHeadMLP()
    opt = _famo_optimizer(model)
    _train(model, opt, 3)
    other = TwoHeadMLP()
    source = _famo_optimizer(other, groups=2)
    _train(other, source, 5)
    state = copy.deepcopy(source.state_dict())  # 2 parameter groups, other logits
    assert not torch.equal(state["methods"][0]["logits"], opt.method.logits)
    before = _flatten(opt.state_dict())
    with pytest.raises(ValueError, match="2 parameter groups"):
        opt.load_state_dict(state)
    assert _flatten(opt.state_dict()) == before


def test_method_state_for_another_number_of_objectives_is_refused_at_load() -> None:
    torch.manual_seed(0)
    model = TwoHeadMLP()
    opt = _famo_optimizer(model)
    _train(model, opt, 2)
    other = TwoHeadMLP()
    three = _famo_optimizer(other)
    _train(other, three, 2, names=("task", "kd", "feat"))
    state = copy.deepcopy(three.state_dict())
    state["optimizer"] = copy.deepcopy(opt.state_dict()["optimizer"])
    before = _flatten(opt.state_dict())
    with pytest.raises(ValueError, match="3 logits but got 2 objectives"):
        opt.load_state_dict(state)
    assert _flatten(opt.state_dict()) == before


def test_load_checkpoint_checks_every_component_before_changing_any(tmp_path) -> None:
    from mokd_optim.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    saved_model = TwoHeadMLP()
    famo = _famo_optimizer(saved_model)
    _train(saved_model, famo, 2)
    path = tmp_path / "famo.pt"
    save_checkpoint(path, model=saved_model, optimizer=famo, step=2)

    torch.manual_seed(1)
    model = TwoHeadMLP()
    mokd = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    _train(model, mokd, 1)
    before_model = [p.detach().clone() for p in model.parameters()]
    before_opt = _flatten(mokd.state_dict())
    rng_before = torch.get_rng_state()
    with pytest.raises(ValueError, match="optimizer.*does not fit method 'mokd'"):
        load_checkpoint(path, model=model, optimizer=mokd)
    assert all(torch.equal(a, b) for a, b in zip(before_model, model.parameters()))
    assert _flatten(mokd.state_dict()) == before_opt
    assert torch.equal(torch.get_rng_state(), rng_before)
    wider = nn.Linear(3, 3)
    with pytest.raises(ValueError, match="does not fit the checkpoint"):
        load_checkpoint(path, model=wider)


def test_save_removes_temporaries_left_by_a_killed_save(tmp_path) -> None:
    from mokd_optim.checkpoint import save_checkpoint

    path = tmp_path / "ckpt.pt"
    stale = [tmp_path / ".ckpt.pt.a1b2c3d4.tmp", tmp_path / ".ckpt.pt.zz_9yy8x.tmp"]
    for file in stale:
        file.write_bytes(b"partial checkpoint")
    others = [tmp_path / ".ckpt.pt.1.abcdefgh.tmp", tmp_path / ".other.pt.abcdefgh.tmp"]
    for file in others:
        file.write_bytes(b"another checkpoint's temporary")
    save_checkpoint(path, model=TwoHeadMLP(), step=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["ckpt.pt", *(p.name for p in others)]
    )


def test_truncated_and_corrupted_checkpoints_are_named(tmp_path) -> None:
    from mokd_optim.checkpoint import CheckpointCorruptError, load_checkpoint, save_checkpoint

    path = tmp_path / "ckpt.pt"
    model = TwoHeadMLP()
    save_checkpoint(path, model=model, step=1)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointCorruptError, match="truncated.pt is truncated or corrupt"):
        load_checkpoint(truncated, model=TwoHeadMLP())
    # Flip one bit inside the classifier's weights: the file still loads, the digest does not match.
    weights = model.classifier.weight.detach().numpy().tobytes()
    offset = data.index(weights[:64]) + 10
    flipped = bytearray(data)
    flipped[offset] ^= 0x10
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(bytes(flipped))
    target = TwoHeadMLP()
    before = [p.detach().clone() for p in target.parameters()]
    with pytest.raises(CheckpointCorruptError, match="corrupt.pt is corrupt.*digest"):
        load_checkpoint(corrupt, model=target)
    assert all(torch.equal(a, b) for a, b in zip(before, target.parameters()))
    load_checkpoint(corrupt, model=target, verify=False, restore_rng=False)  # opt-out loads
    assert not torch.equal(target.classifier.weight, model.classifier.weight)


# Accumulation when the objective-to-parameter pattern changes between micro-batches -------

PATTERNS = [(), (0,), (1,), (2,), (0, 1), (1, 2), (0, 1, 2)]


def _part(reaching: list[tuple[int, ...]], shapes, stacked: bool, seed: int):
    """An ObjectiveGradients as a strategy returns it: for parameter ``j``, the objectives in
    ``reaching[j]`` have random gradients (one -> exclusive; several -> a block, stacked as
    vmap returns it or a list with ``None`` rows as loop does)."""
    from mokd_optim.gradients import ObjectiveGradients

    generator = torch.Generator().manual_seed(seed)
    result = ObjectiveGradients(reached=[False] * 3)
    dense = {}
    for j, (objectives, shape) in enumerate(zip(reaching, shapes)):
        rows = {k: torch.randn(shape, generator=generator, dtype=torch.float64) for k in objectives}
        dense[j] = torch.stack(
            [rows.get(k, torch.zeros(shape, dtype=torch.float64)) for k in range(3)]
        )
        for k in objectives:
            result.reached[k] = True
        if len(objectives) == 1:
            result.exclusive.append((PARAMS[j], rows[objectives[0]], objectives[0]))
        elif objectives:
            result.params.append(PARAMS[j])
            result.groups.append(0)
            result.blocks.append(dense[j].clone() if stacked else [rows.get(k) for k in range(3)])
    return result, dense


def _densify(gradients) -> dict[int, torch.Tensor]:
    from mokd_optim.gradients import stacked_block

    index = {id(p): j for j, p in enumerate(PARAMS)}
    out: dict[int, torch.Tensor] = {}
    for param, block in zip(gradients.params, gradients.blocks):
        out[index[id(param)]] = stacked_block(block, param).clone()
    for param, grad, k in gradients.exclusive:
        assert index[id(param)] not in out
        rows = torch.zeros((3, *param.shape), dtype=torch.float64)
        rows[k] = grad
        out[index[id(param)]] = rows
    return out


PAIRS = [(a, b) for a in PATTERNS for b in PATTERNS]
PARAMS = [nn.Parameter(torch.zeros(2 + j % 3, dtype=torch.float64)) for j in range(len(PAIRS))]


@pytest.mark.parametrize("stacked", [False, True], ids=["loop-rows", "vmap-blocks"])
def test_merge_covers_every_change_of_the_reach_pattern(stacked: bool) -> None:
    """Every (earlier, later) pair of objective subsets reaching a parameter: the merged
    window holds, per parameter and objective, the sum of the micro-batches' gradients, as a
    block when two or more objectives reached it in the window, else as that one's plain
    gradient."""
    from mokd_optim.gradients import merge_gradients

    shapes = [p.shape for p in PARAMS]
    placement = {id(p): (j, 0) for j, p in enumerate(PARAMS)}
    first, dense_first = _part([a for a, _ in PAIRS], shapes, stacked, seed=1)
    second, dense_second = _part([b for _, b in PAIRS], shapes, not stacked, seed=2)
    merged = merge_gradients(first, second, placement, 3)
    dense = _densify(merged)
    for j, (a, b) in enumerate(PAIRS):
        union = set(a) | set(b)
        if not union:
            assert j not in dense
            continue
        torch.testing.assert_close(dense[j], dense_first[j] + dense_second[j], rtol=0, atol=0)
        balanced = any(p is PARAMS[j] for p in merged.params)
        assert balanced == (len(union) >= 2), (a, b)
    # Optimizer order is kept.
    order = [placement[id(p)][0] for p in merged.params]
    assert order == sorted(order)


def test_accumulation_with_a_micro_batch_that_leaves_out_a_head() -> None:
    """End to end: the second micro-batch computes the feature loss from the classifier, so
    the projector head is reached in the first micro-batch only, and the classifier by two
    objectives first and three later. The window must equal the mean of the per-objective
    gradients of the two micro-batches, and its Gram matrix the one over the parameters that
    two or more objectives reached."""
    torch.manual_seed(0)
    model = TwoHeadMLP().double()
    params = list(model.parameters())
    opt = MultiObjectiveOptimizer(torch.optim.SGD(params, lr=0.1), "sum", strategy="loop")
    generator = torch.Generator().manual_seed(3)
    batches = [
        (
            torch.rand(8, 1, 8, 8, generator=generator, dtype=torch.float64),
            torch.randint(0, 10, (8,), generator=generator),
            torch.randn(8, 48, generator=generator, dtype=torch.float64),
        )
        for _ in range(2)
    ]

    def losses(index: int) -> dict[str, torch.Tensor]:
        x, y, target = batches[index]
        logits, projected, _ = model(x)
        feat_input = projected if index == 0 else logits.repeat(1, 5)[:, :48]
        return {
            "task": F.cross_entropy(logits, y),
            "kd": logits.pow(2).mean(),
            "feat": F.mse_loss(feat_input, target),
        }

    per_batch = []
    for index in range(2):
        rows = []
        for loss in losses(index).values():
            grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
            rows.append([torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)])
        per_batch.append(rows)
    mean = [[(a + b) / 2 for a, b in zip(r0, r1)] for r0, r1 in zip(*per_batch)]
    reached = [
        {k for k in range(3) if any(per_batch[i][k][j].abs().sum() > 0 for i in range(2))}
        for j in range(len(params))
    ]
    assert reached[-1] == {2} and reached[-3] == {0, 1, 2}  # projector.bias, classifier.bias
    balanced = [j for j in range(len(params)) if len(reached[j]) >= 2]
    expected_gram = torch.tensor(
        [
            [sum(float((mean[a][j] * mean[b][j]).sum()) for j in balanced) for b in range(3)]
            for a in range(3)
        ],
        dtype=torch.float64,
    )
    opt.backward(losses(0), accumulate=True)
    stats = opt.backward(losses(1))
    for j, param in enumerate(params):
        torch.testing.assert_close(param.grad, sum(mean[k][j] for k in range(3)))
    torch.testing.assert_close(stats.gram, expected_gram)


# AMP: a skipped step teaches the amortised methods nothing -------------------------------


@pytest.mark.parametrize("method", ["famo", "mokd-amortized"])
def test_overflow_skipped_step_is_not_learned_from_with_next_batch(method: str) -> None:
    """The scaler skips the step of an overflowing backward; the next backward's losses must
    not be compared with that skipped step's losses (no Adam step of the logits)."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    torch.manual_seed(0)
    model = TwoHeadMLP()
    opt = MultiObjectiveOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), method, observe="next_batch", scaler=scaler
    )

    def step(index: int, poison: bool = False) -> None:
        losses, _ = _losses(model, _data(index))
        if poison:
            losses = {**losses, "kd": losses["kd"] * float("inf")}
        opt.zero_grad()
        opt.backward(losses)
        scaler.step(opt)
        scaler.update()

    step(0)
    step(1)
    logits = opt.method.logits.clone()
    steps = opt.method.state_dict()["steps"]
    step(2, poison=True)  # skipped by the scaler
    assert scaler.get_scale() < 2.0**10
    losses, _ = _losses(model, _data(3))
    opt.zero_grad()
    opt.backward(losses)  # would learn from the skipped step's losses
    # One Adam step (from step 1 to step 2 was learned when step 2's backward ran); none from
    # the skipped step to step 3.
    assert opt.method.state_dict()["steps"] == steps + 1
    assert not torch.equal(opt.method.logits, logits)
    learned = opt.method.logits.clone()
    scaler.step(opt)
    scaler.update()
    step(4)
    assert opt.method.state_dict()["steps"] == steps + 2  # learning resumes after a real step
    assert not torch.equal(opt.method.logits, learned)


def test_observe_after_a_skipped_step_learns_nothing() -> None:
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    torch.manual_seed(0)
    model = TwoHeadMLP()
    opt = MultiObjectiveOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), "famo", scaler=scaler
    )
    losses, _ = _losses(model, _data(0))
    opt.backward({**losses, "kd": losses["kd"] * float("inf")})
    scaler.step(opt)
    scaler.update()
    before = _flatten(opt.method.state_dict())
    with torch.no_grad():
        opt.observe(_losses(model, _data(0))[0])
    assert _flatten(opt.method.state_dict())[:4] == before[:4]  # logits, moments, steps
