# Set-up and entry points. `make test` and `make demo` install what they need first.
SHELL   := /bin/bash
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
STAMP   := $(VENV)/.installed
APT_PKGS := espeak-ng libsndfile1 sox

.PHONY: install system-deps lint test test-slow test-all demo bench clean

install: $(STAMP)

# Debian packages: installed when we are root with apt, otherwise the exact command is printed.
system-deps:
	@missing=""; \
	command -v espeak-ng >/dev/null || missing="$$missing espeak-ng"; \
	command -v sox >/dev/null || missing="$$missing sox"; \
	ldconfig -p 2>/dev/null | grep -q libsndfile.so || missing="$$missing libsndfile1"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing system packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PKGS) >/dev/null; \
	  else \
	    echo "missing system packages:$$missing"; \
	    echo "run: sudo apt-get install -y $(APT_PKGS)"; exit 1; \
	  fi; \
	fi

# The venv is rebuilt only when setup.py changes. pip 24.2: newer pips refuse
# espnet's dependency ci_sdr (a direct-URL requirement in one of its extras).
$(STAMP): setup.py | system-deps
	@$(PYTHON) -c 'import sys; assert (3, 10) <= sys.version_info[:2] <= (3, 12), "need Python 3.10-3.12, got " + sys.version' 
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q "pip==24.2" "setuptools<74" wheel
	$(PIP) install -q --progress-bar off -e ".[test]"
	@touch $(STAMP)

# Lint first (ruff.toml): a quick failure before the long pytest run.
lint: install
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q -m "not slow" --timeout 900

test-slow: install
	$(PY) -m pytest -q -m slow --timeout 3600

test-all: install
	$(PY) -m pytest -q --timeout 3600

# The synthetic demo: data, FaST-VGS, speech-guided MIM and VG-HuBERT(M), one table in
# egs/synthetic/vgs1/exp/RESULTS.md. DEMO_OPTS go to run.sh, e.g. DEMO_OPTS="--stage 5".
DEMO_OPTS ?=
demo: install
	cd egs/synthetic/vgs1 && PATH="$(abspath $(VENV))/bin:$$PATH" ./run.sh $(DEMO_OPTS)

bench: install
	$(PY) benchmarks/retrieval_speed.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
