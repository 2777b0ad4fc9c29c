"""bench/bench_encode.py's `--busy N`: the busy-machine figures are only as good as the load it makes,
and a spinner left behind would skew every later measurement on the box."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from bench_encode import busy_processes  # noqa: E402


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads Linux's /proc")
def test_busy_processes_spin_while_the_block_runs_and_are_killed_after_it_even_on_error():
    with pytest.raises(RuntimeError, match="measurement failed"):
        with busy_processes(1) as spinners:
            pids = [spinner.pid for spinner in spinners]
            assert len(pids) == 1 and all(spinner.is_alive() for spinner in spinners)
            deadline = time.monotonic() + 10
            while _cpu_ticks(pids[0]) < 10 and time.monotonic() < deadline:  # ~0.1 s of CPU: it spins
                time.sleep(0.02)
            assert _cpu_ticks(pids[0]) >= 10
            raise RuntimeError("measurement failed")
    assert not any(spinner.is_alive() for spinner in spinners)
    assert all(_gone(pid) for pid in pids)  # killed and reaped, not left as zombies


def test_no_busy_processes_is_a_plain_block():
    with busy_processes(0) as spinners:
        assert spinners == []
