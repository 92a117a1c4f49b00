PY := .venv/bin/python
VENV_STAMP := .venv/.installed

.PHONY: install test test-fast demo kernel bench gpu-check clean

install: $(VENV_STAMP)

# torch goes in first and pinned: on these machines 2.13.0 is a local CPU build, while an
# unpinned torch would pull a multi-GB CUDA build.
$(VENV_STAMP): setup.py
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(VENV_STAMP)

test: install
	$(PY) -m pytest -q

# Skips the end-to-end tests marked slow.
test-fast: install
	$(PY) -m pytest -q -m "not slow"

demo: install
	$(PY) -m freesound demo

kernel: install
	$(PY) build_kernel.py

bench: install
	$(PY) benchmarks/bench_frontend.py
	$(PY) benchmarks/bench_inference.py
	$(PY) benchmarks/bench_train.py

# The CUDA-only tests and the GPU measurements; says "no GPU: skipped" without a GPU.
gpu-check: install
	$(PY) benchmarks/gpu_check.py

clean:
	rm -rf .venv build *.egg-info .pytest_cache
