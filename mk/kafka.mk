##@ Kafka (Apache Kafka KRaft broker + the image_data -> inference -> image_predictions bridge)
KAFKA_VERSION := $(shell sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' kafka/pom.xml)
KAFKA_STAMP := $(CACHE)/kafka/libs/.fetched-$(KAFKA_VERSION)

# Hooks of the lead's up/down/status/test/demo targets (Makefile, mk/serving.mk).
# The consumer of image_data that `make up` starts: the bridge, or CONSUMER=spark (mk/spark.mk); `down` stops either.
CONSUMER ?= bridge
STACK_UP_TARGETS += kafka-up $(if $(filter spark,$(CONSUMER)),spark-up,bridge-up)
STACK_DOWN_TARGETS += spark-down bridge-down kafka-down
STACK_STATUS_TARGETS += kafka-status $(if $(filter spark,$(CONSUMER)),spark-status,bridge-status)
TEST_PREREQS += kafka-fetch kcat
DEMO_STREAM = $(PY) -m bridge.demo $(if $(IMAGES),--images "$(IMAGES)") \
  && if scripts/s3.sh running; then scripts/s3.sh run $(PY) -m bridge.demo --references $(if $(IMAGES),--images "$(IMAGES)"); \
  else echo "(the reference path is skipped: no local object store, see make s3-up)"; fi

.PHONY: kafka-fetch
kafka-fetch: $(KAFKA_STAMP) ## Fetch the pinned Apache Kafka jars from Maven Central into .cache/kafka (once)
$(KAFKA_STAMP): kafka/pom.xml
	@scripts/kafka.sh fetch

.PHONY: kcat
kcat: ## Install Debian's kcat (apt-get, once): a Kafka client not written here, for interop tests and debugging
	@scripts/kafka.sh kcat

.PHONY: kafka-up
kafka-up: $(SETUP_STAMP) $(KAFKA_STAMP) ## Start the Kafka broker (127.0.0.1:KAFKA_PORT, stack.env) and create the topics
	@scripts/kafka.sh start

.PHONY: kafka-down
kafka-down: ## Stop the Kafka broker (data stays in .run/kafka; `make kafka-reset` wipes it)
	@scripts/kafka.sh stop

.PHONY: kafka-reset
kafka-reset: ## Stop the broker and delete its data (topics, offsets)
	scripts/kafka.sh reset

.PHONY: kafka-status
kafka-status: ## Say whether the broker runs
	@scripts/kafka.sh status

.PHONY: kafka-topics
kafka-topics: $(SETUP_STAMP) ## List the topics and their partition counts
	$(PY) -m bridge.topics list

.PHONY: bridge-up
bridge-up: $(SETUP_STAMP) ## Start the Kafka bridge (/livez /readyz /metrics on BRIDGE_PORT); env vars: bridge/README.md
	@scripts/bridge.sh start

.PHONY: bridge-down
bridge-down: ## Stop the bridge gracefully (finishes or hands back in-flight work, commits)
	@scripts/bridge.sh stop

.PHONY: bridge-status
bridge-status: ## Say whether the bridge runs and is ready
	@scripts/bridge.sh status

.PHONY: produce
produce: $(SETUP_STAMP) ## Stream IMAGES=DIR (default: sample photos) into image_data with a progress bar
	$(PY) -m bridge.produce $(if $(IMAGES),"$(IMAGES)")

.PHONY: consume
consume: $(SETUP_STAMP) ## Print predictions from image_predictions (and the DLQ) as a live table; Ctrl-C stops
	$(PY) -m bridge.consume
