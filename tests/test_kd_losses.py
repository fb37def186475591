"""Distillation losses against independent float64 references written here with numpy.

The references follow the papers' definitions directly (softmax, KL, Pearson via
``np.corrcoef``); reference gradients are analytic (KD, MSE) or central finite differences of
the numpy reference. Tolerances: float32 results within ``rtol=1e-4`` of the float64 reference
(1e-3 at temperatures of 1e5), half-precision inputs within ``rtol=1e-4`` of the reference on
the same (rounded) inputs, since the computation itself runs in float32. float32 gradients
agree entry-wise within ``rtol=1e-3`` plus ``1e-4`` of the largest entry.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mokd_optim.kd import (
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
    layer_norm_features,
    mse_feature_loss,
    smooth_l1_feature_loss,
)

# ---------------------------------------------------------------- references (numpy, float64)


def np_log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def np_kl(log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """Row-wise KL(p || q) from log-probabilities, with 0 * log 0 = 0."""
    p = np.exp(log_p)
    terms = np.where(p > 0, p * (log_p - log_q), 0.0)
    return terms.sum(axis=-1)


def ref_kd(s: np.ndarray, t: np.ndarray, T: float) -> float:
    return float(T * T * np_kl(np_log_softmax(t / T), np_log_softmax(s / T)).mean())


def ref_kd_grad(s: np.ndarray, t: np.ndarray, T: float) -> np.ndarray:
    """d/ds of T^2 KL(softmax(t/T) || softmax(s/T)) averaged over N: T (p_s - p_t) / N."""
    return T * (np.exp(np_log_softmax(s / T)) - np.exp(np_log_softmax(t / T))) / s.shape[0]


def ref_dkd(
    s: np.ndarray, t: np.ndarray, y: np.ndarray, alpha: float, beta: float, T: float
) -> float:
    tckd, nckd = [], []
    for n in range(s.shape[0]):
        log_s, log_t = np_log_softmax(s[n] / T), np_log_softmax(t[n] / T)
        others = np.arange(s.shape[1]) != y[n]
        # Binary (target, rest) distributions in log space: log(1 - p_target) = logsumexp(others).
        bin_s = np.array([log_s[y[n]], np.logaddexp.reduce(log_s[others])])
        bin_t = np.array([log_t[y[n]], np.logaddexp.reduce(log_t[others])])
        tckd.append(np_kl(bin_t, bin_s))
        nckd.append(np_kl(np_log_softmax(t[n][others] / T), np_log_softmax(s[n][others] / T)))
    return float(T * T * (alpha * np.mean(tckd) + beta * np.mean(nckd)))


def np_corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; 0 when either vector is constant (the documented convention)."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def ref_dist(s: np.ndarray, t: np.ndarray, beta: float, gamma: float, tau: float) -> float:
    p_s, p_t = np.exp(np_log_softmax(s / tau)), np.exp(np_log_softmax(t / tau))
    inter = np.mean([np_corr(p_s[n], p_t[n]) for n in range(s.shape[0])])
    intra = np.mean([np_corr(p_s[:, c], p_t[:, c]) for c in range(s.shape[1])])
    return float(tau * tau * (beta * (1 - inter) + gamma * (1 - intra)))


def np_channel_axis(x: np.ndarray) -> int:
    return 1 if x.ndim == 4 else -1


def np_layer_norm(x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    axis = np_channel_axis(x)
    mean = x.mean(axis=axis, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axis, keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


def ref_feature(
    s: np.ndarray, t: np.ndarray, kind: str, teacher_norm: str | None, beta: float = 1.0
) -> float:
    if teacher_norm == "layernorm":
        t = np_layer_norm(t)
    e = s - t
    if kind == "mse":
        return float(np.mean(e**2))
    if kind == "smooth_l1":
        return float(np.mean(np.where(np.abs(e) < beta, 0.5 * e**2 / beta, np.abs(e) - 0.5 * beta)))
    axis = np_channel_axis(s)
    cos = (s * t).sum(axis) / (np.linalg.norm(s, axis=axis) * np.linalg.norm(t, axis=axis))
    return float(np.mean(1 - cos))


def numeric_grad(f, x: np.ndarray, rel_step: float = 1e-6) -> np.ndarray:
    """Central finite differences of a float64 numpy function."""
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        step = rel_step * max(1.0, abs(x[index]))
        plus, minus = x.copy(), x.copy()
        plus[index] += step
        minus[index] -= step
        grad[index] = (f(plus) - f(minus)) / (2 * step)
    return grad


def logits(
    seed: int, n: int = 6, c: int = 7, scale: float = 3.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(n, c)) * scale,
        rng.normal(size=(n, c)) * scale,
        rng.integers(0, c, size=n),
    )


def value_and_grad(fn, s: np.ndarray, t: np.ndarray, dtype: torch.dtype = torch.float32):
    s_t = torch.tensor(s, dtype=dtype, requires_grad=True)
    loss = fn(s_t, torch.tensor(t, dtype=dtype))
    (grad,) = torch.autograd.grad(loss, s_t)
    return loss, grad


# ------------------------------------------------------------------------------------- KD

TEMPERATURES = [1.0, 4.0, 1e3]


@pytest.mark.parametrize("T", TEMPERATURES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kd_loss_matches_reference_value_and_analytic_gradient(T: float, seed: int) -> None:
    s, t, _ = logits(seed)
    loss, grad = value_and_grad(lambda a, b: kd_loss(a, b, T=T), s, t)
    assert loss.dtype == torch.float32 and loss.shape == ()
    np.testing.assert_allclose(loss.item(), ref_kd(s, t, T), rtol=1e-4)
    expected = ref_kd_grad(s, t, T)
    # float32 gradients: entries within 1e-4 of the largest entry (the factor T amplifies the
    # rounding of p_s - p_t at high temperature).
    np.testing.assert_allclose(
        grad.numpy(), expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max()
    )


def test_kd_loss_stays_accurate_at_very_high_temperature() -> None:
    # At T = 1e5 the KL is ~1e-10; a naive log-softmax KL in float32 would be pure rounding.
    s, t, _ = logits(3)
    for T in (1e4, 1e5):
        loss = kd_loss(
            torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32), T=T
        )
        np.testing.assert_allclose(loss.item(), ref_kd(s, t, T), rtol=1e-3)
    # The limit T -> inf of T^2 KL is the variance of the logit difference / 2, averaged.
    d = (t - s) - (t - s).mean(axis=1, keepdims=True)
    limit = float((d**2).mean(axis=1).mean() / 2)
    np.testing.assert_allclose(
        kd_loss(torch.tensor(s), torch.tensor(t), T=1e6).item(), limit, rtol=1e-4
    )


def test_kd_loss_large_logits_are_finite_and_exact() -> None:
    s, t, _ = logits(4, scale=1e4)
    loss, grad = value_and_grad(lambda a, b: kd_loss(a, b, T=1.0), s, t)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    np.testing.assert_allclose(loss.item(), ref_kd(s, t, 1.0), rtol=1e-5)
    np.testing.assert_allclose(grad.numpy(), ref_kd_grad(s, t, 1.0), atol=1e-6)


@pytest.mark.parametrize("T", [1.0, 4.0, 1e3])
def test_kd_loss_identical_inputs_is_zero_with_zero_gradient(T: float) -> None:
    s, _, _ = logits(5, scale=50.0)
    loss, grad = value_and_grad(lambda a, b: kd_loss(a, b, T=T), s, s.copy())
    assert loss.item() == 0.0
    assert torch.isfinite(grad).all() and grad.abs().max().item() < 1e-6


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kd_loss_half_inputs_compute_in_float32(dtype: torch.dtype) -> None:
    s, t, _ = logits(6, scale=5.0)
    s_half = torch.tensor(s, dtype=dtype, requires_grad=True)
    t_half = torch.tensor(t, dtype=dtype)
    loss = kd_loss(s_half, t_half, T=4.0)
    (grad,) = torch.autograd.grad(loss, s_half)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert grad.dtype == dtype and torch.isfinite(grad).all()
    s_rounded, t_rounded = s_half.detach().double().numpy(), t_half.double().numpy()
    np.testing.assert_allclose(loss.item(), ref_kd(s_rounded, t_rounded, 4.0), rtol=1e-4)
    # The input rounding (bf16: 8 significant bits) moves the value by about 1 %.
    np.testing.assert_allclose(loss.item(), ref_kd(s, t, 4.0), rtol=3e-2)
    expected = ref_kd_grad(s_rounded, t_rounded, 4.0)
    np.testing.assert_allclose(
        grad.double().numpy(), expected, rtol=2e-2, atol=1e-2 * np.abs(expected).max()
    )


def test_kd_loss_large_logits_in_half_precision() -> None:
    s, t, _ = logits(7, scale=1e4)
    s_half, t_half = torch.tensor(s, dtype=torch.float16), torch.tensor(t, dtype=torch.float16)
    loss = kd_loss(s_half, t_half, T=1.0)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    np.testing.assert_allclose(
        loss.item(), ref_kd(s_half.double().numpy(), t_half.double().numpy(), 1.0), rtol=1e-5
    )


def test_kd_loss_dense_predictions_average_over_positions() -> None:
    rng = np.random.default_rng(8)
    s, t = rng.normal(size=(2, 5, 3, 4)), rng.normal(size=(2, 5, 3, 4))
    rows = lambda a: np.moveaxis(a, 1, -1).reshape(-1, 5)  # noqa: E731
    loss = kd_loss(torch.tensor(s), torch.tensor(t), T=2.0)
    assert loss.dtype == torch.float64
    np.testing.assert_allclose(loss.item(), ref_kd(rows(s), rows(t), 2.0), rtol=1e-10)


def test_kd_loss_rejects_bad_input() -> None:
    s = torch.randn(4, 5)
    with pytest.raises(ValueError, match="kd_loss: T must be"):
        kd_loss(s, s, T=0.0)
    with pytest.raises(
        ValueError, match=r"kd_loss: student_logits \(4, 5\) and teacher_logits \(4, 6\)"
    ):
        kd_loss(s, torch.randn(4, 6))
    with pytest.raises(TypeError, match="floating point"):
        kd_loss(s, torch.ones(4, 5, dtype=torch.long))


# ------------------------------------------------------------------------------------ DKD


@pytest.mark.parametrize("T", TEMPERATURES)
@pytest.mark.parametrize("seed", [0, 1])
def test_dkd_loss_matches_reference_value_and_gradient(T: float, seed: int) -> None:
    s, t, y = logits(seed)
    target = torch.tensor(y)
    loss, grad = value_and_grad(lambda a, b: dkd_loss(a, b, target, alpha=1.0, beta=8.0, T=T), s, t)
    np.testing.assert_allclose(loss.item(), ref_dkd(s, t, y, 1.0, 8.0, T), rtol=1e-4)
    expected = numeric_grad(lambda a: ref_dkd(a, t, y, 1.0, 8.0, T), s)
    np.testing.assert_allclose(
        grad.numpy(), expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max()
    )


def test_dkd_terms_weighting_and_sum_relation() -> None:
    s, t, y = logits(11)
    s_t, t_t, target = torch.tensor(s), torch.tensor(t), torch.tensor(y)
    tckd, nckd = dkd_terms(s_t, t_t, target, T=2.0)
    np.testing.assert_allclose(tckd.item(), ref_dkd(s, t, y, 1.0, 0.0, 2.0), rtol=1e-10)
    np.testing.assert_allclose(nckd.item(), ref_dkd(s, t, y, 0.0, 1.0, 2.0), rtol=1e-10)
    np.testing.assert_allclose(
        dkd_loss(s_t, t_t, target, alpha=0.5, beta=3.0, T=2.0).item(),
        0.5 * tckd.item() + 3.0 * nckd.item(),
        rtol=1e-12,
    )
    # DKD's identity: the classic KD loss is TCKD + (1 - p_target^teacher) * NCKD, per sample.
    for n in range(s.shape[0]):
        one = slice(n, n + 1)
        tc, nc = dkd_terms(s_t[one], t_t[one], target[one], T=2.0)
        p_rest = 1 - np.exp(np_log_softmax(t[n] / 2.0))[y[n]]
        np.testing.assert_allclose(
            kd_loss(s_t[one], t_t[one], T=2.0).item(), tc.item() + p_rest * nc.item(), rtol=1e-9
        )


def test_dkd_loss_large_logits_and_identical_inputs() -> None:
    s, t, y = logits(12, scale=1e4)
    target = torch.tensor(y)
    loss, grad = value_and_grad(lambda a, b: dkd_loss(a, b, target, T=1.0), s, t)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    np.testing.assert_allclose(loss.item(), ref_dkd(s, t, y, 1.0, 8.0, 1.0), rtol=1e-5)
    same, grad_same = value_and_grad(lambda a, b: dkd_loss(a, b, target, T=4.0), s / 100, s / 100)
    assert (
        same.item() == 0.0
        and torch.isfinite(grad_same).all()
        and grad_same.abs().max().item() < 1e-6
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dkd_loss_half_inputs(dtype: torch.dtype) -> None:
    s, t, y = logits(13, scale=5.0)
    s_half, t_half = torch.tensor(s, dtype=dtype, requires_grad=True), torch.tensor(t, dtype=dtype)
    loss = dkd_loss(s_half, t_half, torch.tensor(y), T=4.0)
    (grad,) = torch.autograd.grad(loss, s_half)
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and torch.isfinite(grad).all()
    np.testing.assert_allclose(
        loss.item(),
        ref_dkd(s_half.detach().double().numpy(), t_half.double().numpy(), y, 1.0, 8.0, 4.0),
        rtol=1e-4,
    )


def test_dkd_loss_rejects_bad_target() -> None:
    s = torch.randn(4, 5)
    with pytest.raises(ValueError, match=r"target must have shape \(4,\)"):
        dkd_loss(s, s, torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="integer tensor"):
        dkd_loss(s, s, torch.zeros(4))
    with pytest.raises(ValueError, match="DKDLoss needs the class targets"):
        DKDLoss()(s, s)


# ----------------------------------------------------------------------------------- DIST


@pytest.mark.parametrize("tau", TEMPERATURES)
@pytest.mark.parametrize("seed", [0, 1])
def test_dist_loss_matches_reference_value_and_gradient(tau: float, seed: int) -> None:
    s, t, _ = logits(seed)
    loss, grad = value_and_grad(lambda a, b: dist_loss(a, b, beta=1.0, gamma=2.0, tau=tau), s, t)
    np.testing.assert_allclose(loss.item(), ref_dist(s, t, 1.0, 2.0, tau), rtol=1e-4)
    expected = numeric_grad(lambda a: ref_dist(a, t, 1.0, 2.0, tau), s)
    np.testing.assert_allclose(
        grad.numpy(), expected, rtol=2e-3, atol=1e-4 * np.abs(expected).max()
    )


def test_dist_loss_large_logits() -> None:
    # Gaps of 1e4 between logits: the softmax is exactly one-hot in float32 and float64 alike.
    rng = np.random.default_rng(14)
    s = 1e4 * np.stack([rng.permutation(5) for _ in range(6)]).astype(np.float64) + rng.normal(
        size=(6, 5)
    )
    t = 1e4 * np.stack([rng.permutation(5) for _ in range(6)]).astype(np.float64) + rng.normal(
        size=(6, 5)
    )
    loss, grad = value_and_grad(lambda a, b: dist_loss(a, b), s, t)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    np.testing.assert_allclose(loss.item(), ref_dist(s, t, 1.0, 1.0, 1.0), rtol=1e-5)
    # At tau = 1e3 the same logits give a smooth, non-saturated softmax.
    loss, grad = value_and_grad(lambda a, b: dist_loss(a, b, tau=1e3), s, t)
    np.testing.assert_allclose(loss.item(), ref_dist(s, t, 1.0, 1.0, 1e3), rtol=1e-4)
    assert torch.isfinite(grad).all() and grad.abs().max() > 0


@pytest.mark.parametrize("tau", [1.0, 4.0, 1e3])
def test_dist_loss_identical_inputs_is_zero(tau: float) -> None:
    s, _, _ = logits(15)
    loss, grad = value_and_grad(lambda a, b: dist_loss(a, b, tau=tau), s, s.copy())
    assert abs(loss.item()) <= 1e-6 * tau * tau
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dist_loss_half_inputs(dtype: torch.dtype) -> None:
    s, t, _ = logits(16, scale=5.0)
    s_half, t_half = torch.tensor(s, dtype=dtype, requires_grad=True), torch.tensor(t, dtype=dtype)
    loss = dist_loss(s_half, t_half, tau=4.0)
    (grad,) = torch.autograd.grad(loss, s_half)
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and torch.isfinite(grad).all()
    np.testing.assert_allclose(
        loss.item(),
        ref_dist(s_half.detach().double().numpy(), t_half.double().numpy(), 1.0, 1.0, 4.0),
        rtol=1e-4,
    )


def test_dist_loss_needs_two_samples_for_the_intra_term() -> None:
    s = torch.randn(1, 5)
    with pytest.raises(ValueError, match="N >= 2"):
        dist_loss(s, s)
    s_np, t_np, _ = logits(17, n=1)
    value = dist_loss(torch.tensor(s_np), torch.tensor(t_np), gamma=0.0).item()
    np.testing.assert_allclose(
        value,
        1 - np_corr(np.exp(np_log_softmax(s_np[0])), np.exp(np_log_softmax(t_np[0]))),
        rtol=1e-10,
    )


# --------------------------------------------------------------------------------- features

LAYOUTS = {"vector": (5, 6), "tokens": (2, 3, 6), "map": (2, 6, 3, 2)}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("kind", ["mse", "smooth_l1", "cosine"])
@pytest.mark.parametrize("teacher_norm", [None, "layernorm"])
def test_feature_losses_match_reference(layout: str, kind: str, teacher_norm: str | None) -> None:
    rng = np.random.default_rng(20)
    shape = LAYOUTS[layout]
    s, t = rng.normal(size=shape) * 1.5, rng.normal(size=shape) * 2.0 + 0.5
    fn = lambda a, b: feature_loss(a, b, kind, teacher_norm=teacher_norm, beta=0.7)  # noqa: E731
    loss, grad = value_and_grad(fn, s, t)
    np.testing.assert_allclose(
        loss.item(), ref_feature(s, t, kind, teacher_norm, beta=0.7), rtol=1e-5
    )
    expected = numeric_grad(lambda a: ref_feature(a, t, kind, teacher_norm, beta=0.7), s)
    np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-3, atol=1e-5)
    assert FeatureLoss(kind, teacher_norm=teacher_norm, beta=0.7)(
        torch.tensor(s), torch.tensor(t)
    ).item() == pytest.approx(loss.item(), rel=1e-6)


def test_feature_loss_named_functions_and_layer_norm() -> None:
    rng = np.random.default_rng(21)
    s, t = rng.normal(size=(2, 4, 3, 3)), rng.normal(size=(2, 4, 3, 3)) * 5 + 3
    s_t, t_t = torch.tensor(s), torch.tensor(t)
    np.testing.assert_allclose(layer_norm_features(t_t).numpy(), np_layer_norm(t), rtol=1e-10)
    assert mse_feature_loss(s_t, t_t).item() == pytest.approx(ref_feature(s, t, "mse", None))
    assert smooth_l1_feature_loss(s_t, t_t, beta=0.0).item() == pytest.approx(np.abs(s - t).mean())
    assert cosine_feature_loss(s_t, 3.0 * s_t).item() == pytest.approx(0.0, abs=1e-12)
    assert cosine_feature_loss(s_t, -s_t).item() == pytest.approx(2.0)


@pytest.mark.parametrize("kind", ["mse", "smooth_l1", "cosine"])
def test_feature_losses_identical_and_half_inputs(kind: str) -> None:
    rng = np.random.default_rng(22)
    s = rng.normal(size=(3, 8, 2, 2)) * 100
    loss, grad = value_and_grad(lambda a, b: feature_loss(a, b, kind), s, s.copy())
    assert abs(loss.item()) < 1e-6 and torch.isfinite(grad).all()
    for dtype in (torch.float16, torch.bfloat16):
        a = torch.tensor(s, dtype=dtype, requires_grad=True)
        b = torch.tensor(s[::-1].copy(), dtype=dtype)
        value = feature_loss(a, b, kind, teacher_norm="layernorm")
        (g,) = torch.autograd.grad(value, a)
        assert value.dtype == torch.float32 and torch.isfinite(value) and torch.isfinite(g).all()
        expected = ref_feature(a.detach().double().numpy(), b.double().numpy(), kind, "layernorm")
        np.testing.assert_allclose(value.item(), expected, rtol=1e-4)


def test_feature_loss_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"differ in shape; project the student"):
        mse_feature_loss(torch.randn(2, 4), torch.randn(2, 5))
    with pytest.raises(ValueError, match="unknown feature loss 'l3'"):
        feature_loss(torch.randn(2, 4), torch.randn(2, 4), "l3")
    with pytest.raises(ValueError, match="unknown teacher_norm"):
        FeatureLoss("mse", teacher_norm="batchnorm")


def test_gradcheck_in_float64() -> None:
    rng = np.random.default_rng(23)
    s = torch.tensor(rng.normal(size=(4, 5)), requires_grad=True)
    t = torch.tensor(rng.normal(size=(4, 5)), requires_grad=True)
    y = torch.tensor([0, 3, 4, 1])
    assert torch.autograd.gradcheck(lambda a, b: kd_loss(a, b, T=3.0), (s, t), fast_mode=True)
    assert torch.autograd.gradcheck(lambda a, b: dkd_loss(a, b, y, T=3.0), (s, t), fast_mode=True)
    assert torch.autograd.gradcheck(lambda a, b: dist_loss(a, b, tau=2.0), (s, t), fast_mode=True)
    f = torch.tensor(rng.normal(size=(2, 3, 2, 2)), requires_grad=True)
    g = torch.tensor(rng.normal(size=(2, 3, 2, 2)), requires_grad=True)
    for kind in ("mse", "smooth_l1", "cosine"):
        assert torch.autograd.gradcheck(
            lambda a, b, k=kind: feature_loss(a, b, k, teacher_norm="layernorm"),
            (f, g),
            fast_mode=True,
        )


def test_module_wrappers_match_functions_and_show_options() -> None:
    s, t, y = (torch.tensor(a) for a in logits(24))
    assert KDLoss(T=2.0)(s, t).item() == kd_loss(s, t, T=2.0).item()
    assert (
        DKDLoss(alpha=0.5, beta=2.0, T=3.0)(s, t, y).item()
        == dkd_loss(s, t, y, alpha=0.5, beta=2.0, T=3.0).item()
    )
    assert (
        DISTLoss(beta=2.0, gamma=0.5, tau=1.5)(s, t).item()
        == dist_loss(s, t, beta=2.0, gamma=0.5, tau=1.5).item()
    )
    assert repr(KDLoss(T=2.0)) == "KDLoss(T=2.0)"
    assert "tau=1.5" in repr(DISTLoss(tau=1.5))
