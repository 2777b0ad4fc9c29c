"""`python -m service` as an operator starts it: damaged indexes and wrong models are one clear line
and exit code 2, never a traceback; a healthy start logs JSON lines and says once that it runs on
the CPU when there is no GPU."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest

from indexer.layout import FAISS_FILE, METADATA_FILE, resolve_version_dir

from .conftest import edit_manifest, free_port

ROOT = Path(__file__).resolve().parents[1]


def _start(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service", "--port", str(free_port()), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def index_copy(tmp_path, tiny_index) -> Path:
    target = tmp_path / "idx"
    shutil.copytree(tiny_index, target, symlinks=True)
    return target


def _damage_faiss(index: Path) -> None:
    (resolve_version_dir(index) / FAISS_FILE).write_bytes(b"\x00" * 64)


def _drop_metadata(index: Path) -> None:
    (resolve_version_dir(index) / METADATA_FILE).unlink()


def _other_model(index: Path) -> None:
    edit_manifest(index, lambda m: m["model"].update(checksum="0" * 64))


def _dangling_current(index: Path) -> None:
    shutil.rmtree(resolve_version_dir(index))


@pytest.mark.parametrize("damage, expected", [
    (_damage_faiss, "is corrupt"),
    (_drop_metadata, "is missing"),
    (_other_model, "is not the model index"),
    (_dangling_current, "holds no manifest.json"),
])
def test_a_damaged_index_is_one_clear_line(index_copy, damage, expected):
    damage(index_copy)
    result = _start("--index", str(index_copy))
    assert result.returncode == 2
    assert "error: cannot start:" in result.stderr and expected in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_a_model_file_that_is_not_a_checkpoint_is_one_clear_line(tiny_index, tmp_path):
    fake = tmp_path / "weights.safetensors"
    fake.write_text("this is not a checkpoint")
    result = _start("--index", str(tiny_index), "--model", str(fake))
    assert result.returncode == 2 and "error: cannot start:" in result.stderr and str(fake) in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_settings_are_one_clear_line(tiny_index):
    result = subprocess.run([sys.executable, "-m", "service", "--index", str(tiny_index)], cwd=ROOT, timeout=120,
                            capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "SNAP2SHOP_MAX_IN_FLIGHT": "lots"})
    assert result.returncode == 2 and "SNAP2SHOP_MAX_IN_FLIGHT" in result.stderr and "Traceback" not in result.stderr


def test_healthy_start_logs_json_with_request_ids_and_the_cpu_path_once(tiny_index, tmp_path, synthetic_catalog):
    port = free_port()
    log_path = tmp_path / "service.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "service", "--index", str(tiny_index), "--port", str(port)],
                                   cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None, log_path.read_text()
            try:
                if httpx2.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx2.TransportError:
                time.sleep(0.3)
        photo = next((synthetic_catalog.parent / "images").iterdir()).read_bytes()
        answer = httpx2.post(f"{base}/search", files={"image": ("a.jpg", photo)}, headers={"X-Request-ID": "probe-1"})
        assert answer.status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=30)
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    assert lines, log_path.read_text()
    cpu_notes = [line for line in lines if "running on the CPU" in line["message"]]
    assert len(cpu_notes) == 1
    request = next(line for line in lines if line.get("request_id") == "probe-1")
    assert request["route"] == "/search" and request["status"] == 200 and "embed_ms" in request["timings_ms"]
