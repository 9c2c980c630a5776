"""What the benchmark scripts share: device sync, process memory, the machine record."""

from __future__ import annotations

import os
import platform
import resource

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
