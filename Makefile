# The two commands of the README: `make run` (the default sweep) and `make test`; `make install`
# only creates .venv/ with the `localist` command. All create .venv/ on first use, after checking
# that $(PYTHON) is >= 3.10 and can make virtual environments (Debian/Ubuntu: python3-venv). Without an NVIDIA GPU the CPU build of torch 2.13.0 is
# installed first (an unpinned torch would pull a multi-GB CUDA build); with one, pip's normal
# resolution gives a CUDA torch.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check
CPU_TORCH := torch==2.13.0
# TORCH=auto: the CPU wheel where no nvidia-smi is found, pip's normal (CUDA) torch elsewhere;
# TORCH=cuda: pip's normal torch here too (a GPU-less login node preparing a GPU cluster's .venv);
# TORCH=cpu: the CPU wheel even beside a GPU.
TORCH  ?= auto
SWEEP  ?= sweeps/quick.yaml

.PHONY: run test install install-test bench clean clean-results

# Debian and Ubuntu ship Python's venv/ensurepip in a separate package; say so instead of failing obscurely.
NO_VENV := echo "error: '$(PYTHON)' cannot create a virtual environment with pip (venv/ensurepip missing)."; \
  echo "       On Debian/Ubuntu: sudo apt install python3-venv (or python3.X-venv matching '$(PYTHON) --version');"; \
  echo "       elsewhere install your distribution's package for Python's venv module, then run make again."

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null || { \
	  echo "error: localist needs Python >= 3.10; '$(PYTHON)' gives: $$($(PYTHON) --version 2>&1)"; \
	  echo "       Install a newer Python and name it: make PYTHON=python3.12 ..."; exit 1; }
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { $(NO_VENV); exit 1; }
	@echo "$(PYTHON) -m venv $(VENV)"; $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); $(NO_VENV); exit 1; }

$(VENV)/.base: pyproject.toml | $(VENV)/bin/python
	@if [ "$(TORCH)" = cpu ] || { [ "$(TORCH)" = auto ] && ! command -v nvidia-smi >/dev/null 2>&1; }; then \
	  $(PIP) "$(CPU_TORCH)"; fi
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
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

bench: $(VENV)/.base
	$(PY) -m benchmarks $(BENCH_ARGS)

# `clean` never touches results (the SLURM template and `make run` keep sweeps in ./results).
clean:
	rm -rf $(VENV) .pytest_cache

# Deletes every sweep under ./results: finished results, checkpoints and reports. Explicit on purpose.
clean-results:
	rm -rf results
