##@ Serving (TorchServe + KServe-protocol gateway)
ARCHIVE_STAMP := model-archive/build/.built
ARCHIVE_INPUTS := $(wildcard handlers/*.py model-archive/config/* models/*/model.pt models/*/model.int8.onnx models/*/quantization.json) model-archive/build_archives.py

.PHONY: models
models: $(ARCHIVE_STAMP) ## Build model-store/{mobilenet_v2,resnet50}.mar + config/ (KServe layout) in model-archive/build
$(ARCHIVE_STAMP): $(SETUP_STAMP) $(ARCHIVE_INPUTS)
	@$(PY) model-archive/build_archives.py build
	@touch $@

# Later components append their start/stop targets (in start order) from their own mk files.
STACK_UP_TARGETS ?=
STACK_DOWN_TARGETS ?=

# Serving runtime of `make up` (and the tests' stack): torchserve (the mission's) or kserve (KServe ModelServer).
RUNTIME ?= torchserve

.PHONY: up
up: models ## Start the local stack in the background (returns once ready): TorchServe + gateway (or RUNTIME=kserve), Kafka, bridge
	@scripts/serving.sh start
	@$(if $(strip $(STACK_UP_TARGETS)),$(MAKE) --no-print-directory $(STACK_UP_TARGETS))

.PHONY: down
down: ## Stop everything `make up` started
	@$(if $(strip $(STACK_DOWN_TARGETS)),-$(MAKE) --no-print-directory $(STACK_DOWN_TARGETS))
	@scripts/serving.sh stop

.PHONY: status
status: ## Say what of the local stack runs and whether it is ready
	@scripts/serving.sh status
	@$(if $(strip $(STACK_STATUS_TARGETS)),$(MAKE) --no-print-directory $(STACK_STATUS_TARGETS))

.PHONY: classify
classify: up ## Classify IMAGES=DIR (default: sample photos) over HTTP (KServe v2) with both models
	@$(PY) -m demo.classify $(if $(IMAGES),--images "$(IMAGES)")
