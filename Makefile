# `make test` builds .venv from nothing and runs the suite; `make demo` runs the main job on this CPU.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo bench lint venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints-ci.txt
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: the CPU build of 2.13.0 is what the test machines carry (a range pulls a CUDA build).
	$(PY) -m pip install -q --disable-pip-version-check -c constraints-ci.txt torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -c constraints-ci.txt -e '.[tvm,triton,analysis,hf,dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check .

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m pytest -q tests/benchmarks --benchmark-only -p no:randomly

demo: $(STAMP)
	$(VENV)/bin/ea-ops info
	$(PY) examples/basic.py
	$(PY) examples/train_lm.py --quick
	$(VENV)/bin/ea-ops report --quick --out demo-out/report
	$(VENV)/bin/ea-ops select-order --budget 1e-3 --scale 1.0
	$(VENV)/bin/ea-ops select-order --budget 1e-3 --sigma 0.5 --json
	$(VENV)/bin/ea-ops tune --backend tvm --workloads tiny --orders 2 --trials 4 --out demo-out/records
	$(VENV)/bin/ea-ops compile --backend tvm --target cuda:sm_90 --orders 2 --out demo-out/tvm-cuda
	$(VENV)/bin/ea-ops compile --backend triton --target cuda:sm_90 --out demo-out/triton-sm90 --orders 6 --dtypes bfloat16
	$(VENV)/bin/ea-ops bench --workload demo --budget-s 4 --out demo-out/bench

clean:
	rm -rf $(VENV) build *.egg-info
