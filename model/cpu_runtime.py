"""Process-wide CPU settings for the processes that run the model: the service and the indexer.

Costs measured around efficientnet-lite0 at 224 px on a 2-core CPU, neither of them in the model:

- **Page faults.** glibc gives large freed blocks back to the kernel (and a thread other than the
  main one allocates from its own arena, which it trims eagerly), so every forward pass faults its
  activations in again: ~3,500 page faults (~4 ms) for one photo off the main thread, ~180,000
  (~150 ms of a 680 ms pass) for a batch of 16. `keep_freed_memory` makes glibc keep them.
- **OpenMP sleeping.** libgomp stops spin-waiting in every thread team once it manages more threads
  than there are cores. Each thread that runs a parallel torch op gets a team of its own, so a
  service that loads the model in one thread, decodes in others and embeds in a worker crosses that
  line, and the worker's pass pays ~500 sleeps and wake-ups: 47 ms instead of 40. The worker keeps
  the intra-op threads (`use_intra_op_threads`); every other thread runs torch single-threaded
  (`single_threaded_torch`), which costs them nothing: they only convert one photo at a time.
- **Decoding beside the model.** The indexer's decoding processes share the cores with the model's
  OpenMP threads, which wait for one another at the end of every op: a decoder that holds one core
  stalls both. `yield_cpu_to_others` puts the decoders on the CPU time the model leaves.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import time

import torch

log = logging.getLogger("snap2shop")

# mallopt parameters, from glibc's malloc.h
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_KEEP_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Let glibc keep freed memory for reuse instead of unmapping it: one arena, no mmap'd blocks, and
    no trimming below 1 GiB of free memory. The process holds its peak working set (the activations of
    its largest batch) rather than faulting it in again on every forward pass.

    Does nothing (returns False) off glibc, or when the user tunes malloc through MALLOC_* variables.
    """
    if any(name.startswith("MALLOC_") for name in os.environ) or "GLIBC_TUNABLES" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # musl, macOS, Windows: no mallopt
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    applied = all(mallopt(param, value) == 1 for param, value in
                  ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _KEEP_BYTES)))
    if applied:
        log.debug("glibc malloc: one arena, no mmap, trim threshold %d bytes", _KEEP_BYTES)
    return applied


def yield_cpu_to_others() -> bool:
    """Run this process only on CPU time that no other process wants (Linux's SCHED_IDLE policy).

    For decoding processes beside a model on the same cores. Under `nice 19` a torch thread that
    wakes still waits out the decoder's time slice, which measured no better than no change; a
    SCHED_IDLE process gives the core up as soon as a normal thread wants it. On 1,000 photos of
    1024 px that took the indexer from 0.88 to 0.90 of the model's own rate (README, Performance).
    The other side: while other processes keep every core busy, these get next to nothing.

    Returns False where the OS has no such policy (it then changes nothing).
    """
    if not hasattr(os, "SCHED_IDLE"):
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except OSError:  # e.g. a seccomp profile that forbids it
        return False
    return True


DECODE_PRIORITY_CHOICES = ("auto", "idle", "normal")  # of the processes that decode beside a model


def worker_yielding_to_model(_worker_id: int) -> None:
    """A DataLoader's worker_init_fn: the worker runs on the CPU time the model leaves."""
    yield_cpu_to_others()


def _cpu_sample() -> tuple[float, float, float]:
    """(seconds of CPU every core has run anything but idle, since boot; this process's CPU seconds; now)."""
    with open("/proc/stat", encoding="ascii") as stat:
        ticks = [int(v) for v in stat.readline().split()[1:8]]  # user nice system idle iowait irq softirq
    busy = sum(ticks) - ticks[3] - ticks[4]  # a VM's stolen time is not this machine's processes
    return busy / os.sysconf("SC_CLK_TCK"), time.process_time(), time.monotonic()


def others_busy_share(window: float = 1.0) -> float | None:
    """The share of the cores that other processes keep busy, over the next `window` seconds (this
    process's own CPU time taken out). None where the kernel does not say (no /proc/stat)."""
    try:
        busy0, own0, t0 = _cpu_sample()
        time.sleep(window)
        busy1, own1, t1 = _cpu_sample()
    except (OSError, ValueError):
        return None
    return max(0.0, (busy1 - busy0) - (own1 - own0)) / (max(t1 - t0, 1e-6) * (os.cpu_count() or 1))


def cores_mostly_idle() -> bool:
    """Whether other processes leave over half the cores idle now: no job that workers yielding to the
    model (yield_cpu_to_others) would starve behind. False where unknown."""
    share = others_busy_share()
    return share is not None and share < 0.5


def single_threaded_torch() -> int:
    """Run torch single-threaded in this thread and in every thread that starts torch work from now
    on; returns the thread count torch had, for the one thread that should keep it.

    torch's thread count is a process-wide default that each thread copies the first time it runs a
    parallel op or asks for the count, and keeps; `torch.set_num_threads` sets both the default and
    the calling thread's own.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    return threads


def use_intra_op_threads(threads: int) -> None:
    """Give this thread `threads` OpenMP threads for its torch ops. Call it first thing in the
    thread, then `single_threaded_torch()` from the thread that started it, so the default that
    later threads copy goes back to one."""
    torch.get_num_threads()  # takes the process default now, so that it cannot replace ours later
    torch.set_num_threads(threads)
