# arielstream — the two commands of the README:  make calibrate  and  make test
# (CONTRIBUTING.md: make lint, make test-fast, make bench)
# A virtual environment is created in .venv on first use (override with VENV=..., PYTHON=...).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= output
DATA   ?= data_samples
MEMORY ?= 2GB
BENCH_ARGS ?= --notebook-nl
STAMP  := $(VENV)/.installed

.PHONY: install calibrate test test-fast lint bench data-samples clean docs

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,dask,fast,plots,xarray]'
	touch $(STAMP)

install: $(STAMP)

## Calibrate the committed sample planets into output/data_samples.h5 and summarise it.
calibrate: $(STAMP)
	mkdir -p $(OUT)
	$(BIN)/arielstream calibrate $(DATA) --split train -o $(OUT)/data_samples.h5 --memory $(MEMORY) --force
	$(BIN)/arielstream info $(OUT)/data_samples.h5

LINTED := arielstream tests bin benchmarks examples

## Lint, then every test (the command CI runs).
test: lint
	$(BIN)/python -m pytest

## Lint, then the tests not marked slow (under two minutes on two cores).
test-fast: lint
	$(BIN)/python -m pytest -m "not slow"

## Style (ruff) and types (mypy, configured in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/mypy

## Speed and memory against the decode floors (physical and best pyarrow, per Parquet layout) and the notebook
## (many minutes; not part of make test).
bench: $(STAMP)
	$(BIN)/python -m benchmarks.bench $(BENCH_ARGS)

## Depth errors and noise of each profile against simulated truth (a few minutes; not part of make test).
.PHONY: bench-science
bench-science: $(STAMP)
	$(BIN)/python -m benchmarks.science $(SCIENCE_ARGS)

## A dask cluster on this machine (1, 2, 4 workers, parts mode) and the full archive's arithmetic (not part of make test).
.PHONY: bench-cluster
bench-cluster: $(STAMP)
	$(BIN)/python -m benchmarks.cluster $(CLUSTER_ARGS)

## Regenerate data_samples/ from the simulator (fixed seed): only when the simulator changes.
data-samples: $(STAMP)
	rm -rf $(DATA)/train $(DATA)/simulation_truth $(DATA)/*.csv $(DATA)/axis_info.parquet
	$(BIN)/arielstream simulate $(DATA) --planets 2 --scale 0.02 --seed 2025

## docs/cli.md, rendered from the parser, and BENCHMARKS.md's summary, from its sections (tests/test_docs.py checks both).
docs: $(STAMP)
	$(BIN)/python -c 'import pathlib, arielstream.cli.app as app; pathlib.Path("docs/cli.md").write_text(app.cli_reference())'
	$(BIN)/python -m benchmarks.summary

clean:
	rm -rf $(VENV) $(OUT) $(DIST) .pytest_cache .ruff_cache .mypy_cache *.egg-info

## A wheel for offline installs (a Kaggle kernel: README, examples/kaggle_calibrate.py):
## $(DIST)/arielstream-<version>-py3-none-any.whl, replacing any older one there. No network: built with the
## venv's setuptools from a temporary copy of the sources, so no build/ or *.egg-info is left here.
DIST ?= dist
WHEEL_SOURCES := arielstream setup.cfg pyproject.toml README.md LICENSE

.PHONY: wheel
wheel: $(STAMP)
	mkdir -p $(DIST)
	rm -f $(DIST)/arielstream-*.whl
	src=$$(mktemp -d) && trap 'rm -rf "$$src"' EXIT && \
	cp -R $(WHEEL_SOURCES) "$$src"/ && \
	$(BIN)/python -m pip wheel --quiet --disable-pip-version-check --no-index --no-deps --no-build-isolation \
		-w "$(abspath $(DIST))" "$$src"
	ls $(DIST)/arielstream-*.whl

## The samples' quicklook (output/quicklook/) and a headless-browser screenshot of its page (output/quicklook.png).
## Needs chromium (Debian: apt-get install chromium); skipped, saying so, without it.
CHROMIUM ?= $(shell command -v chromium || command -v chromium-browser)
.PHONY: quicklook-screenshot
quicklook-screenshot: $(STAMP)
	@if [ -z "$(CHROMIUM)" ]; then \
		echo "quicklook-screenshot: skipped: chromium not found (apt-get install chromium, or CHROMIUM=...)"; exit 0; fi; \
	set -e; mkdir -p $(OUT); \
	test -f $(OUT)/data_samples.h5 || $(BIN)/arielstream calibrate $(DATA) --split train -o $(OUT)/data_samples.h5 \
		--memory $(MEMORY) --force; \
	$(BIN)/arielstream quicklook $(OUT)/data_samples.h5 -o $(OUT)/quicklook; \
	profile=$$(mktemp -d); trap 'rm -rf "$$profile"' EXIT; \
	"$(CHROMIUM)" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
		--disable-component-update --disable-sync --user-data-dir="$$profile" --hide-scrollbars \
		--screenshot="$(abspath $(OUT))/quicklook.png" --window-size=1400,2400 \
		"file://$(abspath $(OUT))/quicklook/index.html" 2>/dev/null; \
	test -s $(OUT)/quicklook.png; echo "$(OUT)/quicklook.png: screenshot of $(OUT)/quicklook/index.html"
