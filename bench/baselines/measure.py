"""Measurement helpers: percentiles under unit-named keys, resident memory, child processes, the machine."""

from __future__ import annotations

import multiprocessing
import os
import platform
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

T = TypeVar("T")


class Percentiles:
    @staticmethod
    def of(values: npt.ArrayLike, name: str, unit: str, qs: Sequence[int]) -> dict[str, float | None]:
        """``{name}_p{q}_{unit}`` for each ``q`` (``p100`` is the maximum); ``None`` when there are no values.

        >>> Percentiles.of([1.0, 2.0, 3.0], "query", "ms", (50, 100))
        {'query_p50_ms': 2.0, 'query_p100_ms': 3.0}
        """
        array = np.asarray(values, dtype=np.float64)
        return {
            f"{name}_p{q}_{unit}": round(float(np.percentile(array, q)), 4) if array.size else None
            for q in qs
        }


def overlapping(spans: npt.NDArray[np.float64], busy: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    """bool[len(spans)]: whether each ``(start, end)`` span overlaps any ``busy`` span.

    >>> overlapping(np.array([[0, 1], [2, 3], [5, 6]]), np.array([[0.5, 2.5]])).tolist()
    [True, True, False]
    """
    if spans.shape[0] == 0 or busy.shape[0] == 0:
        return np.zeros(spans.shape[0], dtype=bool)
    hit = (spans[:, None, 0] < busy[None, :, 1]) & (busy[None, :, 0] < spans[:, None, 1])
    result: npt.NDArray[np.bool_] = hit.any(axis=1)
    return result


def _status_kb(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    return int(match.group(1)) if match else 0


def rss_bytes() -> int:
    """This process's resident set now."""
    return _status_kb("VmRSS") * 1024


def peak_rss_bytes() -> int:
    """The kernel's high-water mark of this process's resident set since start or ``reset_peak_rss``."""
    return _status_kb("VmHWM") * 1024


def reset_peak_rss() -> None:
    """Reset ``VmHWM`` to the current resident set (Linux >= 4.0: writing 5 to ``clear_refs``)."""
    Path("/proc/self/clear_refs").write_text("5")


def one_intra_op_thread() -> None:
    """torch and faiss on one thread: each thread's CPU clock then holds all the work it starts, and on a
    small shared machine latency is not at the mercy of intra-op thread hand-offs."""
    import torch

    torch.set_num_threads(1)
    try:
        import faiss

        faiss.omp_set_num_threads(1)
    except ImportError:
        pass


def in_child(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a fresh (spawned) process: its memory and CPU are its own, and freed on return."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def available_bytes() -> int:
    """Memory available for new work (``MemAvailable``)."""
    match = re.search(r"^MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


def machine() -> dict[str, Any]:
    """The machine the numbers came from, and how busy it was when the run started."""
    cpu = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    total = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    import torch

    return {
        "machine_cpu": cpu.group(1).strip() if cpu else platform.processor(),
        "machine_cores": os.cpu_count(),
        "machine_ram_gb": round(int(total.group(1)) / 2**20, 1) if total else None,
        "machine_available_gb_at_start": round(available_bytes() / 2**30, 1),
        "machine_loadavg_1m_at_start": round(os.getloadavg()[0], 2),
        "machine_kernel": platform.release(),
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
    }
