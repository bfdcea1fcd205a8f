# The one entry point. `make help` lists every target. Ports: stack.env.
SHELL := /bin/bash
.DEFAULT_GOAL := help
ROOT := $(abspath .)
# stack.env's values, each overridable by the environment (as scripts/lib.sh and handlers/stack.py read them):
# a plain `include` would let the file win over the environment.
STACK_KEYS := $(shell sed -n 's/^\([A-Z][A-Z0-9_]*\)=.*/\1/p' stack.env)
$(foreach k,$(STACK_KEYS),$(if $(filter environment,$(origin $(k))),$(eval STACK_ENV_$(k) := $(value $(k)))))
include stack.env
$(foreach k,$(STACK_KEYS),$(if $(STACK_ENV_$(k)),$(eval $(k) := $(STACK_ENV_$(k)))))
export
VENV := $(ROOT)/.venv
PY := $(VENV)/bin/python
CACHE := $(ROOT)/.cache
SETUP_STAMP := $(VENV)/.setup-done
# pip's version (also the images': scripts/images.sh TORCHSERVE_PIP); the wheel folder shared with the image builds.
PIP_PIN := pip==26.3
WHEELHOUSE ?= $(HOME)/.cache/image-moderation/wheels

##@ Set-up
.PHONY: help
help: ## List every target with one line each
	@awk 'BEGIN{FS=":.*## "} /^##@/{printf "\n%s\n", substr($$0,5)} /^[a-zA-Z0-9_.-]+:.*## /{printf "  %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# What the machine must have, checked before any work (scripts/preflight.sh): the strictest goal asked for.
PREFLIGHT_MODE := $(or $(if $(filter cluster-up cluster-deploy e2e e2e-chaos e2e-scale e2e-kserve,$(MAKECMDGOALS)),cluster),$(if \
  $(filter test,$(MAKECMDGOALS)),test),$(if $(filter demo up classify,$(MAKECMDGOALS)),demo),setup)
PHASE := scripts/phase.sh

.PHONY: preflight
preflight: ## Check up front for everything the goal needs (python3.11, Java 17, mvn, Go, root, ...); one message
	@scripts/preflight.sh $(PREFLIGHT_MODE)

.PHONY: setup
setup: preflight $(SETUP_STAMP) ## Create .venv with every pinned Python dependency (idempotent)
# The project is not a package (no `packages`): only its pinned [project] dependencies are installed
# (an editable install of nothing made setuptools print a warning box).
# The wheels come from one folder outside the clone (scripts/wheelhouse.sh: downloaded once, resumed and retried),
# then install offline: a fresh clone downloads nothing the machine already has.
$(SETUP_STAMP): pyproject.toml | preflight
	@$(PHASE) "setup: .venv + $(PIP_PIN)" bash -c 'set -e; test -x $(PY) || python3 -m venv $(VENV); $(PY) -m pip install --disable-pip-version-check --retries 10 "$(PIP_PIN)"'
	@$(PY) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")' \
	  > $(VENV)/requirements.txt
	@$(PHASE) "setup: wheels in $(WHEELHOUSE) (missing ones only)" scripts/wheelhouse.sh fill $(VENV)/requirements.txt $(VENV)/bin/pip
	@$(PHASE) "setup: python deps installed (offline)" $(PY) -m pip install --disable-pip-version-check --progress-bar off \
	  --no-index --find-links $(WHEELHOUSE) -r $(VENV)/requirements.txt
	@touch $@

##@ Main job
.PHONY: demo
demo: preflight setup models up ## Set up, build the archives, start the stack, classify sample photos (or IMAGES=DIR)
	@$(PY) -m demo.classify $(if $(IMAGES),--images "$(IMAGES)")
	@$(DEMO_STREAM)

include $(sort $(wildcard mk/*.mk))

# After the includes, so every mk file's TEST_PREREQS (tool and jar fetches) is known here.
##@ Quality
.PHONY: test
test: preflight $(SETUP_STAMP) models $(TEST_PREREQS) ## Install what the tests need, then run every test (starts and stops real services)
	$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: lint
lint: $(SETUP_STAMP) ## ruff check of the whole project
	$(PY) -m ruff check .

.PHONY: clean
clean: down ## Remove built archives and run state (keeps .venv and .cache)
	rm -rf model-archive/build .run
