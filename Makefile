# The two commands of the README: `make run` (the default sweep) and `make test`.
# Both create .venv/ on first use. Without an NVIDIA GPU the CPU build of torch 2.13.0 is
# installed first (an unpinned torch would pull a multi-GB CUDA build); with one, pip's normal
# resolution gives a CUDA torch.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check
CPU_TORCH := torch==2.13.0
SWEEP  ?= sweeps/quick.yaml

.PHONY: run test install install-test bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.base: pyproject.toml | $(VENV)/bin/python
	@command -v nvidia-smi >/dev/null 2>&1 || $(PIP) "$(CPU_TORCH)"
	$(PIP) -e .
	@touch $@

$(VENV)/.test: $(VENV)/.base
	$(PIP) -e ".[test]"
	@touch $@

install: $(VENV)/.base
install-test: $(VENV)/.test

run: $(VENV)/.base
	$(VENV)/bin/localist sweep run $(SWEEP)

test: $(VENV)/.test
	RAY_AUTH_MODE=disabled $(VENV)/bin/pytest -q $(PYTEST_ARGS)

bench: $(VENV)/.base
	$(PY) -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) results .pytest_cache
