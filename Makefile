# Quick start: `make demo` (offline pipeline on scikit-learn's digits) and `make test`.
# Both create .venv and install the pinned dependencies on first use.
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
PYTHON ?= python3
# Stages run as `python3 -m stages.<name>`: put the venv first so DVC finds its python3.
export PATH := $(BIN):$(PATH)

# Offline demo: bundled digits, random-init VGG16. With random weights there is nothing pretrained
# to preserve, so fine-tuning starts earlier (block4) at a higher lr; chosen by measurement
# (benchmarks/RESULTS.md, "Choosing the offline demo's settings").
DEMO_PARAMS := -S data.dataset=digits -S backbone.weights=none \
               -S finetune.unfreeze_from=block4_conv1 -S lr=1e-4
# More overrides for one call, e.g. make demo DEMO_EXTRA="-S train.epochs=3"
DEMO_EXTRA ?=
# `dvc`, minus the "No file hash info found" warning a first `dvc exp run` prints once per output
# (no dvc.lock yet, so nothing to restore): tlpipe/outputs/dvcrun.py.
DVC := $(BIN)/python -m tlpipe.outputs.dvcrun
# setuptools announces an editable install with a warning ("Editable installation. ... be careful
# with folders in your working directory with the same name as your package"): nothing to act on.
QUIET_EDITABLE := PYTHONWARNINGS="ignore:Editable installation"

.PHONY: install demo demo-params test lint format schema plots-page docs docs-serve clean
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(QUIET_EDITABLE) $(BIN)/python -m pip install --quiet -e '.[dev,docs]'
	touch $@

demo: install
	@echo "dvc exp run $(strip $(DEMO_PARAMS) $(DEMO_EXTRA))"
	@$(DVC) exp run $(DEMO_PARAMS) $(DEMO_EXTRA)
	dvc metrics show metrics/evaluate.json

# The demo's overrides, for what runs the same configuration (`tlpipe review`).
demo-params:
	@echo $(DEMO_PARAMS)

# The tests also need the `cluster` extra (Ray, for tests/test_cluster.py); the demo does not.
$(VENV)/.installed-cluster: $(VENV)/.installed
	$(QUIET_EDITABLE) $(BIN)/python -m pip install --quiet -e '.[dev,docs,cluster]'
	touch $@

# Test files run on TEST_WORKERS pytest-xdist workers, one whole file per worker at a time
# (--dist loadfile), so each file's module fixtures are built once. Much of a test's time is
# single-threaded (start-up, DVC, subprocesses), so two workers overlap well on two cores.
TEST_WORKERS ?= 2
test: install $(VENV)/.installed-cluster lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

# ruff (settings in pyproject.toml): lint and formatting are checked before every test run.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# params.schema.json, the JSON Schema of params.yaml that editors read, from tlpipe/core/params.py.
schema: install
	$(BIN)/python -c "from tlpipe.core.params import write_schema; write_schema()"

# .dvc/plots/page.html, the plots page with Vega inlined, from the npm packages pinned in
# .dvc/plots/build_page.py (needs npm and the registry).
plots-page:
	$(PYTHON) .dvc/plots/build_page.py

# The documentation site (MkDocs, Material theme; the `docs` extra), built offline into site/.
# NO_MKDOCS_2_WARNING: Material 9.8 prints an end-of-life banner on every build otherwise.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

clean:
	rm -rf $(VENV) .pytest_cache site
