.PHONY: help install lint test bench check demo

help:  ## list targets
	@grep -E '^[a-z]+:.*##' Makefile | sed 's/:.*##/\t/'

install:  ## editable install with the dev tools
	pip install -e '.[dev]'

lint:  ## ruff and mypy
	ruff check .
	mypy

test:  ## the default test suite (no timings)
	pytest -q

bench:  ## benchmarks with ratios against raw Parquet / ArrayRecord baselines
	pytest benchmarks --benchmark-enable -p no:cacheprovider -q

demo:  ## build the demo catalog
	spacesql demo

check: lint test  ## what CI runs
