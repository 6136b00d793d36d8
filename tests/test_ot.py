"""Tests for plotpref.ot: scipy/POT oracles, invariants, gradients, dtypes and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.spatial.distance
import scipy.special
import scipy.stats
import torch

from plotpref._memory import peak_extra_bytes
from plotpref.errors import PlotprefError
from plotpref.ot import VARIANTS, make_distance, token_positions, wasserstein_1d


def _case(V: int, N: int, *, seed: int, ties: bool = False, scale: float = 3.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(V, generator=g, dtype=torch.float64) * 2.0
    if ties:  # only a handful of distinct positions: many equal x values
        x = (x * 2).round() / 2
    q = torch.rand(V, generator=g, dtype=torch.float64) ** 3
    q = q / q.sum()
    z = (torch.randn(N, V, generator=g, dtype=torch.float64) * scale).to(dtype)
    return z, q, x


def _scipy_w1(z: torch.Tensor, q: torch.Tensor, x: torch.Tensor) -> np.ndarray:
    p = torch.softmax(z.double(), dim=1).numpy()
    xs, qs = x.double().numpy(), q.double().numpy()
    return np.array([scipy.stats.wasserstein_distance(xs, xs, row, qs) for row in p])


def _naive_w1(z: torch.Tensor, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The textbook formula with plain autograd: gather, cumsum, abs, dot with the gaps."""
    order = torch.argsort(x, stable=True)
    xs = x[order].to(z.dtype)
    cdf_p = torch.cumsum(torch.softmax(z, dim=1)[:, order], dim=1)
    cdf_q = torch.cumsum(q[order].to(z.dtype), dim=0)
    return ((cdf_p - cdf_q)[:, :-1].abs() * (xs[1:] - xs[:-1])).sum(dim=1)


def _grad(fn, z: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    z = z.detach().clone().requires_grad_(True)
    out = fn(z)
    w = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype) if weights is None else weights
    (out * w).sum().backward()
    return z.grad


# ---------------------------------------------------------------------------------------------
# W1 against scipy (the oracle) and POT
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "V, N, ties, chunk",
    [(2, 3, False, 64), (7, 5, True, 2), (100, 9, False, 4), (333, 6, True, 5), (1000, 4, False, 3)],
)
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_w1_matches_scipy_float64(V, N, ties, chunk, backend):
    z, q, x = _case(V, N, seed=V, ties=ties)
    ours = make_distance("w1", support=x, target=q, chunk_size=chunk, backend=backend)(z)
    ref = _scipy_w1(z, q, x)
    assert ours.dtype == torch.float64
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_w1_matches_scipy_float32_full_vocab(backend):
    """The real vocabulary size (49,152, not a multiple of the chunk size 5 here), float32."""
    z, q, x = _case(49152, 4, seed=1, dtype=torch.float32)
    ours = make_distance("w1", support=x.float(), target=q.float(), chunk_size=3, backend=backend)(z)
    assert ours.dtype == torch.float32
    ref = _scipy_w1(z, q.float(), x.float())
    np.testing.assert_allclose(ours.double().numpy(), ref, rtol=1e-4, atol=0)


def test_w1_matches_pot():
    ot = pytest.importorskip("ot")
    z, q, x = _case(500, 3, seed=2)
    p = torch.softmax(z, 1).numpy()
    ref = np.array([ot.wasserstein_1d(x.numpy(), x.numpy(), row, q.numpy(), p=1) for row in p])
    np.testing.assert_allclose(wasserstein_1d(z, q, x).numpy(), ref, rtol=1e-6)


def test_functional_equals_object_and_naive():
    z, q, x = _case(257, 7, seed=3, ties=True)
    a = wasserstein_1d(z, q, x)
    b = make_distance(support=x, target=q, chunk_size=2)(z)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    torch.testing.assert_close(a, _naive_w1(z, q, x), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_fused_cpu_kernel_equals_torch_ops(dtype):
    """The numba kernel (CPU default) and the torch-ops kernel (CUDA path): same values, same gradient."""
    z, q, x = _case(20011, 37, seed=31, ties=True, dtype=torch.float32)
    z = z.to(dtype)
    fused = make_distance("w1", support=x, target=q, chunk_size=8)
    plain = make_distance("w1", support=x, target=q, chunk_size=8, backend="torch")
    w = torch.linspace(-1.0, 2.0, 37)
    g_fused, g_plain = _grad(fused, z, w.to(fused(z).dtype)), _grad(plain, z, w.to(fused(z).dtype))
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(fused(z), plain(z), rtol=rtol, atol=0)
    assert g_fused.dtype == dtype
    scale = g_plain.abs().max()
    atol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype] * scale
    torch.testing.assert_close(g_fused, g_plain, rtol=0, atol=atol)


# ---------------------------------------------------------------------------------------------
# Invariants
# ---------------------------------------------------------------------------------------------


def test_w1_of_a_distribution_with_itself_is_zero():
    z, _, x = _case(300, 4, seed=4)
    for row in z:
        q = torch.softmax(row, 0)
        assert wasserstein_1d(row[None], q, x).item() == pytest.approx(0.0, abs=1e-12)


def test_point_masses_cost_their_distance():
    V = 50
    x = torch.linspace(-1.0, 3.0, V, dtype=torch.float64)[torch.randperm(V, generator=torch.Generator().manual_seed(5))]
    for i, j in [(0, 1), (3, 40), (49, 7), (12, 12)]:
        z = torch.full((1, V), -1e4, dtype=torch.float64)
        z[0, i] = 0.0  # softmax is exactly one-hot at i in float64
        q = torch.zeros(V, dtype=torch.float64)
        q[j] = 1.0
        assert wasserstein_1d(z, q, x).item() == pytest.approx(abs(x[i] - x[j]).item(), rel=1e-12, abs=1e-15)


def test_scaling_support_scales_and_shifting_leaves_w1():
    z, q, x = _case(400, 5, seed=6)
    base = wasserstein_1d(z, q, x)
    torch.testing.assert_close(wasserstein_1d(z, q, 3.5 * x), 3.5 * base, rtol=1e-10, atol=0)
    torch.testing.assert_close(wasserstein_1d(z, q, x + 17.0), base, rtol=1e-9, atol=0)
    # W1 is symmetric under a reflection of the line as well
    torch.testing.assert_close(wasserstein_1d(z, q, -x), base, rtol=1e-9, atol=0)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_result_does_not_depend_on_chunk_size(variant, dtype, backend):
    z, q, x = _case(1001, 11, seed=7, dtype=dtype)
    kw = {"delta_f": (q - q.flip(0))} if variant == "deft" else {"target": q}
    dists = [make_distance(variant, support=x, chunk_size=c, backend=backend, **kw) for c in (1, 4, 11, 64)]
    values = [d(z) for d in dists]
    grads = [_grad(d, z) for d in dists]
    for v, g in zip(values[1:], grads[1:]):
        torch.testing.assert_close(v, values[0], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(g, grads[0], rtol=1e-5, atol=1e-8)


# ---------------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------------


def _variant_kwargs(variant: str, q: torch.Tensor) -> dict:
    return {"delta_f": q - q.roll(1)} if variant == "deft" else {"target": q}


def test_gradcheck_functional():
    z, q, x = _case(9, 4, seed=8)
    assert torch.autograd.gradcheck(lambda t: wasserstein_1d(t, q, x), (z.requires_grad_(),))


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("presorted", [False, True])
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_gradcheck_chunked_object(variant, presorted, backend):
    z, q, x = _case(8, 5, seed=9, scale=1.0)
    dist = make_distance(variant, support=x, chunk_size=2, backend=backend, **_variant_kwargs(variant, q))
    if presorted:
        z = z[:, dist.order].contiguous()
    assert torch.autograd.gradcheck(lambda t: dist(t, presorted=presorted), (z.requires_grad_(),))


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_w1_gradient_matches_plain_autograd_float32(backend):
    """The first backward (gradient computed in forward) against autograd of the naive formula."""
    z, q, x = _case(5000, 6, seed=10, dtype=torch.float32)
    dist = make_distance(support=x, target=q, chunk_size=4, backend=backend)
    ours = _grad(dist, z)
    ref = _grad(lambda t: _naive_w1(t.double(), q, x), z.double())
    torch.testing.assert_close(ours.double(), ref, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_backward_twice_with_retain_graph(backend):
    z, q, x = _case(60, 3, seed=11)
    dist = make_distance(support=x, target=q, chunk_size=2, backend=backend)
    zr = z.clone().requires_grad_(True)
    out = dist(zr).sum()
    out.backward(retain_graph=True)
    first = zr.grad.clone()
    out.backward()  # second pass recomputes the gradient from the saved logits
    torch.testing.assert_close(zr.grad, 2 * first, rtol=1e-12, atol=0)
    torch.testing.assert_close(first, _grad(lambda t: _naive_w1(t, q, x), z, torch.ones(3, dtype=z.dtype)))


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_non_contiguous_logits(backend):
    z, q, x = _case(130, 6, seed=25, dtype=torch.float32)
    dist = make_distance(support=x, target=q, chunk_size=4, backend=backend)
    zt = z.t().contiguous().t()  # same values, column-major strides
    assert not zt.is_contiguous()
    torch.testing.assert_close(dist(zt), dist(z), rtol=0, atol=0)
    torch.testing.assert_close(_grad(dist, zt), _grad(dist, z), rtol=0, atol=0)


def test_no_grad_and_detached_inputs():
    z, q, x = _case(60, 3, seed=12)
    dist = make_distance(support=x, target=q)
    with torch.no_grad():
        out = dist(z.clone().requires_grad_(True))
    assert not out.requires_grad
    torch.testing.assert_close(out, dist(z))


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_presorted_equals_gathered(variant, backend):
    z, q, x = _case(203, 7, seed=13, ties=True, dtype=torch.float32)
    dist = make_distance(variant, support=x, chunk_size=3, backend=backend, **_variant_kwargs(variant, q))
    zs = z[:, dist.order].contiguous()
    torch.testing.assert_close(dist(zs, presorted=True), dist(z), rtol=1e-6, atol=1e-7)
    g_sorted = _grad(lambda t: dist(t, presorted=True), zs)
    torch.testing.assert_close(g_sorted, _grad(dist, z)[:, dist.order], rtol=1e-5, atol=1e-8)
    assert torch.equal(dist.order, torch.argsort(x.double(), stable=True))


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_w1_forward_backward_memory_is_bounded(backend):
    """Peak extra memory of forward+backward (the returned gradient included) is at most 2x the logits."""
    N, V = 256, 49152
    _, q, x = _case(V, 1, seed=41, dtype=torch.float32)
    z = (torch.randn(N, V, generator=torch.Generator().manual_seed(41)) * 3).requires_grad_(True)
    dist = make_distance("w1", support=x.float(), target=q.float(), chunk_size=64, backend=backend)
    ones = torch.ones(N)
    torch.autograd.grad(dist(z), z, ones)  # compile / warm up
    peak = peak_extra_bytes(lambda: torch.autograd.grad(dist(z), z, ones))
    logits_bytes = z.numel() * z.element_size()
    assert logits_bytes <= peak <= 2.0 * logits_bytes, f"peak {peak / logits_bytes:.2f}x the logits"


# ---------------------------------------------------------------------------------------------
# dtypes and extreme values
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_half_precision_logits(variant, half, backend):
    z, q, x = _case(3000, 5, seed=14, dtype=torch.float32)
    dist = make_distance(variant, support=x, chunk_size=2, backend=backend, **_variant_kwargs(variant, q))
    zh = z.to(half)
    out = dist(zh)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(out, dist(zh.float()), rtol=1e-6, atol=1e-7)  # accumulation is float32
    gh = _grad(dist, zh, torch.ones(5))
    assert gh.dtype == half and torch.isfinite(gh).all()
    g32 = _grad(dist, zh.float(), torch.ones(5))
    scale = g32.abs().max()
    assert (gh.float() - g32).abs().max() <= 1e-2 * scale


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_extreme_logits_are_finite(variant, backend):
    z, q, x = _case(500, 4, seed=15, dtype=torch.float32)
    z = torch.where(z > 0, 1e4, -1e4)
    z[3] = -1e4
    z[3, 17] = 1e4  # one row is a point mass at token 17
    dist = make_distance(variant, support=x, chunk_size=3, backend=backend, **_variant_kwargs(variant, q))
    out = dist(z)
    g = _grad(dist, z)
    assert torch.isfinite(out).all() and torch.isfinite(g).all()
    if variant == "w1":
        expected = scipy.stats.wasserstein_distance(x.numpy(), x.numpy(), np.eye(500)[17], q.numpy())
        assert out[3].item() == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Ablation variants against direct numpy / scipy computations
# ---------------------------------------------------------------------------------------------


def test_tv_variant():
    z, q, x = _case(400, 5, seed=16)
    p = torch.softmax(z, 1).numpy()
    ref = 0.5 * np.abs(p - q.numpy()).sum(axis=1)
    out = make_distance("tv", support=x, target=q, chunk_size=2)(z)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-10)
    # TV is W1 with the 0-1 cost: on a support where every pair of tokens is 1 apart, i.e. two
    # points at distance 1, W1 equals TV.
    z2, q2, _ = _case(2, 4, seed=17)
    np.testing.assert_allclose(
        make_distance("tv", support=torch.tensor([0.0, 1.0]), target=q2)(z2).numpy(),
        wasserstein_1d(z2, q2, torch.tensor([0.0, 1.0], dtype=torch.float64)).numpy(),
        rtol=1e-12,
    )


def test_kl_variant():
    z, q, x = _case(400, 5, seed=18)
    p = torch.softmax(z, 1).numpy()
    ref = scipy.special.rel_entr(p, q.numpy()[None]).sum(axis=1)
    out = make_distance("kl", support=x, target=q, chunk_size=2)(z)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-9)


def test_js_variant_is_scipy_jensenshannon_squared():
    z, q, x = _case(400, 5, seed=19)
    p = torch.softmax(z, 1).numpy()
    # scipy returns the JS *distance*: the square root of the divergence; base e by default.
    ref = np.array([scipy.spatial.distance.jensenshannon(row, q.numpy()) ** 2 for row in p])
    out = make_distance("js", support=x, target=q, chunk_size=2)(z)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-8)
    assert (out <= math.log(2)).all()


def test_deft_variant_is_negative_reward():
    z, q, x = _case(400, 5, seed=20)
    delta_f = torch.rand(400, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    p = torch.softmax(z, 1).numpy()
    out = make_distance("deft", support=x, delta_f=delta_f, chunk_size=2)(z)
    np.testing.assert_allclose(out.numpy(), -(p @ delta_f.numpy()), rtol=1e-10)


def test_kl_with_zero_and_tiny_target_mass():
    V = 100
    z, q, x = _case(V, 3, seed=21, dtype=torch.float32)
    # Tiny but positive mass (below float32's range): KL is finite and large, not inf or NaN.
    tiny = q.clone()
    tiny[:10] = 1e-300
    tiny = tiny / tiny.sum()
    kl = make_distance("kl", support=x, target=tiny)
    out = kl(z)
    g = _grad(kl, z)
    assert torch.isfinite(out).all() and torch.isfinite(g).all()
    p = torch.softmax(z.double(), 1).numpy()
    np.testing.assert_allclose(out.double().numpy(), scipy.special.rel_entr(p, tiny.numpy()).sum(1), rtol=1e-4)
    assert (out > make_distance("kl", support=x, target=q)(z) + 100 * torch.softmax(z, 1)[:, :10].sum(1)).all()  # log(1e300) = 690
    # Exact zeros: +inf (softmax puts mass everywhere), announced by a warning; gradient 0, not NaN.
    zero = q.clone()
    zero[:10] = 0
    zero = zero / zero.sum()
    with pytest.warns(RuntimeWarning, match="KL"):
        kl0 = make_distance("kl", support=x, target=zero)
    out0 = kl0(z)
    g0 = _grad(kl0, z)
    assert torch.isposinf(out0).all()
    assert not torch.isnan(g0).any() and (g0 == 0).all()
    # JS stays finite with the same target
    assert torch.isfinite(make_distance("js", support=x, target=zero)(z)).all()


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_target_within_tolerance_is_renormalised_and_far_off_is_rejected():
    z, q, x = _case(50, 3, seed=22)
    close = q * (1 + 5e-4)
    torch.testing.assert_close(wasserstein_1d(z, close, x), wasserstein_1d(z, q, x), rtol=1e-12, atol=0)
    with pytest.raises(PlotprefError, match="sums to 1.5"):
        wasserstein_1d(z, q * 1.5, x)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda z, q, x: (z, q[:-1], x), "target has 49 entries but the support has 50"),
        (lambda z, q, x: (z[:, :-1], q, x), "logits have 49 columns"),
        (lambda z, q, x: (z, q, x[:-1]), "target has 50 entries but the support has 49"),
        (lambda z, q, x: (z, torch.where(torch.arange(50) == 3, -0.1, q), x), "negative"),
        (lambda z, q, x: (z, torch.where(torch.arange(50) == 3, math.nan, q), x), "NaN"),
        (lambda z, q, x: (z, torch.zeros(50), x), "all zero"),
        (lambda z, q, x: (z, q, torch.where(torch.arange(50) == 4, math.nan, x)), "non-finite"),
        (lambda z, q, x: (z, q, torch.where(torch.arange(50) == 4, math.inf, x)), "non-finite"),
        (lambda z, q, x: (z[0], q, x), "must be 2-D"),
        (lambda z, q, x: (z[None], q, x), "must be 2-D"),
        (lambda z, q, x: (z, q[None], x), "1-D"),
        (lambda z, q, x: (z.long(), q, x), "floating point"),
    ],
)
def test_bad_input_raises_plotpref_error(mutate, match):
    z, q, x = _case(50, 3, seed=23)
    with pytest.raises(PlotprefError, match=match):
        wasserstein_1d(*mutate(z, q, x))


def test_make_distance_arguments():
    _, q, x = _case(20, 1, seed=24)
    with pytest.raises(PlotprefError, match="unknown distance variant 'wasserstein'.*'w1'.*'tv'.*'kl'.*'js'.*'deft'"):
        make_distance("wasserstein", support=x, target=q)
    with pytest.raises(PlotprefError, match="needs delta_f"):
        make_distance("deft", support=x, target=q)
    with pytest.raises(PlotprefError, match="needs target"):
        make_distance("w1", support=x)
    with pytest.raises(PlotprefError, match="outside"):
        make_distance("deft", support=x, delta_f=q * 5 + 1)
    with pytest.raises(PlotprefError, match="chunk_size"):
        make_distance(support=x, target=q, chunk_size=0)
    with pytest.raises(PlotprefError, match="backend must be 'auto' or 'torch'; got 'numba'"):
        make_distance(support=x, target=q, backend="numba")
    dist = make_distance("js", support=x, target=q, chunk_size=7)
    assert (dist.variant, dist.vocab_size, dist.chunk_size) == ("js", 20, 7)


# ---------------------------------------------------------------------------------------------
# Token positions
# ---------------------------------------------------------------------------------------------


def _tiny_model(vocab: int = 96, tie: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=tie)
    return LlamaForCausalLM(config)


def test_token_positions_from_model():
    model = _tiny_model()
    E = model.get_input_embeddings().weight.detach()
    W = model.get_output_embeddings().weight.detach()
    x = token_positions(model)
    assert x.dtype == torch.float32 and x.shape == (96,) and not x.requires_grad
    torch.testing.assert_close(x, E.norm(dim=1))
    torch.testing.assert_close(token_positions(model, p=1), E.abs().sum(1))
    torch.testing.assert_close(token_positions(model, p=math.inf), E.abs().amax(1))
    torch.testing.assert_close(token_positions(model, source="output"), W.norm(dim=1))
    assert not torch.allclose(token_positions(model, source="output"), x)  # untied: a different table
    # usable as the support straight away: the logits' width matches
    logits = model(torch.tensor([[1, 2, 3]])).logits[0]
    q = torch.full((96,), 1 / 96)
    assert wasserstein_1d(logits, q, x).shape == (3,)


def test_token_positions_errors():
    model = _tiny_model()
    model.lm_head = torch.nn.Linear(32, 100, bias=False)  # output layer wider than the input table
    with pytest.raises(PlotprefError, match="input embedding table has 96 rows but the output layer has 100"):
        token_positions(model)
    assert token_positions(model, source="output").shape == (100,)
    with pytest.raises(PlotprefError, match="source"):
        token_positions(model, source="lm_head")
    with pytest.raises(PlotprefError, match="positive"):
        token_positions(model, p=0)
    with pytest.raises(PlotprefError, match="no output layer"):
        token_positions(model.model)


@pytest.mark.slow
def test_token_positions_of_the_default_model():
    from plotpref.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(None)
    x = token_positions(model)
    V = model.get_output_embeddings().weight.shape[0]
    assert x.shape == (V,) and V >= len(tokenizer)
    assert torch.isfinite(x).all() and (x > 0).all()
    ids = tokenizer("Hello there", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits[0]
    uniform = torch.full((V,), 1.0 / V)
    w = make_distance(support=x, target=uniform)(logits)
    assert torch.isfinite(w).all() and (w > 0).all()
    assert (w <= x.max() - x.min()).all()  # W1 never exceeds the support's diameter
