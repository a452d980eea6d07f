# Two entry points: `make run` (set up, then the main job on the default workload) and `make test`.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
FASHION_DIR := /usr/share/datasets/fashion-mnist
CHROMIUM := /usr/bin/chromium
ARGS ?= --budget 0.5
# The pip install and the apt installs (data, then Chromium: apt takes one lock) run side by side.
MAKEFLAGS += -j3

.PHONY: setup setup-dev data browser run test clean

# The main job needs the package alone; the tests add the dev extra (pytest, ruff, Ray's jobs CLI, Playwright).
setup: $(VENV)/.installed
setup-dev: $(VENV)/.installed-dev

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# Fashion-MNIST from Debian's package where apt-get is available: as root, or through sudo only when it needs no
# password (never a prompt in CI); otherwise say how, and the run can take --data-dir instead.
data:
	@if [ ! -f $(FASHION_DIR)/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else \
			echo "note: Fashion-MNIST is missing; install it with 'sudo apt-get install dataset-fashion-mnist' or pass --data-dir to search.run"; \
			exit 0; fi; \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null \
		|| echo "warning: could not install dataset-fashion-mnist; pass --data-dir to search.run"; \
	fi

# Chromium from Debian's package, for tests/test_report_browser.py (Playwright drives it; its own browser download
# is not used): as root, or through sudo only when it needs no password; otherwise that test is skipped, saying why.
browser: data
	@if [ -x $(CHROMIUM) ]; then exit 0; fi; \
	NOTE="note: $(CHROMIUM) is missing, so the browser test is skipped; install Debian's chromium package"; \
	if ! command -v apt-get >/dev/null 2>&1; then echo "$$NOTE"; exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else \
		echo "$$NOTE ('sudo apt-get install chromium')"; exit 0; fi; \
	$$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
	|| echo "warning: could not install chromium; the browser test is skipped"

run: setup data
	$(PY) -m search.run $(ARGS)

test: setup-dev data browser
	$(PY) -m ruff check .
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
