# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Both create .venv and install everything they need; nothing has to be installed by hand.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision pair that installs from local files on the project's machines;
# override e.g. `make test TORCH_SPEC="torch torchvision"` elsewhere.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
FASHION_MNIST_DIR ?= /usr/share/datasets/fashion-mnist
PYTEST_ARGS ?=

.PHONY: venv data demo test lint typecheck clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[examples,test,imagenet-test,dev,benchmarks,frameworks]'
	touch $@

# Fashion-MNIST (70k real images, MIT licence) from Debian's dataset-fashion-mnist package.
data:
	@if [ ! -f "$(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz" ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get install -y -q dataset-fashion-mnist >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }; \
	  else \
	    echo "Fashion-MNIST not found in $(FASHION_MNIST_DIR); install the Debian package dataset-fashion-mnist or pass --download to the demo" >&2; exit 1; \
	  fi; \
	fi

demo: venv data
	$(BIN)/python examples/demo.py

test: venv data
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check mokd_optim tests examples benchmarks
	$(BIN)/ruff format --check mokd_optim tests examples benchmarks

typecheck: venv
	$(BIN)/mypy mokd_optim

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
