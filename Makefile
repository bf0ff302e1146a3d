PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test demo bench results clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

test: venv
	$(PY) -m pytest -q tests

demo: venv
	$(PY) experiments/demo.py

bench: venv
	$(PY) experiments/bench_analytic.py

results: venv
	$(PY) experiments/conversion_table.py

clean:
	rm -rf $(VENV) build *.egg-info
