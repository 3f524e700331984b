# `make demo` and `make test` each set up everything they need from a bare Python 3.11+.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= out

.PHONY: setup demo test lint clean system-deps

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "cnntool needs Python 3.11 or newer, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,ray,onnx]'
	touch $@

demo: setup
	mkdir -p $(OUT)
	$(BIN)/cnntool train models/seed_cnn.json --data mnist-sample --epochs 5 --out $(OUT)/seed.cnnb
	$(BIN)/cnntool inspect $(OUT)/seed.cnnb
	$(BIN)/cnntool infer $(OUT)/seed.cnnb models/digits/digit_2.png models/digits/digit_7.png models/digits/digit_9.png models/digits/photo_7.png

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

# Debian packages listed in .ci/debian-packages (needs root and apt-get).
system-deps:
	@pkgs="$$(grep -v '^#' .ci/debian-packages | tr '\n' ' ')"; \
	if [ -z "$$(echo $$pkgs | tr -d ' ')" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$pkgs; \
	else \
		echo "system-deps: run as root on Debian to install: $$pkgs (the tests needing them are skipped)"; \
	fi

clean:
	rm -rf $(OUT) .pytest_cache .ruff_cache .hypothesis
