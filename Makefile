# Everything runs in .venv, made on first use from the pinned requirements.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000

.PHONY: demo test bench clean

# Two layers: the demo and the service need requirements.txt only; the tests add Ray, Milvus Lite,
# Playwright and the rest of requirements-test.txt (about 1 GB more) on top, when they are run.
$(VENV)/.installed-app: requirements.txt requirements-app.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.installed: $(VENV)/.installed-app requirements-test.txt requirements-ray.txt requirements-milvus.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
	touch $@

demo: $(VENV)/.installed-app  ## synthetic catalogue -> index -> server on localhost:$(PORT)
	$(PY) -m demo run --port $(PORT)

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

bench: $(VENV)/.installed  ## needs ../shared/data/fashion-products (or IMAGES=...)
	$(PY) bench/bench_index_search.py $(if $(IMAGES),--images $(IMAGES))

clean:
	rm -rf var .pytest_cache
