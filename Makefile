PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# brian2cuda 1.0b1 needs brian2 2.10.1 and so Python >= 3.12: it lives in its own environment.
# The first python3.12 that runs (a pyenv shim may be on PATH without the version installed).
PYTHON312 ?= $(firstword $(foreach p,python3.12 $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12),\
	$(shell $(p) -c 'print("$(p)")' 2>/dev/null)))
NVCC := $(shell command -v nvcc 2>/dev/null)
VENV312 := .venv312
# pytest-xdist workers: Python-bound work (code generation, conversion) overlaps with compilation
TEST_WORKERS ?= 2

.PHONY: venv cuda-env test demo bench results clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

# Where python3.12 and nvcc exist, the tests also build cuda_standalone code (running it needs a GPU).
test: venv $(if $(and $(PYTHON312),$(NVCC)),cuda-env)
	$(PY) -m pytest -q -n $(TEST_WORKERS) tests

cuda-env: $(VENV312)/.installed

$(VENV312)/.installed: setup.cfg pyproject.toml
	@test -n "$(PYTHON312)" || { echo "cuda-env needs python3.12 (brian2cuda requires Python >= 3.12)"; exit 1; }
	test -x $(VENV312)/bin/python || $(PYTHON312) -m venv $(VENV312)
	$(VENV312)/bin/python -m pip install --quiet --upgrade pip
	$(VENV312)/bin/python -m pip install --quiet 'brian2cuda==1.0b1' nvidia-curand-cu12 pandas tqdm scipy
	$(VENV312)/bin/python -m pip install --quiet --no-deps -e .
	touch $@

demo: venv
	$(PY) experiments/demo.py

bench: venv
	$(PY) experiments/bench_analytic.py

results: venv
	$(PY) experiments/conversion_table.py

clean:
	rm -rf $(VENV) $(VENV312) build *.egg-info
