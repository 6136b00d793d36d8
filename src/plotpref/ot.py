"""The PLOT term: a 1-D Wasserstein distance between next-token distributions and Q.

PLOT (paper eq. 10-14) places every token ``v`` of the vocabulary on a line at
``x_v = ||E_v||_p`` (eq. 6, 9) and compares the model's next-token distribution
``p = softmax(z)`` with a fixed target preference distribution ``Q`` by the optimal-transport
cost with ground cost ``|x_u - x_v|``. On a line that cost has a closed form: with the tokens
sorted by position (order ``sigma``, gaps ``Delta_k = x_sigma(k+1) - x_sigma(k) >= 0``)::

    W1(p, Q) = sum_{k=1}^{V-1} | F_p(k) - F_Q(k) | * Delta_k,      F_p(k) = sum_{j<=k} p_sigma(j)

so no LP or Sinkhorn solver is needed; ``scipy.stats.wasserstein_distance(x, x, p, Q)`` computes
the same number (it is the test oracle).

Public API
----------
:func:`wasserstein_1d`
    The plain function: one W1 per row of a ``(N, V)`` logits tensor.
:func:`make_distance`
    A reusable :class:`PreferenceDistance` for training: it sorts the support once, keeps the
    gaps and the target CDF, and evaluates rows in chunks, so that a step never sorts ``V``
    values and its extra memory is bounded (see below). Variants: ``"w1"`` (PLOT), and the
    paper's ablations ``"tv"`` (0-1 cost), ``"kl"``, ``"js"`` and ``"deft"`` (eq. 15).
:func:`token_positions`
    The support ``x`` from a model's embedding table.

Cost and memory of a :class:`PreferenceDistance` call on ``(N, V)`` logits
--------------------------------------------------------------------------
Rows are processed ``chunk_size`` at a time in float32 (float64 for float64 logits). When the
logits require grad, the closed-form gradient is computed in forward, straight into one
``(N, V)`` buffer in the logits' dtype; backward only scales that buffer by the incoming
gradient, in place, and returns it. Backward may run more than once (``retain_graph=True``,
``gradcheck``): later calls recompute the gradient from the saved logits. Double backward is
not supported.

W1 has two backends with the same formulas (values and gradients agree to float32 rounding):

* CPU (default there): torch's softmax, then a kernel compiled with numba that takes rows two
  at a time and makes four passes per row (its float64 total, the gather into sorted order, one
  sequential pass for the cumulative sums, the value and the gradient's cumulative sum, and one
  pass back in token order) where torch ops need about a dozen. The softmax is written into the
  gradient buffer and overwritten by the gradient, so the extra memory of forward+backward is
  that buffer (1x the logits for float32 logits) plus five ``V``-long scratch rows per thread;
  without grad, one ``chunk_size x V`` workspace. CPU buffers come from numpy, which uses
  transparent huge pages (fewer page faults). The kernel is compiled on first use (a few
  seconds) and cached on disk by numba.
* Torch ops (``backend="torch"``, and any non-CPU device): softmax, cumsum, sign and products
  per chunk; three ``chunk_size x V`` float32 workspace arrays besides the gradient buffer,
  i.e. ``1 + 3 * min(chunk_size, N) / N`` times the logits for float32 logits (1.375x for
  N = 512 and the default chunk of 64). The gather of every row into sorted token order is its
  most expensive step; a trainer can skip it by permuting the output layer's rows once by
  ``dist.order`` and calling ``dist(logits, presorted=True)``.

Measured speeds are in benchmarks/RESULTS.md (``python benchmarks/bench_ot.py``).
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Callable

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from plotpref.errors import PlotprefError

__all__ = [
    "VARIANTS",
    "PreferenceDistance",
    "make_distance",
    "token_positions",
    "wasserstein_1d",
]

#: Variants of the extra term, with what each computes per row.
VARIANTS: dict[str, str] = {
    "w1": "1-D Wasserstein distance W1(p, Q) on the token positions (PLOT, eq. 11-14)",
    "tv": "0-1 cost, i.e. total variation 1/2 sum_v |p(v) - Q(v)| (PLOT without embeddings)",
    "kl": "KL(p || Q) = sum_v p(v) log(p(v) / Q(v)) (+inf if Q has a zero)",
    "js": "Jensen-Shannon divergence JS(p, Q), natural log (at most log 2)",
    "deft": "negative DEFT reward -sum_v dF(v) p(v) (eq. 15; minimising it maximises the reward)",
}

_TARGET_SUM_TOLERANCE = 1e-3


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _as_vector(value, name: str) -> Tensor:
    tensor = torch.as_tensor(value).detach()
    if tensor.dim() != 1:
        raise PlotprefError(f"{name} must be a 1-D tensor of length V (one entry per token); got shape {tuple(tensor.shape)}")
    if not (tensor.is_floating_point() or tensor.dtype in (torch.int32, torch.int64)):
        raise PlotprefError(f"{name} must hold real numbers; got dtype {tensor.dtype}")
    if tensor.numel() < 1:
        raise PlotprefError(f"{name} is empty; it needs one entry per token of the vocabulary")
    return tensor.to(torch.float64)


def _check_support(support) -> Tensor:
    x = _as_vector(support, "support")
    bad = ~torch.isfinite(x)
    if bad.any():
        idx = bad.nonzero().flatten()[:5].tolist()
        raise PlotprefError(
            f"support has {int(bad.sum())} non-finite token positions (NaN or inf), e.g. at token ids {idx}; "
            "the positions must be finite, e.g. the embedding norms from token_positions(model)"
        )
    return x


def _check_target(target, vocab_size: int) -> Tensor:
    q = _as_vector(target, "target")
    if q.numel() != vocab_size:
        raise PlotprefError(
            f"target has {q.numel()} entries but the support has {vocab_size}; both must have one entry per "
            "row of the model's output layer (the logits' last dimension)"
        )
    if torch.isnan(q).any() or torch.isinf(q).any():
        idx = (~torch.isfinite(q)).nonzero().flatten()[:5].tolist()
        raise PlotprefError(f"target has NaN or inf entries, e.g. at token ids {idx}; Q must be a probability vector")
    if (q < 0).any():
        idx = (q < 0).nonzero().flatten()[:5].tolist()
        raise PlotprefError(
            f"target has {int((q < 0).sum())} negative entries (min {q.min().item():.3g}), e.g. at token ids {idx}; "
            "Q must be non-negative (build it with a non-negative transform of dF, e.g. min_shift)"
        )
    total = q.sum().item()
    if total <= 0:
        raise PlotprefError("target is all zero; Q must be a probability vector with positive total mass")
    if abs(total - 1.0) > _TARGET_SUM_TOLERANCE:
        raise PlotprefError(
            f"target sums to {total:.6g}, not 1 (tolerance {_TARGET_SUM_TOLERANCE:g}); pass a probability vector "
            "(divide it by its sum). A distance to an unnormalised vector is not the PLOT term, and this often "
            "means dF was passed where Q was meant"
        )
    return q / total  # remove float32 rounding of the stored sum


def _check_delta_f(delta_f, vocab_size: int) -> Tensor:
    d = _as_vector(delta_f, "delta_f")
    if d.numel() != vocab_size:
        raise PlotprefError(f"delta_f has {d.numel()} entries but the support has {vocab_size}; both must be of length V")
    if not torch.isfinite(d).all():
        raise PlotprefError("delta_f has NaN or inf entries; it must be F+ - F- (values in [-1, 1])")
    if d.abs().max().item() > 1 + 1e-6:
        raise PlotprefError(
            f"delta_f has entries outside [-1, 1] (max |dF| = {d.abs().max().item():.3g}); it must be the difference "
            "of two token-frequency distributions F+ - F-"
        )
    return d


def _check_logits(logits: Tensor, vocab_size: int) -> None:
    if not isinstance(logits, Tensor):
        raise PlotprefError(f"logits must be a torch.Tensor of shape (N, V); got {type(logits).__name__}")
    if logits.dim() != 2:
        raise PlotprefError(
            f"logits must be 2-D (N rows, V={vocab_size} tokens); got shape {tuple(logits.shape)}. "
            "Select the positions first, e.g. logits[mask] for a (B, T, V) tensor and a (B, T) mask"
        )
    if logits.shape[1] != vocab_size:
        raise PlotprefError(
            f"logits have {logits.shape[1]} columns but the target/support have {vocab_size} entries; use the "
            "model whose embeddings gave the support (V is the output layer's number of rows)"
        )
    if not logits.is_floating_point():
        raise PlotprefError(f"logits must be floating point; got dtype {logits.dtype}")


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------------
# Row kernels: value and closed-form gradient for a chunk of rows
# --------------------------------------------------------------------------------------------
#
# Every variant is a function D(p) of p = softmax(z) per row. With a = dD/dp (a row vector),
# the chain rule through softmax gives dD/dz = p * (a - <p, a>). A kernel takes a chunk of
# logits z (n, V) already in the accumulation dtype and in working column order, and returns
# the values (n,) and, when asked, writes dD/dz into `grad_out` (n, V, accumulation dtype).
# `scratch` says that z is a workspace copy the kernel may overwrite (grad_out may then be z).


def _softmax_grad(p: Tensor, a: Tensor, grad_out: Tensor) -> None:
    """grad_out <- p * (a - <p, a>) row-wise; `a` may be overwritten."""
    mean = torch.linalg.vecdot(p, a, dim=1).unsqueeze(1)
    torch.sub(a, mean, out=grad_out)
    grad_out.mul_(p)


class _W1Kernel:
    """W1 on a sorted support; constants in sorted order.

    Per row, in sorted order, with p = softmax(z), c = cumsum(p), T = c[V-1] (1 up to rounding):
        d_k = c_k - T * F_Q(k)                          (k < V-1; = T * (F_p(k) - F_Q(k)))
        s_k = sign(d_k) * Delta_k
        W1  = sum_k d_k s_k / T                         (= sum_k |F_p(k) - F_Q(k)| Delta_k)
        dW1/dp_j = sum_{k>=j} s_k = S - h_j,  h_j = sum_{k<j} s_k   (exclusive cumsum)
    and the constant S drops out of p * (a - <p, a>), so a = -h.
    Dividing by the last cumulative sum T makes F_p end at exactly 1; without it the float32
    rounding of the softmax's total leaks into every F_p(k) and the error against scipy grows.
    """

    needs_sorted = True

    def __init__(self, gaps: Tensor, cdf_q: Tensor):
        self.gaps = gaps  # (V-1,)
        self.cdf_q = cdf_q  # (V-1,) F_Q(k) for k < V-1

    def __call__(self, z: Tensor, grad_out: Tensor | None, ws: dict, scratch: bool = False) -> Tensor:
        # Three (n, V) workspace arrays: p, c, and s (which reuses z when z is scratch; grad_out
        # may be that same array, as s is dead once h is computed).
        n, V = z.shape
        p = torch.softmax(z, dim=1, out=_buffer(ws, "p", n, V, z))
        c = torch.cumsum(p, dim=1, out=_buffer(ws, "c", n, V, z))
        total = c[:, -1:].clone()
        d = c[:, :-1].addcmul_(total, self.cdf_q, value=-1.0)  # d = c - T * F_Q, in place
        # s = sign(d) * Delta, stored after a leading 0 column so that its cumsum is exclusive.
        s = z if scratch else _buffer(ws, "s", n, V, z)
        s[:, 0] = 0
        torch.copysign(self.gaps, d, out=s[:, 1:])
        # Row dot products as an in-place product and a sum: torch's pairwise summation keeps the
        # float32 error near 1e-7, where a BLAS dot (bmm) was measured 10x worse here.
        values = d.mul_(s[:, 1:]).sum(dim=1).div_(total.squeeze(1))
        if grad_out is not None:
            h = torch.cumsum(s, dim=1, out=c)  # a = -h
            ph = torch.mul(p, h, out=grad_out)
            mean = ph.sum(dim=1, keepdim=True)  # <p, h>
            torch.sub(torch.mul(p, mean, out=c), ph, out=grad_out)  # p * (<p, h> - h) = p * (a - <p, a>)
        return values


@functools.cache
def _fused_w1_rows():
    """The numba-compiled CPU kernel of :class:`_W1Kernel` (compiled on first use, cached on disk).

    ``rows(p, order, rank, gaps, cdf_q, values, with_grad, n_blocks)``: for the softmax ``p``
    (n, V), contiguous, in token order, rows are taken two at a time (two independent dependency
    chains in one loop keep the core busy where one chain waits on the latency of each add), and
    for each row four passes over V:

    1. ``T = sum(p[i])`` in float64, in token order (sequential, so it also brings the row into
       cache for the random reads of pass 2);
    2. gather the row into sorted order (``order``, int32) in a (V,) scratch;
    3. one sequential pass that accumulates, in float64,
       ``c_k = sum_{m<=k} p_sigma(m)``, ``d_k = c_k - T F_Q(k)``, ``s_k = sign(d_k) Delta_k``,
       ``W1 = sum_k d_k s_k / T``, ``h_k = sum_{m<k} s_m`` (stored) and ``<p, h>``;
    4. with ``with_grad``, overwrite ``p[i]`` in place, in token order, by the gradient
       ``p * (<p, h> - h[rank])`` (``rank`` = the inverse permutation).

    The formulas are those of :class:`_W1Kernel`; torch ops need about a dozen passes over the
    row for them. Keeping the random accesses (2, 4) out of the sequential pass (3) measured
    faster than one fused pass with a random load and store per step. Pairs of rows run in
    parallel in ``n_blocks`` threads, each with its own scratch; an odd last row is paired with a
    copy of itself in scratch.
    """
    import numba  # noqa: PLC0415 (imported on first use of the CPU kernel only)

    @numba.njit(fastmath=True, cache=True, nogil=True, boundscheck=False)
    def row_total(row):  # pragma: no cover (compiled); fastmath: a vectorised float64 sum
        total = 0.0
        for k in range(row.shape[0]):
            total += row[k]
        return total

    @numba.njit(parallel=True, cache=True, nogil=True, boundscheck=False)
    def rows(p, order, rank, gaps, cdf_q, values, with_grad, n_blocks):  # pragma: no cover (compiled)
        n, V = p.shape
        n_pairs = (n + 1) // 2
        for b in numba.prange(n_blocks):
            sa = np.empty(V, dtype=p.dtype)  # the two rows in sorted order
            sb = np.empty(V, dtype=p.dtype)
            ha = np.empty(V, dtype=p.dtype)  # their h (exclusive cumsum of s), sorted order
            hb = np.empty(V, dtype=p.dtype)
            spare = np.empty(V, dtype=p.dtype)
            for pair in range(b, n_pairs, n_blocks):
                i = 2 * pair
                ra = p[i]
                if i + 1 < n:
                    rb = p[i + 1]
                else:
                    spare[:] = ra
                    rb = spare
                ta = row_total(ra)
                tb = row_total(rb)
                for k in range(V):
                    o = order[k]
                    sa[k] = ra[o]
                    sb[k] = rb[o]
                ca = cb = 0.0  # c_k
                ka = kb = 0.0  # h_k
                wa = wb = 0.0  # T * W1
                pa = pb = 0.0  # <p, h>
                for k in range(V - 1):
                    gap = gaps[k]
                    fq = cdf_q[k]
                    xa = sa[k]
                    xb = sb[k]
                    ca += xa
                    cb += xb
                    ha[k] = ka
                    hb[k] = kb
                    pa += xa * ka
                    pb += xb * kb
                    da = ca - ta * fq
                    db = cb - tb * fq
                    s_a = math.copysign(gap, da)
                    s_b = math.copysign(gap, db)
                    wa += da * s_a
                    wb += db * s_b
                    ka += s_a
                    kb += s_b
                ha[V - 1] = ka
                hb[V - 1] = kb
                pa += sa[V - 1] * ka
                pb += sb[V - 1] * kb
                values[i] = wa / ta
                if i + 1 < n:
                    values[i + 1] = wb / tb
                if with_grad:
                    for j in range(V):
                        r = rank[j]
                        ra[j] = ra[j] * (pa - ha[r])
                        rb[j] = rb[j] * (pb - hb[r])

    return rows


def _fused_threads(n_rows: int) -> int:
    import numba  # noqa: PLC0415

    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS, n_rows))
    numba.set_num_threads(threads)
    return threads


class _FusedW1CPU:
    """W1 on CPU tensors: torch's softmax (vectorised), then :func:`_fused_w1_rows`.

    Same values and gradient as :class:`_W1Kernel` (to float32 rounding); about 2x faster than it
    on CPU because it reads each row four times instead of about twelve (benchmarks/bench_ot.py).
    Takes logits in token order and does the sorted-order gather itself, so there is nothing to
    gain from ``presorted`` (then ``order`` is the identity).
    """

    needs_sorted = False  # the kernel gathers itself

    def __init__(self, order: Tensor, gaps: Tensor, cdf_q: Tensor):
        self.dtype = gaps.dtype  # the accumulation dtype: float32 or float64
        self.order = order.to(torch.int32).numpy()
        self.rank = torch.argsort(order).to(torch.int32).numpy()
        self.gaps = gaps.numpy()
        self.cdf_q = cdf_q.numpy()

    def run(self, logits: Tensor, chunk_size: int, values: Tensor | None, grad: Tensor | None) -> None:
        """Write values (N,) and/or the gradient (N, V) for CPU logits (N, V)."""
        rows_kernel = _fused_w1_rows()
        N, V = logits.shape
        acc = self.dtype
        ws: dict[str, Tensor] = {}
        scratch_values = values if values is not None else torch.empty(N, dtype=acc)
        direct = grad is not None and grad.dtype == acc  # softmax straight into the gradient buffer
        for start in range(0, N, chunk_size):
            stop = min(start + chunk_size, N)
            n = stop - start
            p = grad[start:stop] if direct else _buffer(ws, "p", n, V, scratch_values)
            torch.softmax(logits[start:stop].to(acc), dim=1, out=p)
            rows_kernel(p.numpy(), self.order, self.rank, self.gaps, self.cdf_q,
                        scratch_values[start:stop].numpy(), grad is not None, _fused_threads((n + 1) // 2))
            if grad is not None and not direct:
                grad[start:stop].copy_(p)


class _TVKernel:
    """Total variation 1/2 sum|p - Q| (the OT cost with 0-1 ground cost); dD/dp = 1/2 sign(p - Q)."""

    needs_sorted = False

    def __init__(self, q: Tensor, dtype: torch.dtype, device: torch.device):
        self.q = q.to(device=device, dtype=dtype)

    def __call__(self, z: Tensor, grad_out: Tensor | None, ws: dict, scratch: bool = False) -> Tensor:
        p = torch.softmax(z, dim=1)
        diff = p - self.q
        values = diff.abs().sum(dim=1).mul_(0.5)
        if grad_out is not None:
            _softmax_grad(p, diff.sign_().mul_(0.5), grad_out)
        return values


class _KLKernel:
    """KL(p || Q) = sum_v p(v) (log p(v) - log Q(v)); dD/dp = log p - log Q (+1, which drops out).

    Mathematically p = softmax(z) > 0 everywhere, so KL is +inf as soon as Q has a zero: those rows
    return +inf, and their gradient is set to 0 (it does not exist) rather than NaN. Tiny Q mass
    gives large but finite values. Terms with p(v) = 0 exactly (logit -inf) count 0.
    """

    needs_sorted = False

    def __init__(self, q: Tensor, dtype: torch.dtype, device: torch.device):
        # log in float64 first: Q = 1e-300 must give a large finite value, not an underflow to -inf
        self.log_q = q.log().to(device=device, dtype=dtype)  # -inf where Q = 0

    def __call__(self, z: Tensor, grad_out: Tensor | None, ws: dict, scratch: bool = False) -> Tensor:
        zero = torch.zeros((), dtype=z.dtype, device=z.device)
        log_p = torch.log_softmax(z, dim=1)
        p = log_p.exp()
        a = log_p - self.log_q  # +inf where Q = 0
        terms = torch.where(torch.isneginf(self.log_q), math.inf, p * a)  # p > 0 there, even if it underflowed
        terms = torch.where(torch.isneginf(log_p), zero, terms)  # logit -inf: p = 0 exactly, 0 log 0 = 0
        values = terms.sum(dim=1)
        if grad_out is not None:
            finite = torch.isfinite(values).unsqueeze(1)
            a = torch.where(torch.isfinite(a), a, torch.zeros((), dtype=z.dtype, device=z.device))
            _softmax_grad(p, a, grad_out)
            grad_out.masked_fill_(~finite, 0.0)
        return values


class _JSKernel:
    """JS(p, Q) = 1/2 KL(p || m) + 1/2 KL(Q || m), m = (p + Q)/2, natural log; dD/dp = 1/2 log(p/m).

    Always finite (at most log 2), whatever zeros Q has. scipy's ``jensenshannon`` returns the
    square root of this number.
    """

    needs_sorted = False

    def __init__(self, q: Tensor, dtype: torch.dtype, device: torch.device):
        self.q = q.to(device=device, dtype=dtype)
        self.log_q = q.log().to(device=device, dtype=dtype)

    def __call__(self, z: Tensor, grad_out: Tensor | None, ws: dict, scratch: bool = False) -> Tensor:
        zero = torch.zeros((), dtype=z.dtype, device=z.device)
        log_p = torch.log_softmax(z, dim=1)
        p = log_p.exp()
        log_m = torch.logaddexp(log_p, self.log_q) - math.log(2.0)
        log_p_over_m = torch.where(p > 0, log_p - log_m, zero)
        log_q_over_m = torch.where(self.q > 0, self.log_q - log_m, zero)
        values = 0.5 * (torch.linalg.vecdot(p, log_p_over_m, dim=1) + torch.linalg.vecdot(self.q.expand_as(p), log_q_over_m, dim=1))
        if grad_out is not None:
            _softmax_grad(p, log_p_over_m.mul_(0.5), grad_out)
        return values


class _DEFTKernel:
    """Negative DEFT reward -sum_v dF(v) p(v) (eq. 15, negated); dD/dp = -dF."""

    needs_sorted = False

    def __init__(self, delta_f: Tensor, dtype: torch.dtype, device: torch.device):
        self.neg_delta_f = (-delta_f).to(device=device, dtype=dtype)

    def __call__(self, z: Tensor, grad_out: Tensor | None, ws: dict, scratch: bool = False) -> Tensor:
        p = torch.softmax(z, dim=1)
        a = self.neg_delta_f.expand_as(p)
        values = torch.linalg.vecdot(p, a, dim=1)
        if grad_out is not None:
            _softmax_grad(p, a.clone(), grad_out)
        return values


_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """An uninitialised contiguous tensor; on CPU, for float32/float64, allocated by numpy.

    numpy asks Linux for transparent huge pages (``madvise``) for large arrays, so the first write
    into a 100 MB buffer takes about half the time it takes in memory from torch's allocator, where
    it is mostly page faults (measured: softmax of (512, 49152) into a new buffer, 66 against
    27-33 us per row). The tensor shares the array's memory, which is freed with the tensor.
    """
    if device.type == "cpu" and dtype in _NUMPY_DTYPES:
        return torch.from_numpy(np.empty(shape, dtype=_NUMPY_DTYPES[dtype]))
    return torch.empty(shape, dtype=dtype, device=device)


def _buffer(ws: dict, name: str, n: int, V: int, like: Tensor) -> Tensor:
    """A reusable (n, V) workspace array (the last chunk may be shorter)."""
    buf = ws.get(name)
    if buf is None or buf.shape[1] != V or buf.shape[0] < n:
        buf = _empty((n, V), like.dtype, like.device)
        ws[name] = buf
    return buf[:n]


# --------------------------------------------------------------------------------------------
# The chunked autograd Function
# --------------------------------------------------------------------------------------------


def _run_chunks(
    logits: Tensor,
    kernel: Callable,
    order: tuple[Tensor, Tensor] | None,
    chunk_size: int,
    values: Tensor | None,
    grad: Tensor | None,
) -> None:
    """Evaluate `kernel` on `logits` chunk by chunk, writing values (N,) and/or grad (N, V).

    `order` is (permutation into the kernel's column order, its inverse); None: logits are
    already in that order.
    """
    order, inverse = (None, None) if order is None else order
    N, V = logits.shape
    acc = _accumulation_dtype(logits.dtype)
    ws: dict[str, Tensor] = {}
    for start in range(0, N, chunk_size):
        stop = min(start + chunk_size, N)
        n = stop - start
        rows = logits[start:stop]
        if order is not None:
            z = _buffer(ws, "z", n, V, rows.new_empty((), dtype=acc))
            if rows.dtype == acc:
                torch.index_select(rows, 1, order, out=z)
            else:
                z.copy_(rows.index_select(1, order))
        elif rows.dtype != acc:
            z = rows.to(acc)
        else:
            z = rows
        if grad is None:
            g = None
        elif order is not None:
            g = z  # the gathered copy is scratch: the kernel may reuse it for the gradient
        elif grad.dtype == acc:
            g = grad[start:stop]  # write straight into the result
        else:
            g = _buffer(ws, "g", n, V, z)
        chunk_values = kernel(z, g, ws, scratch=order is not None)
        if values is not None:
            values[start:stop] = chunk_values
        if g is not None and g.data_ptr() != grad[start:stop].data_ptr():
            if order is None:
                grad[start:stop].copy_(g)
            elif grad.dtype == acc:  # back to token order; a gather with the inverse is ~10x faster than a scatter
                torch.index_select(g, 1, inverse, out=grad[start:stop])
            else:
                grad[start:stop].copy_(g.index_select(1, inverse))


def _evaluate(logits, kernel, order, chunk_size, values, grad) -> None:
    if isinstance(kernel, _FusedW1CPU):
        kernel.run(logits, chunk_size, values, grad)
    else:
        _run_chunks(logits, kernel, order, chunk_size, values, grad)


class _ChunkedRowDistance(torch.autograd.Function):
    """D(softmax(z_n)) for every row n, with the gradient computed in forward (see module docs)."""

    @staticmethod
    def forward(ctx, logits: Tensor, kernel, order: tuple[Tensor, Tensor] | None, chunk_size: int) -> Tensor:
        acc = _accumulation_dtype(logits.dtype)
        values = torch.empty(logits.shape[0], dtype=acc, device=logits.device)
        grad = _empty(tuple(logits.shape), logits.dtype, logits.device) if ctx.needs_input_grad[0] else None
        _evaluate(logits, kernel, order, chunk_size, values, grad)
        ctx.kernel, ctx.order, ctx.chunk_size, ctx.grad = kernel, order, chunk_size, grad
        ctx.save_for_backward(logits)
        return values

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        grad, ctx.grad = ctx.grad, None
        if grad is None:  # a second backward through the same graph: recompute
            (logits,) = ctx.saved_tensors
            grad = _empty(tuple(logits.shape), logits.dtype, logits.device)
            _evaluate(logits, ctx.kernel, ctx.order, ctx.chunk_size, None, grad)
        grad.mul_(grad_output.unsqueeze(1).to(grad.dtype))
        return grad, None, None, None


# --------------------------------------------------------------------------------------------
# Public objects
# --------------------------------------------------------------------------------------------


class PreferenceDistance:
    """A per-row distance ``D(softmax(logits[n]), target)`` with a fixed target and support.

    Build it with :func:`make_distance`. Calling it on logits ``(N, V)`` returns ``(N,)`` values in
    float32 (float64 for float64 logits), differentiable with respect to the logits; rows are
    processed ``chunk_size`` at a time, so the extra memory is about the logits' size plus a
    ``chunk_size x V`` workspace, whatever ``N``.

    Attributes:
        variant: one of :data:`VARIANTS`.
        vocab_size: V, the number of columns the logits must have.
        chunk_size: rows per chunk.
        order: LongTensor (V,), the token ids sorted by position ``x`` ascending (stable for ties).
            Logits whose columns are ``logits[:, order]`` may be passed with ``presorted=True``.
        support: float64 (V,) token positions ``x``.
    """

    def __init__(self, variant: str, kernel_factory: Callable[[Tensor, torch.dtype, torch.device, bool], Callable],
                 *, support: Tensor, order: Tensor, chunk_size: int):
        self.variant = variant
        self.support = support
        self.vocab_size = support.numel()
        self.chunk_size = chunk_size
        self.order = order
        self._kernel_factory = kernel_factory
        self._cache: dict = {}

    def __repr__(self) -> str:
        return f"PreferenceDistance(variant={self.variant!r}, vocab_size={self.vocab_size}, chunk_size={self.chunk_size})"

    def _kernel(self, dtype: torch.dtype, device: torch.device, presorted: bool):
        key = (dtype, device, presorted)
        if key not in self._cache:
            self._cache[key] = self._kernel_factory(self.order, dtype, device, presorted)
        return self._cache[key]

    def __call__(self, logits: Tensor, *, presorted: bool = False) -> Tensor:
        """Per-row values for ``logits`` (N, V).

        Args:
            logits: (N, V) float tensor of any float dtype, one next-token distribution per row.
            presorted: the columns are already in ``self.order`` (logits[:, k] is token
                ``order[k]``), e.g. because the output layer's rows were permuted once; this skips
                the per-row gather.

        Returns:
            (N,) float32 (float64 for float64 logits).
        """
        _check_logits(logits, self.vocab_size)
        acc = _accumulation_dtype(logits.dtype)
        kernel = self._kernel(acc, logits.device, presorted)
        order = None
        if kernel.needs_sorted and not presorted:
            key = ("order", logits.device)
            if key not in self._cache:
                self._cache[key] = (self.order.to(logits.device), torch.argsort(self.order).to(logits.device))
            order = self._cache[key]
        return _ChunkedRowDistance.apply(logits, kernel, order, self.chunk_size)


def make_distance(
    variant: str = "w1",
    *,
    support: Tensor,
    target: Tensor | None = None,
    delta_f: Tensor | None = None,
    chunk_size: int = 64,
    backend: str = "auto",
) -> PreferenceDistance:
    """Build the PLOT term (or an ablation variant) for a fixed target and token geometry.

    Args:
        variant: ``"w1"`` (PLOT, eq. 11-14; needs ``target``), ``"tv"`` (0-1 cost: total
            variation; needs ``target``), ``"kl"`` (KL(p || Q); needs ``target``), ``"js"``
            (Jensen-Shannon, natural log; needs ``target``) or ``"deft"`` (negative DEFT reward
            ``-sum_v dF(v) p(v)``, eq. 15; needs ``delta_f``). See :data:`VARIANTS`.
        support: (V,) token positions ``x_v`` (e.g. :func:`token_positions`); finite, ties allowed.
        target: (V,) Q, non-negative, summing to 1 within 1e-3 (renormalised exactly; a larger
            deviation is an error, not silently fixed).
        delta_f: (V,) dF = F+ - F-, values in [-1, 1] (variant ``"deft"``).
        chunk_size: rows evaluated at once; bounds the workspace to a few ``chunk_size x V``
            arrays. Results do not depend on it.
        backend: how ``"w1"`` is computed. ``"auto"`` (default): on CPU a fused kernel compiled
            with numba (about 2x faster than torch ops there), elsewhere
            (CUDA, MPS) torch ops; ``"torch"``: torch ops everywhere. Same values and gradients
            to float32 rounding. Other variants are torch ops in any case.

    Returns:
        A callable :class:`PreferenceDistance`: ``dist(logits (N, V)) -> (N,)``. A trainer
        minimises ``lam * dist(logits).mean()`` for every variant.

    Raises:
        PlotprefError: unknown variant, missing or malformed target/delta_f/support.
    """
    if variant not in VARIANTS:
        valid = ", ".join(f"{k!r} ({v})" for k, v in VARIANTS.items())
        raise PlotprefError(f"unknown distance variant {variant!r}; valid variants: {valid}")
    if backend not in ("auto", "torch"):
        raise PlotprefError(f"backend must be 'auto' or 'torch'; got {backend!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise PlotprefError(f"chunk_size must be a positive integer (rows per chunk); got {chunk_size!r}")
    x = _check_support(support)
    V = x.numel()
    if variant == "deft":
        if delta_f is None:
            raise PlotprefError("variant 'deft' needs delta_f (dF = F+ - F-, e.g. PreferenceDistribution.delta_f)")
        constant = _check_delta_f(delta_f, V)
    else:
        if target is None:
            raise PlotprefError(f"variant {variant!r} needs target (Q, e.g. PreferenceDistribution.q)")
        constant = _check_target(target, V)
        if variant == "kl" and (constant == 0).any():
            warnings.warn(
                f"Q is exactly 0 on {int((constant == 0).sum())} tokens: KL(p || Q) is +inf for every row "
                "(softmax puts mass everywhere), and those rows get a zero gradient. Use a Q with full "
                "support (the min_shift default has it) or the 'js' variant.",
                RuntimeWarning,
                stacklevel=2,
            )

    order = torch.sort(x, stable=True).indices
    if variant == "w1":
        x_sorted = x[order]
        gaps64 = x_sorted[1:] - x_sorted[:-1]
        cdf64 = torch.cumsum(constant[order], 0)[:-1].clamp_(max=1.0)

        def factory(order, dtype, device, presorted):
            gaps, cdf_q = gaps64.to(device=device, dtype=dtype), cdf64.to(device=device, dtype=dtype)
            if backend == "torch" or device.type != "cpu":
                return _W1Kernel(gaps, cdf_q)
            return _FusedW1CPU(torch.arange(V) if presorted else order, gaps, cdf_q)

        return PreferenceDistance(variant, factory, support=x, order=order, chunk_size=chunk_size)

    kernel_class = {"tv": _TVKernel, "kl": _KLKernel, "js": _JSKernel, "deft": _DEFTKernel}[variant]

    def factory(order, dtype, device, presorted):
        vec = constant[order] if presorted else constant
        return kernel_class(vec, dtype, device)

    return PreferenceDistance(variant, factory, support=x, order=order, chunk_size=chunk_size)


def wasserstein_1d(logits: Tensor, target: Tensor, support: Tensor, *, chunk_size: int = 64) -> Tensor:
    """W1(softmax(logits[n]), target) on the 1-D support, for every row n (paper eq. 11-14).

    ``W1(p, Q) = sum_{k=1}^{V-1} |F_p(k) - F_Q(k)| * (x_sigma(k+1) - x_sigma(k))`` with sigma the
    order that sorts ``support`` and F the cumulative sums in that order; it is the optimal
    transport cost between p and Q with ground cost ``|x_u - x_v|``.

    Args:
        logits: (N, V) any float dtype; rows are softmaxed.
        target: (V,) Q, a probability vector (a constant: no gradient).
        support: (V,) token positions x_v (a constant), ties allowed.
        chunk_size: rows per chunk (memory bound only; results do not depend on it).

    Returns:
        (N,) float32 (float64 for float64 logits), differentiable with respect to ``logits``.

    This sorts the support on every call; for training build a :func:`make_distance` once.
    """
    return make_distance("w1", support=support, target=target, chunk_size=chunk_size)(logits)


def token_positions(model: torch.nn.Module, p: float = 2.0, source: str = "input") -> Tensor:
    """Token positions x_v = ||E_v||_p on the line (paper eq. 9; eq. 6 gives the cost |x_u - x_v|).

    Args:
        model: a transformers model (or any module with ``get_input_embeddings`` /
            ``get_output_embeddings``).
        p: the norm's order (2 = Euclidean, the paper's choice; ``float("inf")`` allowed).
        source: ``"input"`` (the input embedding table, default) or ``"output"`` (the output
            layer's weight rows).

    Returns:
        float32 (V,) detached, with V the output layer's number of rows (the logits' width), which
        may exceed the tokenizer's length.

    Raises:
        PlotprefError: unknown source, bad p, no output layer, or an input table whose number of rows
            differs from the output layer's (then the positions would not match the logits).
    """
    if source not in ("input", "output"):
        raise PlotprefError(f"source must be 'input' or 'output' (which embedding table gives x); got {source!r}")
    if not (isinstance(p, (int, float)) and p > 0):
        raise PlotprefError(f"p must be a positive number (the l_p norm's order); got {p!r}")
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is None or getattr(output, "weight", None) is None:
        raise PlotprefError(
            f"{type(model).__name__} has no output layer (get_output_embeddings() is None); load a causal LM "
            "(AutoModelForCausalLM) so that V, the logits' width, is known"
        )
    vocab_size = output.weight.shape[0]
    if source == "input":
        table = model.get_input_embeddings().weight
        if table.shape[0] != vocab_size:
            raise PlotprefError(
                f"the input embedding table has {table.shape[0]} rows but the output layer has {vocab_size}: the "
                "token positions would not line up with the logits. Resize the embeddings "
                "(model.resize_token_embeddings) or use source='output'"
            )
    else:
        table = output.weight
    if table.numel() == 0:
        raise PlotprefError("the embedding table is empty (sharded, e.g. DeepSpeed ZeRO-3?); compute positions before sharding")
    with torch.no_grad():
        return torch.linalg.vector_norm(table.detach(), ord=p, dim=1, dtype=torch.float32)
