"""Recorders: feature capture by module path on plain, DDP-wrapped and compiled models."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mokd_optim.kd import FeatureRecorder, ModulePathError, resolve_module, unwrap_model
from tests._kd_support import TinyNet, free_port


def eager_reference(model: TinyNet, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the tapped modules produce, computed by calling the stages by hand (no hooks)."""
    stem = model.stem(x)
    layer1 = model.layer1(stem)
    conv = model.layer2[0](layer1)
    layer2 = model.layer2[1](conv)
    return {
        "stem": stem,
        "layer1": layer1,
        "layer2.0": conv,
        "layer2": layer2,
        "out": model.fc(model.pool(layer2).flatten(1)),
    }


def test_plain_model_records_several_taps_with_their_graph() -> None:
    torch.manual_seed(0)
    model, x = TinyNet(), torch.randn(2, 3, 16, 16)
    expected = eager_reference(model, x)
    recorder = FeatureRecorder(model, ["layer1", "layer2.0", "layer2"])
    out = model(x)
    features = recorder.pop()
    assert list(features) == ["layer1", "layer2.0", "layer2"]
    for key, value in features.items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0)
    torch.testing.assert_close(out, expected["out"], rtol=0, atol=0)
    # The recorded tensor is part of the autograd graph of the forward.
    (grad,) = torch.autograd.grad(features["layer1"].sum(), model.stem[0].weight)
    (grad_ref,) = torch.autograd.grad(expected["layer1"].sum(), model.stem[0].weight)
    torch.testing.assert_close(grad, grad_ref)
    assert recorder.features == {}  # pop() emptied it


def test_mapping_keys_input_capture_and_shared_module() -> None:
    model, x = TinyNet(), torch.randn(2, 3, 8, 8)
    expected = eager_reference(model, x)
    recorder = FeatureRecorder(model, {"a": "layer2", "b": "layer2"})
    inputs = FeatureRecorder(model, {"into_fc": "fc"}, capture="input")
    model(x)
    assert recorder["a"] is recorder["b"]
    torch.testing.assert_close(recorder["a"], expected["layer2"])
    torch.testing.assert_close(inputs["into_fc"], model.pool(expected["layer2"]).flatten(1))
    # one hook for the module named twice
    assert len(model.layer2._forward_hooks) == 1


def test_remove_and_context_manager_leave_no_hooks() -> None:
    model = TinyNet()
    recorder = FeatureRecorder(model, ["stem", "layer2"])
    assert recorder.attached and len(model.stem._forward_hooks) == 1
    recorder.remove()
    assert not recorder.attached
    assert all(len(m._forward_hooks) == 0 for m in model.modules())
    model(torch.randn(1, 3, 8, 8))
    assert recorder.features == {}
    with FeatureRecorder(model, "layer1") as inner:
        model(torch.randn(1, 3, 8, 8))
        assert inner["layer1"].shape == (1, 16, 4, 4)
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


def test_unknown_path_lists_close_matches() -> None:
    model = TinyNet()
    with pytest.raises(
        ModulePathError,
        match=r"no module at path 'layer3' in TinyNet; close matches: 'layer2', 'layer1', ",
    ) as info:
        FeatureRecorder(model, ["layer1", "layer3"])
    assert info.value.path == "layer3" and "layer2" in info.value.suggestions
    with pytest.raises(
        ModulePathError, match=r"'layer2\.5'.*deepest existing prefix is 'layer2'.*'layer2\.0'"
    ):
        resolve_module(model, "layer2.5")
    with pytest.raises(
        ModulePathError, match="top-level modules: 'stem', 'layer1', 'layer2', 'pool', 'fc'"
    ):
        resolve_module(model, "zzzzzz")
    # a failed recorder registers nothing
    assert all(len(m._forward_hooks) == 0 for m in model.modules())
    with pytest.raises(KeyError, match="run a forward pass first"):
        FeatureRecorder(model, "fc")["fc"]


def test_data_parallel_is_refused_with_advice() -> None:
    with pytest.raises(TypeError, match=r"use torch\.nn\.parallel\.DistributedDataParallel"):
        FeatureRecorder(nn.DataParallel(TinyNet()), "layer1")


def test_ddp_wrapped_model_with_and_without_prefix() -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
    )
    try:
        torch.manual_seed(1)
        model = TinyNet()
        ddp = DistributedDataParallel(model)
        assert unwrap_model(ddp) is model
        assert resolve_module(ddp, "module.layer1") is model.layer1 is resolve_module(ddp, "layer1")
        x = torch.randn(2, 3, 16, 16)
        expected = eager_reference(model, x)
        recorder = FeatureRecorder(ddp, {"prefixed": "module.layer2.0", "bare": "layer1"})
        out = ddp(x)
        torch.testing.assert_close(out, expected["out"])
        torch.testing.assert_close(recorder["prefixed"], expected["layer2.0"])
        torch.testing.assert_close(recorder["bare"], expected["layer1"])
        # A loss on a recorded feature back-propagates through DDP (gradients all-reduced).
        recorder["bare"].square().mean().backward()
        (grad_ref,) = torch.autograd.grad(expected["layer1"].square().mean(), model.stem[0].weight)
        torch.testing.assert_close(model.stem[0].weight.grad, grad_ref)
        recorder.remove()
        assert all(len(m._forward_hooks) == 0 for m in model.modules())
    finally:
        dist.destroy_process_group()


def test_compiled_model_records_the_same_features_and_gradients() -> None:
    # torch.compile must work here; an environment without a working compiler fails this test.
    torch.manual_seed(2)
    model = TinyNet(width=4)
    x = torch.randn(2, 3, 16, 16)
    expected = eager_reference(model, x)
    (grad_ref,) = torch.autograd.grad(expected["layer1"].square().sum(), model.stem[0].weight)
    compiled = torch.compile(model)
    assert unwrap_model(compiled) is model
    assert resolve_module(compiled, "_orig_mod.layer1") is model.layer1
    recorder = FeatureRecorder(compiled, {"layer1": "_orig_mod.layer1", "conv": "layer2.0"})
    out = compiled(x)
    features = recorder.pop()
    torch.testing.assert_close(out, expected["out"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(features["layer1"], expected["layer1"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(features["conv"], expected["layer2.0"], rtol=1e-5, atol=1e-5)
    (grad,) = torch.autograd.grad(features["layer1"].square().sum(), model.stem[0].weight)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-4, atol=1e-5)
    # Second call: fresh tensors recorded again (no stale capture from tracing time).
    x2 = torch.randn(2, 3, 16, 16)
    compiled(x2)
    torch.testing.assert_close(
        recorder["layer1"], eager_reference(model, x2)["layer1"], rtol=1e-5, atol=1e-5
    )
    recorder.remove()
    assert all(len(m._forward_hooks) == 0 for m in model.modules())
