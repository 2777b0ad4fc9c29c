"""Process-wide CPU settings (model/cpu_runtime.py): each check runs in a fresh interpreter, because
both settings belong to the process and would otherwise leak into the other tests."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Allocates and frees a 64 MiB tensor 24 times in a non-main thread (where the service embeds) and
# reports the page faults of the last four rounds. glibc serves a block this size with a fresh mmap
# each time, so without keep_freed_memory every round faults in all 16k of its pages again; with it,
# the heap grows until freed blocks coalesce into one that an aligned 64 MiB request fits, and then
# stops faulting. That took 9 or 10 rounds in six runs here, so 12 rounds (the earlier version of
# this test) failed now and then.
_FAULTS_PER_ROUND = """
import json, resource, sys, threading, torch
from model.cpu_runtime import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "tuned" else None
faults = []
def rounds():
    for i in range(24):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.empty(16 * 1024 * 1024).fill_(1.0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
thread = threading.Thread(target=rounds); thread.start(); thread.join()
print(json.dumps({"applied": applied, "faults": faults[-4:]}))
"""


def _python(code: str, *args: str, env: dict | None = None) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _without_malloc_variables() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}


def test_keep_freed_memory_stops_large_buffers_from_faulting_in_again():
    is_glibc = platform.libc_ver()[0] == "glibc"
    clean = _without_malloc_variables()
    tuned = subprocess.run([sys.executable, "-c", _FAULTS_PER_ROUND, "tuned"], cwd=ROOT, capture_output=True,
                           text=True, timeout=120, env={**clean, "PYTHONPATH": str(ROOT)})
    as_is = subprocess.run([sys.executable, "-c", _FAULTS_PER_ROUND, "as-is"], cwd=ROOT, capture_output=True,
                           text=True, timeout=120, env={**clean, "PYTHONPATH": str(ROOT)})
    assert tuned.returncode == 0 and as_is.returncode == 0, tuned.stderr + as_is.stderr
    tuned_result, as_is_result = (json.loads(r.stdout.splitlines()[-1]) for r in (tuned, as_is))
    assert tuned_result["applied"] is is_glibc
    if is_glibc:
        pages = 64 * 1024 * 1024 // os.sysconf("SC_PAGE_SIZE")
        assert min(as_is_result["faults"]) >= pages // 2  # the baseline really re-faults...
        assert max(tuned_result["faults"]) < pages // 20  # ...and the tuned process does not


def test_keep_freed_memory_leaves_a_users_own_malloc_settings_alone():
    result = _python(_FAULTS_PER_ROUND, "tuned", env={"MALLOC_ARENA_MAX": "4"})
    assert result["applied"] is False


_THREADS_AFTER_BATCHER = """
import asyncio, json, threading, torch
from service.batching import MicroBatcher

class ThreadCountingEmbedder:
    def embed(self, batch):
        return torch.full((len(batch), 1), float(torch.get_num_threads())).numpy()

batcher = MicroBatcher(max_size=4, threads=3)
worker = asyncio.run(batcher.embed(ThreadCountingEmbedder(), torch.zeros(3, 8, 8))).vector.item()
seen = {}
def later_thread():
    torch.zeros(1 << 20).add_(1.0)  # a parallel op, as decoding a photo runs
    seen["later"] = torch.get_num_threads()
thread = threading.Thread(target=later_thread); thread.start(); thread.join()
again = asyncio.run(batcher.embed(ThreadCountingEmbedder(), torch.zeros(3, 8, 8))).vector.item()
batcher.close()
print(json.dumps({"worker": worker, "worker_again": again, "later": seen["later"], "creator": torch.get_num_threads()}))
"""


def test_the_embedding_worker_keeps_the_intra_op_threads_and_every_other_thread_runs_on_one():
    result = _python(_THREADS_AFTER_BATCHER)
    assert result == {"worker": 3, "worker_again": 3, "later": 1, "creator": 1}


def test_without_threads_the_batcher_leaves_torch_alone():
    code = _THREADS_AFTER_BATCHER.replace("threads=3", "threads=None").replace(
        "import asyncio", "import torch; torch.set_num_threads(2)\nimport asyncio")
    assert _python(code) == {"worker": 2, "worker_again": 2, "later": 2, "creator": 2}


_POLICY_AFTER_YIELD = """
import json, os, threading
from model.cpu_runtime import yield_cpu_to_others
yielded = yield_cpu_to_others()
seen = {}
thread = threading.Thread(target=lambda: seen.update(thread=os.sched_getscheduler(0))); thread.start(); thread.join()
print(json.dumps({"yielded": yielded, "main": os.sched_getscheduler(0), "thread": seen["thread"]}))
"""


def test_a_process_that_yields_runs_idle_and_so_do_its_later_threads():
    result = _python(_POLICY_AFTER_YIELD)
    if not hasattr(os, "SCHED_IDLE"):
        assert result["yielded"] is False
        return
    assert result == {"yielded": True, "main": os.SCHED_IDLE, "thread": os.SCHED_IDLE}
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the test's own process never changed


def test_the_busy_share_of_other_processes_leaves_this_ones_own_cpu_out(monkeypatch):
    from model import cpu_runtime

    monkeypatch.setattr(cpu_runtime.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(cpu_runtime.time, "sleep", lambda seconds: None)
    # (CPU seconds of all cores, this process's CPU seconds, wall clock): 2.4 s busy in 1 s, 0.4 s of it ours
    samples = iter([(100.0, 5.0, 10.0), (102.4, 5.4, 11.0)])
    monkeypatch.setattr(cpu_runtime, "_cpu_sample", lambda: next(samples))
    assert cpu_runtime.others_busy_share() == pytest.approx(0.5)
    for others, idle in ((0.3, True), (1.9, True), (2.0, False), (3.9, False)):
        samples = iter([(0.0, 0.0, 0.0), (others + 0.7, 0.7, 1.0)])
        assert cpu_runtime.cores_mostly_idle() is idle

    def unreadable():
        raise OSError("no /proc/stat here")

    monkeypatch.setattr(cpu_runtime, "_cpu_sample", unreadable)
    assert cpu_runtime.others_busy_share() is None and cpu_runtime.cores_mostly_idle() is False


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="no /proc/stat")
def test_the_machines_busy_time_is_read_in_the_seconds_of_this_processs_own():
    from model.cpu_runtime import _cpu_sample

    busy0, own0, t0 = _cpu_sample()
    while time.process_time() - own0 < 0.4:
        sum(range(1000))
    busy1, own1, t1 = _cpu_sample()
    own, wall = own1 - own0, t1 - t0
    # This process's spinning is part of the machine's busy time, which cannot exceed every core's wall time.
    assert 0.8 * own <= busy1 - busy0 <= (os.cpu_count() or 1) * wall + 0.05
