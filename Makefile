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

.PHONY: venv sample wordnet chromium bench-data demo test bench experiment clean

venv: $(STAMP)

# The lock pins every package; --no-deps installs exactly it. img2dataset lists the Python 3.6
# `dataclasses` backport, which would shadow the standard library (and break Prefect's local
# server), so the lock leaves it out on purpose.
# Installing is unpacking, on one core per pip: the torch stack (torch, triton, CUDA's libraries,
# about 5 GB) and everything else go in side by side (no package is in both, and --no-deps
# resolves nothing), then one byte-compile on every core (pip's own compile used one). On 2
# cores: 87 s and ~45 s, where one pip with its compile took 230 s. compileall skips the only
# files that are not Python 3.11 (langid's Python 2 training scripts, a torch test helper in 3.12
# syntax), which pip would have skipped too, and the packages' own test suites (4,000 of the
# 28,700 files; nothing imports them).
TORCH_STACK := ^(torch|triton|nvidia-)
$(STAMP): requirements.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	grep -E '$(TORCH_STACK)' requirements.lock >$(VENV)/lock-torch.txt
	grep -vE '$(TORCH_STACK)' requirements.lock >$(VENV)/lock-rest.txt
	{ $(BIN)/pip install --quiet --no-deps --no-compile -r $(VENV)/lock-torch.txt 2>$(VENV)/pip-torch.log & torch=$$!; \
	  $(BIN)/pip install --quiet --no-deps --no-compile -r $(VENV)/lock-rest.txt 2>$(VENV)/pip.log; rest=$$?; \
	  wait $$torch && test $$rest -eq 0; } || { cat $(VENV)/pip-torch.log $(VENV)/pip.log; exit 1; }
	$(BIN)/python -m compileall -q -j 0 -x '/langid/train/|/torch/testing/_internal/py312_intrinsics|/site-packages/[^/]+/(.+/)?tests/' $(VENV)/lib/python3.11/site-packages \
		>$(VENV)/compile.log || { cat $(VENV)/compile.log; exit 1; }
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e . 2>>$(VENV)/pip.log || { cat $(VENV)/pip.log; exit 1; }
	@touch $@

# Debian packages, installed one apt at a time: `make test` sets up the venv, the sample, WordNet
# and Chromium side by side (make -j), and apt takes one lock.
APT_INSTALL = flock /tmp/foil-apt.lock sh -c 'apt-get update -qq && apt-get install -y -qq "$$@"' apt-install

# npm fetches the emoji sample once; install it from Debian if the machine has none.
sample: venv
	@command -v npm >/dev/null || $(APT_INSTALL) npm
	$(BIN)/foil fetch-sample

# WordNet for the text negatives, from Debian (NLTK reads these files; nothing is downloaded at run time).
wordnet:
	@test -f /usr/share/wordnet/data.noun -a -f /usr/share/wordnet/index.sense || \
		$(APT_INSTALL) wordnet-base=1:3.0-37 wordnet-sense-index=1:3.0-37

# Headless Chromium for the report's browser test (tests/pipeline/test_report_html.py), from Debian.
CHROMIUM_VERSION ?= 156.0.8078.114-1~deb12u1
chromium:
	@command -v chromium >/dev/null || \
		$(APT_INSTALL) chromium=$(CHROMIUM_VERSION)

# Caption sets no one here wrote, for tests/benchmarks/negatives.py (~185 MB from Debian).
bench-data:
	@test -d /usr/share/tuxpaint/stamps -a -d /usr/share/openclipart/svg || \
		$(APT_INSTALL) tuxpaint-stamps-default openclipart-svg

demo: sample wordnet
	$(BIN)/foil demo --out $(DEMO_OUT)

# The set-up steps run side by side: apt (WordNet, Chromium: ~30 s) while pip fills the venv.
test:
	@$(MAKE) --no-print-directory -j3 sample wordnet chromium
	$(BIN)/python -m pytest -q --durations=30 tests

bench: sample wordnet bench-data
	@for b in tests/benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# Issue 16's experiment: every arm (plain, text negatives, text + mined image negatives) for both
# models with 3 seeds, trained on the demo's data and scored on held-out Twemoji minimal pairs;
# writes docs/experiment.md and docs/experiment.png. Finished runs are kept under
# ~/.cache/foil/experiment and reused by a rerun.
experiment: sample wordnet
	$(BIN)/python tests/benchmarks/experiment.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
