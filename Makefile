# Quick start: `make demo` (the whole job on the built-in corpus) and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# A bare `torch` requirement would pull the newest CUDA build (GBs); install the CPU wheel first.
TORCH  ?= torch==2.13.0
# Test processes (pytest-xdist): one keeps about 1.3 of 2 cores busy, two keep both busy; 0 = serial.
TEST_WORKERS ?= 2

.PHONY: install demo test test-fast bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,scale,ray]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tagsearch demo $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) -m "not slow and not services and not browser" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m benchmarks run run

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
