"""Peak memory of one prefill, above what was in use before it.

On CUDA the allocator keeps the peak. On the CPU glibc keeps freed memory for reuse, so a long-lived process's
resident size says little about one forward; a fresh child process measures instead: it hands every block of 64 KiB
or more back to the system on free (a fixed mmap threshold), runs each prefill once to warm up, resets its peak
resident size (/proc/self/clear_refs) and reads how far the next prefill raises it (VmHWM) above where it started
(VmRSS). Linux with glibc only; elsewhere the CPU figures are None.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import tempfile
from pathlib import Path

import torch

from ..patching import merging
from .timing import sync, time_prefill

_M_MMAP_THRESHOLD = -3


def cuda_peak_bytes(model, ids: torch.Tensor) -> int:
    """Bytes one prefill allocates on CUDA above what was allocated before it."""
    sync(ids.device)
    torch.cuda.reset_peak_memory_stats(ids.device)
    start = torch.cuda.memory_allocated(ids.device)
    time_prefill(model, ids)
    return torch.cuda.max_memory_allocated(ids.device) - start


def _proc_status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"no {key} in /proc/self/status")


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL("libc.so.6")


def rss_peak(fn) -> int:
    """Bytes by which ``fn()`` raises this process's peak resident size above its size before the call."""
    _libc().malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current VmRSS
    before = _proc_status("VmRSS")
    fn()
    return _proc_status("VmHWM") - before


def return_freed_memory() -> None:
    """Make glibc unmap every freed block of 64 KiB or more at once, instead of keeping it in the heap for reuse
    (its default threshold rises with the blocks it has freed)."""
    _libc().mallopt(_M_MMAP_THRESHOLD, 64 * 1024)


def _child_peaks(model_file: str, ids: torch.Tensor, variants: list[dict], threads: int) -> list[int]:
    return_freed_memory()
    torch.set_num_threads(threads)
    model = torch.load(model_file, weights_only=False)
    peaks = []
    for v in [None, *variants]:
        with contextlib.nullcontext() if v is None else merging(model, **v):
            time_prefill(model, ids)  # warm-up
            peaks.append(rss_peak(lambda: time_prefill(model, ids)))
    return peaks


def cpu_peak_bytes(model, ids: torch.Tensor, variants: list[dict]) -> list[int | None]:
    """Peak bytes one prefill adds on the CPU, for the base model and each variant (patch kwargs), measured in a
    fresh child process (None where /proc/self/clear_refs or glibc is missing)."""
    try:
        _libc().mallopt
        Path("/proc/self/clear_refs").stat()
    except (OSError, AttributeError):
        return [None] * (len(variants) + 1)
    with tempfile.TemporaryDirectory() as tmp:
        model_file = str(Path(tmp) / "model.pt")
        torch.save(model, model_file)
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            return pool.apply(_child_peaks, (model_file, ids, variants, torch.get_num_threads()))


def peak_bytes(model, ids: torch.Tensor, variants: list[dict]) -> list[int | None]:
    """Peak bytes of one prefill for the base model and each variant, on the device ``ids`` live on."""
    if ids.device.type != "cuda":
        return cpu_peak_bytes(model, ids, variants)
    peaks = []
    for v in [None, *variants]:
        with contextlib.nullcontext() if v is None else merging(model, **v):
            time_prefill(model, ids)
            peaks.append(cuda_peak_bytes(model, ids))
    return peaks
