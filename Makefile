# softsae_jax: `make test` runs the fast tier of the suite (pytest -m "not slow", docstring examples
# included; a few minutes on a 2-core CPU), `make test-all` runs everything including the end-to-end
# trainings, kill/resume and bench tests (what CI runs), `make demo` the whole
# export -> train -> eval -> report chain.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed-dev
BRIDGE := $(VENV)/.installed-bridge

.PHONY: test test-all venv demo clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Install a CPU build of torch first when one is available from the package index (torch==2.13.0),
# so the bridge extra's torch>=2.4 is already met and pip does not pull a multi-GB CUDA build; where
# that version is not available the extra's own torch requirement is resolved as usual.
$(BRIDGE): pyproject.toml | $(PY)
	$(PIP) install -q torch==2.13.0 || true
	$(PIP) install -q -e '.[bridge]'
	touch $(BRIDGE)

demo: $(BRIDGE)
	$(PY) scripts/demo.py

# pytest's exit status (5 when no test was collected) is make's: both tiers fail on it.
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf runs .pytest_cache
