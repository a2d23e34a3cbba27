# Two entry points (see README): `make demo` and `make test`. Both bootstrap .venv from scratch.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.args_fast-installed
PROMPT ?= How can I make my mornings less stressful?

.PHONY: install demo test bench clean

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml setup.py $(wildcard CMakeLists.txt csrc/*)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements-nodeps.txt
	$(BIN)/python -m pip install -q --no-build-isolation --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/args-fast generate --prompt "$(PROMPT)" --max-new-tokens 64

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

# results go to $(BENCH_OUT) (bench_cpu_step.md / .json), never into tracked files; ARGS_FAST_BENCH_GRID=quick|default|full
BENCH_OUT ?= /tmp/args_fast_bench
bench: $(STAMP)
	mkdir -p $(BENCH_OUT)
	ARGS_FAST_BENCH_OUT=$(BENCH_OUT) $(BIN)/python -m pytest -q benchmarks/bench_cpu_step.py --benchmark-only \
		--benchmark-columns=median,rounds --benchmark-json=$(BENCH_OUT)/pytest-benchmark.json

clean:
	rm -rf $(VENV) build *.egg-info
