# Quick start: `make demo` runs the pipeline, `make test` runs the tests; both install what they need.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.npukit-installed
# The torch release the test suite is run against (a CPU wheel is cached on the project machines).
TORCH  ?= torch==2.13.0

.PHONY: install demo test test-all lint bench clean arm-tools

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]" "$(TORCH)"
	$(PY) -c "import pathlib; pathlib.Path('$(STAMP)').touch()"

demo: $(STAMP) arm-tools
	$(PY) -m npukit demo

test: $(STAMP) arm-tools
	$(PY) -m pytest -q -m "not slow"

# The Cortex-M tests need Debian's gcc-arm-none-eabi and qemu-system-arm; installed when apt can.
arm-tools:
	bash scripts/install-arm-tools.sh

test-all: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check npukit tests benchmarks

bench: $(STAMP) arm-tools
	$(PY) benchmarks/qat_overhead.py
	$(PY) benchmarks/memplan.py
	$(PY) benchmarks/pack_size.py
	$(PY) benchmarks/engine_throughput.py
	$(PY) benchmarks/c_kernels.py
	$(PY) benchmarks/cortex_m_instructions.py
	$(PY) benchmarks/runtime_size.py
	$(PY) benchmarks/startup.py

clean:
	$(PY) -c "import shutil; [shutil.rmtree(p, True) for p in ('$(VENV)', 'npukit-out', '.pytest_cache')]"
