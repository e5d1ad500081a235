# foil: two set-up commands, `make demo` and `make test`. Each creates the virtual environment
# and fetches the sample data if they are missing, and reuses them when present.

PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.foil-installed
DEMO_OUT ?= foil-demo
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export HF_HUB_OFFLINE ?= 1
export NO_ALBUMENTATIONS_UPDATE ?= 1

.PHONY: venv sample demo test bench clean

venv: $(STAMP)

# The lock pins every package; --no-deps installs exactly it. img2dataset lists the Python 3.6
# `dataclasses` backport, which would shadow the standard library (and break Prefect's local
# server), so the lock leaves it out on purpose.
$(STAMP): requirements.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-deps -r requirements.lock 2>$(VENV)/pip.log || { cat $(VENV)/pip.log; exit 1; }
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e . 2>>$(VENV)/pip.log || { cat $(VENV)/pip.log; exit 1; }
	@touch $@

# npm fetches the emoji sample once; install it from Debian if the machine has none.
sample: venv
	@command -v npm >/dev/null || { apt-get update -qq && apt-get install -y -qq npm; }
	$(BIN)/foil fetch-sample

demo: sample
	$(BIN)/foil demo --out $(DEMO_OUT)

test: sample
	$(BIN)/python -m pytest -q tests

bench: sample
	@for b in tests/benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
