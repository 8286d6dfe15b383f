# Two commands on a fresh machine: `make demo` and `make test` (see README).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install lint wheel wheels-node wheels-coordinator demo test chromium postgresql containers protos check-protos clean

# Exact versions from constraints.txt (the lock); pyproject.toml keeps compatible ranges.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip==25.3"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The package as a wheel in dist/, for `pip install -c constraints.txt "dist/<wheel>[node]"`.
wheel: $(STAMP)
	rm -rf dist
	$(PY) -m pip wheel --quiet --no-deps -w dist .

# Wheels for the container images (deploy/*.Dockerfile), built from the locked versions.
wheels-node wheels-coordinator: wheels-%: $(STAMP)
	rm -rf build/wheels
	$(PY) -m pip wheel --quiet -c constraints.txt -w build/wheels ".[$*]"

demo: $(STAMP)
	rm -rf demo-network
	$(VENV)/bin/bridgestat demo --members 5 --seed 7 --out demo-network

# The report test renders HTML in Debian's chromium; installed here when missing (as root).
chromium:
	sh scripts/ensure-chromium

# The data-source tests start a throwaway server from Debian's postgresql (installed as root).
postgresql:
	sh scripts/ensure-postgresql

# The container test builds the node image with podman/buildah and a debootstrap base.
containers:
	sh scripts/ensure-containers

# ruff and mypy (strict) on the hand-written code; generated stubs are excluded.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	PYTHON=$(PY) sh scripts/typecheck

# The test files run in TEST_WORKERS processes (pytest-xdist; a file's tests stay in one
# worker, so its module fixtures run once): on CI's two cores this takes a third off.
TEST_WORKERS ?= 2

test: $(STAMP) lint chromium postgresql containers
	$(PY) -m pytest -q -ra --durations=15 -n $(TEST_WORKERS) --dist loadfile

protos: $(STAMP)
	$(PY) protos/generate.py

check-protos: $(STAMP)
	$(PY) protos/generate.py --check

clean:
	rm -rf $(VENV) demo-network build dist *.egg-info .pytest_cache
