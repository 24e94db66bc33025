# Two entry points do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision are installed as a matching pair first; override for another platform,
# e.g. make test TORCH_PACKAGES="torch==2.9.1 torchvision==0.24.1"
TORCH_PACKAGES ?= torch==2.14.1 torchvision==0.29.1
# the optional extras are installed too, so the tests of export, extract --onnx and FAISS search run
# (about 60 MB of wheels, seconds); EXTRAS=dev leaves them out and those tests skip, saying why
EXTRAS ?= dev,export,search
STAMP := $(VENV)/.installed
DEMO_OUT ?= runs/demo
PYTEST_ARGS ?=

.PHONY: install demo test test-fast gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_PACKAGES)
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pfanet demo --out $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# the suite without the tests marked slow (torchrun, the demo end to end, the browser check)
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# benchmarks/gpu.py on a CUDA machine (tiny recipe end to end, torchrun with one GPU, the paper
# recipe's phases at full size; one JSON line); without CUDA it says so and exits 0
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
