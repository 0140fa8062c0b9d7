# `make reproduce`: set up and run the main job (the quick study on Fashion-MNIST).
# `make test`: set up and run the test suite.
# `make test-fast`: the tests not marked slow (no real training, no extra processes): under a minute.
.PHONY: setup reproduce test test-fast bench

setup:
	@bash scripts/setup.sh

reproduce: setup
	.venv/bin/spatialmix reproduce $(ARGS)

test: setup
	.venv/bin/python -m pytest -q $(ARGS)

test-fast: setup
	.venv/bin/python -m pytest -q -m "not slow" $(ARGS)

bench: setup
	.venv/bin/python benchmarks/train_throughput.py
