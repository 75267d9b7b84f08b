# Two entry points (see README.md):  make train   and   make test
# Both create or refresh a local virtual environment in .venv with pinned dependencies.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
CONFIG ?= configs/quickstart.yaml
OUT ?= runs/quickstart

.PHONY: train test bench docs lock venv pfhedge-venv

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock -e '.[test]'
	touch $(STAMP)

train: $(STAMP)
	$(VENV)/bin/deephedge train $(CONFIG) --out $(OUT)

# Two test processes, a test file each (pytest-xdist): the suite is mostly single-threaded tracing and
# small-batch steps, so on CI's two cores it finishes in ~0.7x the time of one process.
test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile

# The API reference, generated from the docstrings into docs/api/ (open docs/api/index.html).
docs: $(STAMP)
	$(PY) -m deephedge_tf.docs docs/api

bench: $(STAMP)
	$(PY) benchmarks/bench_market.py --write BENCHMARKS.md

# pfhedge side by side (benchmarks/vs_pfhedge.py): a venv of its own, as pfhedge pins numpy < 2.
pfhedge-venv:
	test -x .venv-pfhedge/bin/python || $(PYTHON) -m venv .venv-pfhedge
	.venv-pfhedge/bin/python -m pip install --quiet -r benchmarks/pfhedge/requirements.txt

# Re-pin the full environment from the current venv (after changing setup.cfg pins).
lock: $(STAMP)
	{ echo '# Full pinned environment (Python 3.11, Linux x86_64) tested with deephedge_tf; used as pip constraints by the Makefile.'; \
	  echo '# Refresh: make lock'; \
	  $(PY) -m pip freeze --exclude-editable | grep -v -i '^deephedge'; } > requirements.lock
