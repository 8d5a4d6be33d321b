# Everything a fresh machine needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit bench bench-deps check-config clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python examples/run_demo.py

test: $(STAMP) lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check proxy rules billing tests examples bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/run.py

# Optional tools of `make bench` (it runs without them and says what it used instead):
# wrk and nginx from Debian (apt-get, as root), py-spy into the venv. Skipped when present.
bench-deps: $(STAMP)
	@if command -v wrk >/dev/null && PATH="$$PATH:/usr/sbin" command -v nginx >/dev/null; then \
		echo "bench-deps: wrk and nginx present"; \
	else \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light; \
	fi
	@test -x $(BIN)/py-spy || $(BIN)/pip install --quiet py-spy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
