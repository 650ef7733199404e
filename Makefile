.PHONY: setup demo simulate test lint bench

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/der-gateway demo

simulate: setup
	.venv/bin/der-gateway simulate --site examples/site.toml

test: setup
	.venv/bin/ruff check .
	.venv/bin/python -m pytest -q

lint: setup
	.venv/bin/ruff check .

bench: setup
	.venv/bin/python benchmarks/latency.py --devices 10 100
	.venv/bin/python benchmarks/replay.py --messages 10000
