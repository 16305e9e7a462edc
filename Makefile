# arielstream — the two commands of the README:  make calibrate  and  make test
# A virtual environment is created in .venv on first use (override with VENV=..., PYTHON=...).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= output
DATA   ?= data_samples
MEMORY ?= 2GB
BENCH_ARGS ?= --notebook-nl
STAMP  := $(VENV)/.installed

.PHONY: install calibrate test lint bench data-samples clean

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

## Lint, then every test (the command CI runs).
test: $(STAMP)
	$(BIN)/ruff check arielstream tests bin
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check arielstream tests bin

## Speed and memory against the Parquet decode floor and the notebook (several minutes; not part of make test).
bench: $(STAMP)
	$(BIN)/python -m arielstream.bench $(BENCH_ARGS)

## Regenerate data_samples/ from the simulator (fixed seed): only when the simulator changes.
data-samples: $(STAMP)
	rm -rf $(DATA)/train $(DATA)/simulation_truth $(DATA)/*.csv $(DATA)/axis_info.parquet
	$(BIN)/arielstream simulate $(DATA) --planets 2 --scale 0.02 --seed 2025

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .ruff_cache *.egg-info
