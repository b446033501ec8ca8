# The two commands of the README: `make run` and `make test`. Targets are one line each.
.PHONY: run test lint format install

install: ; bash infra/dev/bootstrap.sh
run: install ; .venv/bin/sitefleet dev run
test: install ; .venv/bin/pytest
lint: install ; .venv/bin/ruff check . && .venv/bin/ruff format --check .
format: install ; .venv/bin/ruff format . && .venv/bin/ruff check --fix .
