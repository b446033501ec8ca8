# The two commands of the README: `make run` and `make test`. Targets are one line each.
.PHONY: run test lint format install
.PHONY: bench bench-quick screenshots

install: ; bash infra/dev/bootstrap.sh
run: install ; .venv/bin/sitefleet dev run
test: install ; .venv/bin/pytest
lint: install ; .venv/bin/ruff check . && .venv/bin/ruff format --check .
format: install ; .venv/bin/ruff format . && .venv/bin/ruff check --fix .
bench: install ; bash bench/bootstrap.sh && .venv/bin/python -m bench
bench-quick: install ; bash bench/bootstrap.sh && .venv/bin/python -m bench --quick
screenshots: install ; .venv/bin/python infra/dev/screenshots.py
