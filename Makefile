# The two commands of the README: `make demo` (main job) and `make test`.
# Both create or reuse .venv and install idempotently (tools/install.sh).
PY := .venv/bin/python
DEMO_WORK_DIR := work_dirs/demo
DEMO_SEEDS ?= 0

DENSE_WORK_DIR := work_dirs/dense_demo

.PHONY: install demo demo-dense test lint clean-demo

install:
	bash tools/install.sh

# Transfer of the shipped pre-trained ViT (checkpoints/demo/) on the mini
# VTAB-1k, every method side by side; `make demo DEMO_SEEDS="0 1 2"` for the
# README's table.
demo: install
	bash tools/misc/install_fashion_mnist.sh
	$(PY) tools/misc/transfer_demo.py --seeds $(DEMO_SEEDS) --work-dir $(DEMO_WORK_DIR)

# Detection (bbox mAP) and segmentation (mIoU) on scenes of real pixels, from
# the same shipped ViT, every method side by side; `make demo-dense
# DEMO_SEEDS="0 1 2"` for the docs' table (docs/dense_benchmark.md).
demo-dense: install
	bash tools/misc/install_fashion_mnist.sh
	$(PY) tools/misc/dense_demo.py --seeds $(DEMO_SEEDS) --work-dir $(DENSE_WORK_DIR)

test: install
	.venv/bin/pytest -q tests

lint: install
	.venv/bin/ruff check mmdtl tools tests configs

clean-demo:
	rm -rf $(DEMO_WORK_DIR) $(DENSE_WORK_DIR)
