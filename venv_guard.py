"""Let `python -m indexer|service|demo` work from the repository root without activating .venv.

`make demo` / `make test` install everything into .venv; a plain `python` elsewhere lacks torch
and friends. Rather than a ModuleNotFoundError traceback, re-run the same command under
.venv/bin/python when it exists, else say in one line how to install.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

REQUIRED = ("torch", "torchvision", "faiss", "fastapi", "PIL", "safetensors", "efficientnet_lite_pytorch")
PROJECT_VENV = Path(__file__).resolve().parent / ".venv"


def ensure_dependencies(module: str) -> None:
    missing = [name for name in REQUIRED if importlib.util.find_spec(name) is None]
    if not missing:
        return
    venv_python = PROJECT_VENV / "bin" / "python"
    running_in_venv = Path(sys.prefix).resolve() == PROJECT_VENV.resolve()
    if venv_python.exists() and not running_in_venv:
        os.execv(str(venv_python), [str(venv_python), "-m", module, *sys.argv[1:]])
    sys.exit(f"error: {', '.join(missing)} not installed for {sys.executable}; run `make test` once "
             f"(it creates {PROJECT_VENV}) or `pip install -r requirements.txt`")
