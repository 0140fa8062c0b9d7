# `make reproduce`: set up and run the main job (the quick study on Fashion-MNIST).
# `make test`: set up and run the test suite.
.PHONY: setup reproduce test bench

setup:
	@bash scripts/setup.sh

reproduce: setup
	.venv/bin/spatialmix reproduce $(ARGS)

test: setup
	.venv/bin/python -m pytest -q $(ARGS)

bench: setup
	.venv/bin/python benchmarks/train_throughput.py
