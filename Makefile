# Two entry points: `make demo` and `make test`. Each builds .venv itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all bench clean iverilog

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/intvit accuracy

iverilog:
	@command -v iverilog >/dev/null || (apt-get update && apt-get install -y iverilog)

test: $(STAMP) iverilog
	$(BIN)/python -m pytest -n 2 -q

test-all: $(STAMP) iverilog
	$(BIN)/python -m pytest -n 2 -q -m ''

bench: $(STAMP)
	$(BIN)/python benchmarks/executor.py
	$(BIN)/python benchmarks/simulator.py
	$(BIN)/python benchmarks/scalesim_speed.py --layers 3 --dataflow os

clean:
	rm -rf $(VENV) build .pytest_cache
