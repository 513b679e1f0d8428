# Two commands for a new user: `make demo` (the main job on a synthetic sheet) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test env browser lint clean

# --no-cache-dir: the venv alone is about 6.6 GB (torch's CUDA build); a second copy of the
# registry downloads in pip's cache is not needed on a machine whose disk CI shares.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-cache-dir -e '.[test]'
	touch $(STAMP)

env: $(STAMP)

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
test: lint browser
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check scanstream tests benchmarks pipelines

clean:
	rm -rf $(VENV) demo-output
