# softsae_jax: `make test` runs the suite, `make demo` the whole export -> train -> eval -> report chain.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed-dev
BRIDGE := $(VENV)/.installed-bridge

.PHONY: test test-fast venv demo bench clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# torch==2.13.0 is a CPU build on these machines' disk; installed first, it meets the bridge extra's
# torch>=2.4 so pip never pulls a CUDA build. Elsewhere (no such file) the extra's own torch is used.
$(BRIDGE): pyproject.toml | $(PY)
	$(PIP) install -q torch==2.13.0 || true
	$(PIP) install -q -e '.[bridge]'
	touch $(BRIDGE)

demo: $(BRIDGE)
	$(PY) scripts/demo.py

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf runs .pytest_cache
