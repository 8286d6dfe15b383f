# Two commands on a fresh machine: `make demo` and `make test` (see README).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install lint demo test chromium postgresql containers protos check-protos clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip==25.3"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

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

test: $(STAMP) chromium postgresql containers
	$(PY) -m pytest -q -ra

protos: $(STAMP)
	$(PY) protos/generate.py

check-protos: $(STAMP)
	$(PY) protos/generate.py --check

clean:
	rm -rf $(VENV) demo-network build *.egg-info .pytest_cache
