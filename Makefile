# Two commands do all set-up on a fresh machine (Python >= 3.11 with venv):
#   make demo   install pooljob in .venv, write the demo data, run configs/demo.toml
#   make test   install the test dependencies in .venv, run lint, types and the test suite
#               (on two worker processes: pytest-xdist, -n 2)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install install-test wheelhouse clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .

install-test: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'

demo: install
	$(BIN)/pooljob demo-data demo/data
	$(BIN)/pooljob run configs/demo.toml
	$(BIN)/pooljob demo-data --poll demo/poll
	$(BIN)/pooljob run configs/poll.toml

# The wheels of pooljob's dependencies and of the Docker image's extras (the ARG
# EXTRAS line of the Dockerfile), for tests/test_deployment.py, which installs
# the pooljob wheel into a clean virtual environment from them, with no network.
EXTRAS := $(shell sed -n 's/^ARG EXTRAS=//p' Dockerfile)

wheelhouse: install-test
	$(BIN)/python -m pip wheel --quiet --wheel-dir .wheelhouse 'setuptools>=68' '.[$(EXTRAS)]'
	rm -f .wheelhouse/pooljob-*.whl

test: install-test wheelhouse
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -n 2

clean:
	rm -rf $(VENV) demo build *.egg-info .wheelhouse
