# Two commands for a new user: `make demo` (the main job on a synthetic sheet) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The light install (docs/install.md): the dependencies without torch, installed from the wheels
# saved in WHEELS at the versions of VENV; tests/test_light_install.py classifies in it.
LIGHT := .venv-light
LIGHT_STAMP := $(LIGHT)/.installed
WHEELS := .wheels
LIGHT_REQUIREMENTS := '.[onnx]' pytest

.PHONY: demo test env light browser lint clean

# --no-cache-dir: the venv alone is about 6.6 GB (torch's CUDA build); a second copy of the
# registry downloads in pip's cache is not needed on a machine whose disk CI shares. WHEELS
# (about 0.2 GB) keeps what the light install needs, so that it is built from the local disk.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-cache-dir -e '.[torch,onnx,test]'
	$(PY) -m pip freeze --exclude-editable > $(VENV)/constraints.txt
	$(PY) -m pip download --quiet --no-cache-dir --dest $(WHEELS) -c $(VENV)/constraints.txt \
		$(LIGHT_REQUIREMENTS) 'setuptools>=64' wheel
	touch $(STAMP)

env: $(STAMP)

# No index: only the saved wheels (a missing one fails here instead of reaching the network).
$(LIGHT_STAMP): $(STAMP)
	rm -rf $(LIGHT)
	$(PYTHON) -m venv $(LIGHT)
	$(LIGHT)/bin/pip install --quiet --no-index --find-links $(WHEELS) 'setuptools>=64' wheel
	$(LIGHT)/bin/pip install --quiet --no-index --find-links $(WHEELS) --no-build-isolation -e $(LIGHT_REQUIREMENTS)
	touch $(LIGHT_STAMP)

light: $(LIGHT_STAMP)

# Debian's chromium + chromium-driver for the review page's browser test (skipped when absent).
browser:
	@if ! command -v chromedriver >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
		|| echo "warning: could not install chromium; the browser test will be skipped"; \
	fi

demo: $(STAMP)
	$(PY) pipelines/overnight.py --demo

# lint first: a ruff finding fails the run before the tests start. The whole suite, slow tests
# included; `pytest -m "not slow"` is the quick loop while editing.
test: lint browser light
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check scanstream tests benchmarks pipelines

clean:
	rm -rf $(VENV) $(LIGHT) $(WHEELS) demo-output
