PY := .venv/bin/python
VENV_STAMP := .venv/.installed

.PHONY: install test test-fast test-min test-timm demo kernel bench gpu-check clean

install: $(VENV_STAMP)

# torch goes in first and pinned: on these machines 2.13.0 is a local CPU build, while an
# unpinned torch would pull a multi-GB CUDA build. The trackers come too: their tests run here,
# while test-min below leaves them out (they are optional and have no minimum of their own).
$(VENV_STAMP): setup.py pyproject.toml freesound/versions.py
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,tracking]'
	touch $(VENV_STAMP)

# On every CPU (pytest-xdist, -n auto: tests/conftest.py caps it); tests that share a fixture of
# their module stay on one worker (loadgroup), so it is built once.
XDIST := -n auto --dist loadgroup

test: install
	$(PY) -m pytest -q $(XDIST)

# Skips the end-to-end tests marked slow.
test-fast: install
	$(PY) -m pytest -q $(XDIST) -m "not slow"

# The kernel tests and a fast part of the suite again, in a fresh environment holding exactly the
# minimum versions of freesound/versions.py (torch: the one local build). Rebuilt every run, so a
# missing install step shows. The slowest checks that compare torch with itself (the Tagger's
# batch sizes, an exact resume) are left to `make test`.
MIN_VENV := .venv-min
MIN_TESTS := tests/test_kernel.py tests/test_versions.py tests/test_presets.py tests/test_architecture.py \
	tests/test_audio.py tests/test_speed_equivalence.py tests/test_features.py tests/test_data.py tests/test_synth.py \
	tests/test_metrics.py tests/test_predict.py tests/test_train.py tests/test_reliability.py

test-min:
	rm -rf $(MIN_VENV)
	python3 -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install -q --no-compile torch==2.13.0
	python3 -c 'import runpy; print(runpy.run_path("freesound/versions.py")["constraints"](), end="")' > $(MIN_VENV)/constraints.txt
	$(MIN_VENV)/bin/python -m pip install -q --no-compile -c $(MIN_VENV)/constraints.txt -e '.[dev]'
	$(MIN_VENV)/bin/python -c 'from freesound import versions as v; print("minimum versions:", v.describe(v.installed_versions(v.MINIMUM)))'
	$(MIN_VENV)/bin/python -m pytest -q -p no:cacheprovider $(XDIST) -m "not slow" -k "not tagger_full_batches and not reproducible" $(MIN_TESTS)

# The timm backbones (pip install 'freesound[timm]'), in a fresh environment of their own, rebuilt
# every run: timm needs a torchvision that matches torch exactly, and none matches the local
# torch 2.13.0 build, so this one holds torch 2.14.1 and torchvision 0.29.1 (both on local disk
# here), and timm at its tested minimum (freesound/versions.py's TIMM). It runs every test marked
# timm, then the fast kernel and version tests under this newer torch (Kaggle's images move on
# too); FREESOUND_REQUIRE_TIMM=1 turns a test skipped for want of
# timm into a failure (tests/conftest.py), so this target cannot pass by skipping.
# `make test-timm TIMM_VENV=/tmp/other` builds it elsewhere. About 11 minutes on 2 busy vCPUs.
TIMM_VENV := .venv-timm
TIMM_TORCH := torch==2.14.1 torchvision==0.29.1
TIMM_TESTS := tests/test_kernel.py tests/test_versions.py

test-timm:
	rm -rf $(TIMM_VENV)
	python3 -m venv $(TIMM_VENV)
	$(TIMM_VENV)/bin/python -m pip install -q --no-compile $(TIMM_TORCH)
	python3 -c 'import runpy; print("timm==" + runpy.run_path("freesound/versions.py")["TIMM"])' > $(TIMM_VENV)/constraints.txt
	$(TIMM_VENV)/bin/python -m pip install -q --no-compile -c $(TIMM_VENV)/constraints.txt -e '.[dev,timm,onnx]'
	$(TIMM_VENV)/bin/python -c 'from freesound import versions as v; print("timm environment:", v.describe(v.installed_versions(["torch", "torchvision", "timm", "onnxruntime"])))'
	FREESOUND_REQUIRE_TIMM=1 $(TIMM_VENV)/bin/python -m pytest -q -p no:cacheprovider -m timm
	FREESOUND_REQUIRE_TIMM=1 $(TIMM_VENV)/bin/python -m pytest -q -p no:cacheprovider -m "not slow and not timm" $(TIMM_TESTS)

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
	rm -rf .venv $(MIN_VENV) $(TIMM_VENV) build *.egg-info .pytest_cache
