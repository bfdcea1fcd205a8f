##@ Training
# DATA defaults to the shared training images beside the repo (../shared/data: class folders + manifest.csv,
# whose split column is used). Options map to `python -m training.train --help`:
#   TARGET_RECALL (0.90) REVIEW_RECALL (0.98) EPOCHS (3) SEED (0) WEIGHTS=path RANDOM_INIT=1 TRAIN_OUT=dir
#   TRAIN_ARGS="--views 2 --source-folds 5 ..."; the defaults are the shipped MobileNetV2's recipe (its model card)
MODEL ?= mobilenet_v2
DATA ?= $(abspath $(ROOT)/../shared/data)
OUT ?= $(ROOT)/.run/eval/$(MODEL)
TARGET_RECALL ?= 0.90
REVIEW_RECALL ?= 0.98
EPOCHS ?= 3
SEED ?= 0
TRAIN_ARGS ?=

.PHONY: train
train: $(SETUP_STAMP) ## Fine-tune MODEL=mobilenet_v2|resnet50 on DATA=DIR; writes models/MODEL (or TRAIN_OUT) + threshold
	$(PY) -m training.train --model $(MODEL) --data "$(DATA)" --target-recall $(TARGET_RECALL) \
		--review-recall $(REVIEW_RECALL) --epochs $(EPOCHS) --seed $(SEED) $(if $(WEIGHTS),--weights "$(WEIGHTS)") \
		$(if $(filter 1 yes true,$(RANDOM_INIT)),--random-init) $(if $(TRAIN_OUT),--out "$(TRAIN_OUT)") $(TRAIN_ARGS)

.PHONY: evaluate
evaluate: $(SETUP_STAMP) ## Evaluate MODEL on DATA=DIR into OUT=DIR (metrics.json, plots); CHECKPOINT=path or MAR=path (OPERATING_POINT=out_of_source), SPLIT=test
	$(PY) -m training.evaluate --model $(MODEL) --data "$(DATA)" --out "$(OUT)" \
		$(if $(MAR),--mar "$(MAR)") $(if $(CHECKPOINT),--checkpoint "$(CHECKPOINT)") $(if $(SPLIT),--split $(SPLIT)) \
		$(if $(OPERATING_POINT),--operating-point $(OPERATING_POINT))

.PHONY: quantize-eval
quantize-eval: $(SETUP_STAMP) ## Measure static int8 ONNX quantization of MODEL vs fp32 on DATA (accuracy, recall, speed) into OUT
	$(PY) -m training.quantize --model $(MODEL) --data "$(DATA)" --out "$(or $(QUANT_OUT),$(ROOT)/.run/quantize/$(MODEL))"

.PHONY: quantize
quantize: $(SETUP_STAMP) ## Adopt int8 for MODEL: as quantize-eval, then graph + report into models/MODEL, int8 thresholds (both operating points) into its config
	$(PY) -m training.quantize --model $(MODEL) --data "$(DATA)" --out "$(or $(QUANT_OUT),$(ROOT)/.run/quantize/$(MODEL))" --install

.PHONY: data-openimages
data-openimages: $(SETUP_STAMP) ## Fetch a balanced Open Images V7 subset (reference classes) into DATA_OUT=DIR (online only)
	$(PY) -m training.openimages --out "$(or $(DATA_OUT),$(ROOT)/data/openimages)" $(OPENIMAGES_ARGS)

.PHONY: data-unseen
data-unseen: $(SETUP_STAMP) ## Copy 9 benign everyday photos shipped in pinned packages to .cache/unseen (false-alarm check for evaluate)
	$(PY) -m training.unseen --out "$(CACHE)/unseen"
