# The one entry point. `make help` lists every target. Ports: stack.env.
SHELL := /bin/bash
.DEFAULT_GOAL := help
ROOT := $(abspath .)
include stack.env
export
VENV := $(ROOT)/.venv
PY := $(VENV)/bin/python
CACHE := $(ROOT)/.cache
SETUP_STAMP := $(VENV)/.setup-done

##@ Set-up
.PHONY: help
help: ## List every target with one line each
	@awk 'BEGIN{FS=":.*## "} /^##@/{printf "\n%s\n", substr($$0,5)} /^[a-zA-Z0-9_.-]+:.*## /{printf "  %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: setup
setup: $(SETUP_STAMP) ## Create .venv with every pinned Python dependency (idempotent)
$(SETUP_STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel setuptools
	$(PY) -m pip install -q -e .
	touch $@

##@ Main job
.PHONY: demo
demo: setup models up ## Set up, build the archives, start the stack, classify sample photos (or IMAGES=DIR)
	$(PY) -m demo.classify $(if $(IMAGES),--images "$(IMAGES)")
	$(DEMO_STREAM)

include $(sort $(wildcard mk/*.mk))

# After the includes, so every mk file's TEST_PREREQS (tool and jar fetches) is known here.
##@ Quality
.PHONY: test
test: $(SETUP_STAMP) models $(TEST_PREREQS) ## Install what the tests need, then run every test (starts and stops real services)
	$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: lint
lint: $(SETUP_STAMP) ## ruff check of the whole project
	$(PY) -m ruff check .

.PHONY: clean
clean: down ## Remove built archives and run state (keeps .venv and .cache)
	rm -rf model-archive/build .run
