# make demo: build .venv, install, run the demo (runs/demo). make test: same set-up, then the tests.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# the CPU wheel of torch lies here on our machines; pip also finds it through pip.conf
WHEELS := $(wildcard /opt/wheels)
PIP    := $(PY) -m pip install -q $(if $(WHEELS),--find-links $(WHEELS))

.PHONY: install demo test bench bench-quick clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/metainr --verbose demo --out runs/demo

test: install
	$(PY) -m pytest

bench-quick: install
	$(PY) benchmarks/image_meta.py --quick --out runs/image_meta_quick.json

bench: install
	$(PY) benchmarks/image_meta.py --out benchmarks/results/image_meta.json

clean:
	rm -rf $(VENV) runs .pytest_cache
