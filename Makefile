# BigMed FHIR — run `make help` for the targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080
STAMP := $(VENV)/.installed

.PHONY: help install run serve test lint format bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the requirements

run: install ## seed the sandbox's synthetic patients (idempotent), serve it on http://$(HOST):$(PORT)/fhir (SQLite, in-process cache, open auth)
	$(BIN)/python -m server seed
	BIGMED_AUTH=$${BIGMED_AUTH:-open} $(BIN)/python -m server serve --host $(HOST) --port $(PORT) --workers 2

test: install ## run the whole test suite (PostgreSQL/Redis tests skip loudly when those servers are absent)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install ## ruff check, ruff format --check, mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install ## run the benchmarks (prints figures)
	$(BIN)/python bench/rest.py

clean: ## remove the virtualenv and local data
	rm -rf $(VENV) var
