.PHONY: setup demo simulate test lint bench docs-images

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/der-gateway demo

simulate: setup
	.venv/bin/der-gateway simulate --site examples/site.toml

# Three processes: the suite mostly waits on sockets and simulated devices, so two cores carry three
# (free_port gives each process its own band of ports).
test: setup
	.venv/bin/ruff check .
	.venv/bin/python -m pytest -q -n 3

lint: setup
	.venv/bin/ruff check .

bench: setup
	.venv/bin/python benchmarks/scale.py --devices 10 100 1000
	.venv/bin/python benchmarks/replay.py --messages 10000

# The README's pictures: the status page as the browser test sees it, and the demo's report (the demo
# runs in a temporary directory so that it starts from an empty store).
docs-images: setup
	DER_GATEWAY_DOCS_IMAGES=1 .venv/bin/python -m pytest -q tests/web/test_page.py
	cd "$$(mktemp -d)" && $(CURDIR)/.venv/bin/der-gateway demo --report $(CURDIR)/docs/demo-report.png
