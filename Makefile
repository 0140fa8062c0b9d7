# `make reproduce`: set up and run the main job (the quick study on Fashion-MNIST).
# `make test`: set up and run the test suite.
# `make test-fast`: the tests not marked slow (no real training, no extra processes): under a minute.
# `make lint`: ruff (lint and format) and the architecture contracts (import-linter); part of `make test`.
# `make docs`: the documentation site (mkdocs-material) into site/; any warning (a broken link, a page
# left out of the nav, a docstring mkdocstrings cannot read) fails it. Part of `make test`.
# `make publish RUN=runs/standard`: a finished study folder into results/, then every published table
#  of README.md and docs/ rendered from results/ (default RUN=runs/reproduce).
.PHONY: setup reproduce test test-fast lint docs bench publish render-docs

RUN ?= runs/reproduce

setup:
	@bash scripts/setup.sh

reproduce: setup
	.venv/bin/spatialmix reproduce $(ARGS)

publish: setup
	.venv/bin/spatialmix publish $(RUN) $(ARGS)
	.venv/bin/spatialmix render-docs

render-docs: setup
	.venv/bin/spatialmix render-docs $(ARGS)

test: setup lint docs
	.venv/bin/python -m pytest -q $(ARGS)

lint: setup
	.venv/bin/ruff check src tests benchmarks scripts
	.venv/bin/ruff format --check src tests benchmarks scripts
	.venv/bin/lint-imports

docs: setup
	NO_MKDOCS_2_WARNING=1 .venv-docs/bin/mkdocs build --strict

test-fast: setup
	.venv/bin/python -m pytest -q -m "not slow" $(ARGS)

bench: setup
	.venv/bin/python benchmarks/train_throughput.py
