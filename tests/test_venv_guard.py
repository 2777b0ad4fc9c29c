"""`python -m indexer` from a plain interpreter: re-run under .venv, or one clear line."""
from __future__ import annotations

import sys

import pytest

import venv_guard


def test_nothing_happens_when_everything_is_installed(monkeypatch):
    monkeypatch.setattr(venv_guard.os, "execv", lambda *a: pytest.fail("must not re-exec"))
    venv_guard.ensure_dependencies("indexer")


def test_missing_dependencies_reexec_under_the_project_venv(monkeypatch, tmp_path):
    venv = tmp_path / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("#!/bin/sh\n")
    calls = []

    class Replaced(Exception):  # execv never returns: the process becomes the venv's python
        pass

    def fake_execv(exe, argv):
        calls.append((exe, argv))
        raise Replaced

    monkeypatch.setattr(venv_guard, "REQUIRED", ("torch", "surely_not_installed_module"))
    monkeypatch.setattr(venv_guard, "PROJECT_VENV", venv)
    monkeypatch.setattr(venv_guard.os, "execv", fake_execv)
    monkeypatch.setattr(sys, "argv", ["indexer/__main__.py", "build", "--out", "x"])
    with pytest.raises(Replaced):
        venv_guard.ensure_dependencies("indexer")
    assert calls == [(str(venv / "bin" / "python"), [str(venv / "bin" / "python"), "-m", "indexer", "build", "--out", "x"])]


def test_missing_dependencies_without_a_venv_exit_with_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(venv_guard, "REQUIRED", ("surely_not_installed_module",))
    monkeypatch.setattr(venv_guard, "PROJECT_VENV", tmp_path / "no-venv")
    with pytest.raises(SystemExit) as info:
        venv_guard.ensure_dependencies("service")
    assert "surely_not_installed_module not installed" in str(info.value)
    assert "make test" in str(info.value)
