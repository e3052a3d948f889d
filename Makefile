# The two commands of the README: `make demo` (main job) and `make test`.
# Both create or reuse .venv and install idempotently (tools/install.sh).
PY := .venv/bin/python
DEMO_WORK_DIR := work_dirs/demo
DEMO_SEEDS ?= 0

.PHONY: install demo test lint clean-demo

install:
	bash tools/install.sh

# Transfer of the shipped pre-trained ViT (checkpoints/demo/) on the mini
# VTAB-1k, every method side by side; `make demo DEMO_SEEDS="0 1 2"` for the
# README's table.
demo: install
	bash tools/misc/install_fashion_mnist.sh
	$(PY) tools/misc/transfer_demo.py --seeds $(DEMO_SEEDS) --work-dir $(DEMO_WORK_DIR)

test: install
	.venv/bin/pytest -q tests

lint: install
	.venv/bin/ruff check mmdtl tools tests configs

clean-demo:
	rm -rf $(DEMO_WORK_DIR)
