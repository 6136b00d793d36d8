"""Benchmark the PLOT term's W1 kernel against scipy, POT, a naive torch version and log_softmax.

Everything runs in one process, side by side: every round times every method once, in an order
shuffled afresh each round (seeded), and the table reports the median over rounds (and the ratio of
medians), so that load from other processes hits all methods alike. The shuffle matters: in a fixed
order, the method timed right after the naive version (which frees 480 MB) paid for the memory
that the C library had just handed back to the kernel (page faults on its fresh gradient buffer),
and measured 2x slower than in any other position.

    python benchmarks/bench_ot.py                        # V = 49,152, N = 64 and 512, float32
    python benchmarks/bench_ot.py --rows 512 --chunk-sizes 4 8 16 32 64

Methods (per row of an (N, V) float32 logits tensor, V = 49,152 by default):
  scipy      scipy.stats.wasserstein_distance(x, x, softmax(z_n), Q) in a Python loop; forward only,
             timed on --scipy-rows rows and extrapolated per row.
  POT        ot.wasserstein_1d (numpy backend) in a loop; forward only, same subset.
  naive      torch: softmax, gather into sorted order, cumsum, abs, dot with the gaps; plain autograd.
  plotpref   make_distance("w1") on logits in token order: on CPU its default backend, the fused
             numba kernel (softmax by torch, then one gather, one sequential pass and one
             gather-back per row).
  presorted  the same object with presorted=True on logits already in sorted order (what a trainer
             gets after permuting the output layer's rows once).
  torch ops  make_distance("w1", backend="torch"): the same formulas as a dozen torch ops per chunk
             (the path used on GPUs), in token order and presorted.
  log_softmax torch.log_softmax on the same tensor: the floor any token-level loss pays.

Peak extra memory is measured with torch's CPU memory profiler (torch.profiler with
profile_memory=True): the running sum of every allocation and free made by torch's CPU allocator
during one forward+backward, after the logits and the upstream gradient exist; its maximum, plus
tracemalloc's peak of numpy's allocations in a second call (plotpref's CPU gradient buffer is a
numpy array, for its huge pages), is reported in MB and as a multiple of the logits tensor's size.
The returned gradient is counted.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time

import numpy as np
import torch

from plotpref._memory import peak_extra_bytes
from plotpref.ot import make_distance


def naive_w1(z: torch.Tensor, order: torch.Tensor, cdf_q: torch.Tensor, gaps: torch.Tensor) -> torch.Tensor:
    cdf_p = torch.cumsum(torch.softmax(z, dim=1)[:, order], dim=1)[:, :-1]
    return ((cdf_p - cdf_q).abs() * gaps).sum(dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--rows", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--scipy-rows", type=int, default=8, help="rows timed for the scipy and POT loops")
    parser.add_argument("--chunk-size", type=int, default=None, help="plotpref chunk size (default: make_distance's)")
    parser.add_argument("--chunk-sizes", type=int, nargs="*", default=[],
                        help="also sweep these chunk sizes (fwd+bwd, on the last --rows value)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import ot as pot
    import scipy.stats

    torch.set_num_threads(args.threads)
    V = args.vocab
    g = torch.Generator().manual_seed(0)
    # Token positions like embedding norms (unordered with respect to token ids) and a Q with
    # a floor plus a sparse preference signal, as the min-shift gives.
    x = (1.0 + 0.2 * torch.randn(V, generator=g)).abs()
    q = torch.full((V,), 1.0) + torch.where(torch.rand(V, generator=g) < 0.2, torch.rand(V, generator=g) * 3, 0.0)
    q = (q / q.sum()).double()

    kwargs = {} if args.chunk_size is None else {"chunk_size": args.chunk_size}
    dist = make_distance("w1", support=x, target=q, **kwargs)
    dist_torch = make_distance("w1", support=x, target=q, backend="torch", **kwargs)
    order = dist.order
    xs = x.double()[order]
    gaps = (xs[1:] - xs[:-1]).float()
    cdf_q = torch.cumsum(q[order], 0)[:-1].float()

    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; V = {V}, float32 logits; chunk_size = {dist.chunk_size}")

    for N in args.rows:
        z = torch.randn(N, V, generator=g) * 3.0
        z_sorted = z[:, order].contiguous()
        zr, zsr = z.clone().requires_grad_(True), z_sorted.clone().requires_grad_(True)
        ones = torch.ones(N)
        up = torch.randn(N, V, generator=g)  # upstream gradient for log_softmax's backward
        logits_bytes = z.numel() * z.element_size()

        p_sub = torch.softmax(z[: args.scipy_rows].double(), 1).numpy()
        x_np, q_np = x.double().numpy(), q.numpy()

        def scipy_loop():
            return [scipy.stats.wasserstein_distance(x_np, x_np, row, q_np) for row in p_sub]

        def pot_loop():
            return [pot.wasserstein_1d(x_np, x_np, row, q_np, p=1) for row in p_sub]

        forward = {
            "log_softmax": lambda: torch.log_softmax(z, 1),
            "naive torch": lambda: naive_w1(z, order, cdf_q, gaps),
            "plotpref (gather)": lambda: dist(z),
            "plotpref (presorted)": lambda: dist(z_sorted, presorted=True),
            "torch ops (gather)": lambda: dist_torch(z),
            "torch ops (presorted)": lambda: dist_torch(z_sorted, presorted=True),
        }
        backward = {
            "log_softmax": lambda: torch.autograd.grad(torch.log_softmax(zr, 1), zr, up),
            "naive torch": lambda: torch.autograd.grad(naive_w1(zr, order, cdf_q, gaps), zr, ones),
            "plotpref (gather)": lambda: torch.autograd.grad(dist(zr), zr, ones),
            "plotpref (presorted)": lambda: torch.autograd.grad(dist(zsr, presorted=True), zsr, ones),
            "torch ops (gather)": lambda: torch.autograd.grad(dist_torch(zr), zr, ones),
            "torch ops (presorted)": lambda: torch.autograd.grad(dist_torch(zsr, presorted=True), zsr, ones),
        }
        sweep = {}
        for c in args.chunk_sizes if N == args.rows[-1] else []:  # sweep on the largest N only
            d = make_distance("w1", support=x, target=q, chunk_size=c)
            sweep[f"gather, chunk {c}"] = (lambda d=d: torch.autograd.grad(d(zr), zr, ones))
            sweep[f"presorted, chunk {c}"] = (lambda d=d: torch.autograd.grad(d(zsr, presorted=True), zsr, ones))

        times: dict[str, list[float]] = {}

        def clock(key, fn, rows):
            start = time.perf_counter()
            fn()
            times.setdefault(key, []).append((time.perf_counter() - start) / rows * 1e6)

        for fn in [*forward.values(), *backward.values(), *sweep.values()]:
            fn()  # warm-up
        jobs = [(("scipy", "fwd"), scipy_loop, len(p_sub)), (("POT", "fwd"), pot_loop, len(p_sub))]
        jobs += [((name, "fwd"), fn, N) for name, fn in forward.items()]
        jobs += [((name, "fwdbwd"), fn, N) for name, fn in backward.items()]
        jobs += [((name, "sweep"), fn, N) for name, fn in sweep.items()]
        shuffle = random.Random(N)
        for _ in range(args.rounds):
            shuffle.shuffle(jobs)  # no method always follows the same neighbour (see the docstring)
            for key, fn, rows in jobs:
                clock(key, fn, rows)
        med = {k: statistics.median(v) for k, v in times.items()}

        memory = {name: peak_extra_bytes(fn) for name, fn in backward.items()}

        # accuracy on the rows scipy computed
        ref = np.array(scipy_loop())
        rel = {
            "naive torch": np.abs(naive_w1(z[: len(ref)], order, cdf_q, gaps).double().numpy() - ref).max() / ref.max(),
            "plotpref (gather)": np.abs(dist(z[: len(ref)]).double().numpy() - ref).max() / ref.max(),
            "plotpref (presorted)": np.abs(dist(z_sorted[: len(ref)], presorted=True).double().numpy() - ref).max() / ref.max(),
            "torch ops (gather)": np.abs(dist_torch(z[: len(ref)]).double().numpy() - ref).max() / ref.max(),
            "torch ops (presorted)": np.abs(dist_torch(z_sorted[: len(ref)], presorted=True).double().numpy() - ref).max() / ref.max(),
        }

        ls_f, ls_fb = med[("log_softmax", "fwd")], med[("log_softmax", "fwdbwd")]
        print(f"\nN = {N} rows, logits {logits_bytes / 2**20:.0f} MB; median of {args.rounds} rounds, µs per row "
              f"(scipy/POT: {len(p_sub)} rows timed, extrapolated per row)")
        print("| method | fwd µs/row | fwd+bwd µs/row | fwd+bwd / log_softmax fwd+bwd | scipy / this (fwd) | "
              "peak extra memory fwd+bwd | rel. error vs scipy (float32) |")
        print("|---|---|---|---|---|---|---|")
        for name in ["scipy", "POT", *forward]:
            f = med[(name, "fwd")]
            fb = med.get((name, "fwdbwd"))
            mem = memory.get(name)
            print(
                f"| {name} | {f:,.1f} | {'n/a' if fb is None else f'{fb:,.1f}'} | "
                f"{'n/a' if fb is None else f'{fb / ls_fb:.2f}x'} | {med[('scipy', 'fwd')] / f:,.0f}x | "
                f"{'n/a' if mem is None else f'{mem / 2**20:,.0f} MB ({mem / logits_bytes:.2f}x logits)'} | "
                f"{f'{rel[name]:.1e}' if name in rel else 'oracle' if name == 'scipy' else '-'} |"
            )
        print(f"log_softmax fwd: {ls_f:.1f} µs/row; scipy fwd / fwd+bwd: " + ", ".join(
            f"{name} {med[('scipy', 'fwd')] / med[(name, 'fwdbwd')]:,.0f}x" for name in backward if name != "log_softmax"))
        if sweep:
            print("chunk-size sweep, fwd+bwd µs/row (ratio to log_softmax fwd+bwd): " + "; ".join(
                f"{name} {med[(name, 'sweep')]:.1f} ({med[(name, 'sweep')] / ls_fb:.2f}x)" for name in sweep))


if __name__ == "__main__":
    main()
