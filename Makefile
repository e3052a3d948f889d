# The two commands of the README: `make demo` (main job) and `make test`.
# Both create or reuse .venv and install idempotently (tools/install.sh).
PY := .venv/bin/python
DEMO_CONFIG := configs/dtl/vit-demo_digits.py
DEMO_WORK_DIR := work_dirs/demo

.PHONY: install demo test lint clean-demo

install:
	bash tools/install.sh

demo: install
	$(PY) tools/misc/make_digits_vtab.py --root data/digits-vtab
	$(PY) tools/train.py $(DEMO_CONFIG) --work-dir $(DEMO_WORK_DIR)
	$(PY) tools/test.py $(DEMO_CONFIG) $(DEMO_WORK_DIR)/epoch_15.pth --work-dir $(DEMO_WORK_DIR)

test: install
	.venv/bin/pytest -q tests

lint: install
	.venv/bin/ruff check mmdtl tools tests configs

clean-demo:
	rm -rf $(DEMO_WORK_DIR)
