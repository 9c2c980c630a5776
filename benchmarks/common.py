"""What the benchmark scripts share: device sync, process memory, the machine record, alternating timing."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time

import torch


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so that a timer measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_rss_mb() -> float:
    """VmHWM: this process' peak RSS. Not ru_maxrss, which a child inherits from its parent across fork/exec."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """This process' current RSS."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def machine(device: torch.device) -> dict:
    """The machine a result came from (threads and load matter on a shared CPU)."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }


def alternate(fns: dict, device: torch.device, repeats: int, *, warmup: int = 1) -> dict[str, list[float]]:
    """Time each of ``fns`` (name -> callable) ``repeats`` times, interleaved, after ``warmup`` calls each.

    The order is reversed every other repeat (A B, B A, ...), so that a drift in the machine's load hits
    every side alike: on a shared CPU the ratio of two sides timed this way is steadier than either time.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for index in range(repeats):
        for name in names if index % 2 == 0 else names[::-1]:
            sync(device)
            start = time.perf_counter()
            fns[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def ratio_summary(ours: list[float], theirs: list[float]) -> dict:
    """Both medians, official/larp of the medians, and the median of the per-repeat ratios (each from two
    adjacent calls); ``ours`` and ``theirs`` as :func:`alternate` returns them."""
    return {
        "larp_s": round(statistics.median(ours), 4),
        "official_s": round(statistics.median(theirs), 4),
        "ratio_official_over_larp": round(statistics.median(theirs) / statistics.median(ours), 3),
        "median_pair_ratio": round(statistics.median(t / o for o, t in zip(ours, theirs)), 3),
        "larp_all_s": [round(t, 4) for t in ours],
        "official_all_s": [round(t, 4) for t in theirs],
    }

