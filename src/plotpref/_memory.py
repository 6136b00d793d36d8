"""Peak extra CPU memory of a call, for the W1 memory test and benchmarks/bench_ot.py."""

from __future__ import annotations

import tracemalloc
from typing import Callable

from torch.profiler import ProfilerActivity, profile


def peak_extra_bytes(fn: Callable[[], object]) -> int:
    """Peak extra bytes while ``fn`` runs: torch's CPU allocator plus numpy's.

    torch's part is the maximum of the running sum of the allocation and free events that
    torch.profiler (``profile_memory=True``) records; numpy's part (plotpref's CPU gradient buffer
    is a numpy array, see ``ot._empty``) is tracemalloc's peak, which numpy reports its array
    buffers to, measured in a second call without the profiler (whose own Python objects
    tracemalloc would count). The two peaks are added, so the figure is an upper bound when both
    allocators are used. Everything ``fn`` allocates counts, its result included.
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = torch_peak = 0
    for event in events:
        live += event.nbytes()
        torch_peak = max(torch_peak, live)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fn()
        numpy_peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return torch_peak + numpy_peak


__all__ = ["peak_extra_bytes"]
