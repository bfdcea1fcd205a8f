##@ Training and evaluation
MODEL ?= mobilenet_v2
DATA ?= $(abspath $(ROOT)/../shared/data)
OUT ?= $(ROOT)/.run/eval/$(MODEL)
TRAIN_ARGS ?=

.PHONY: train
train: $(SETUP_STAMP) ## Fine-tune MODEL=mobilenet_v2|resnet50 on DATA=DIR (class folders); writes models/MODEL + threshold
	$(PY) -m training.train --model $(MODEL) --data "$(DATA)" $(TRAIN_ARGS)

.PHONY: evaluate
evaluate: $(SETUP_STAMP) ## Evaluate MODEL on every image of DATA=DIR into OUT=DIR (metrics.json, plots); MAR=path or CHECKPOINT=path
	$(PY) -m training.evaluate --model $(MODEL) --data "$(DATA)" --out "$(OUT)" \
		$(if $(MAR),--mar "$(MAR)") $(if $(CHECKPOINT),--checkpoint "$(CHECKPOINT)") $(if $(SPLIT),--split $(SPLIT))

.PHONY: data-openimages
data-openimages: $(SETUP_STAMP) ## Fetch a balanced Open Images V7 subset (reference classes) into DATA_OUT=DIR (online only)
	$(PY) -m training.openimages --out "$(or $(DATA_OUT),$(ROOT)/data/openimages)" $(OPENIMAGES_ARGS)
