##@ Spark consumer (Structured Streaming with the bridge's contract, and batch backfill; streaming/README.md)
SPARK_VERSION := $(shell sed -n 's:.*<spark.version>\(.*\)</spark.version>.*:\1:p' spark/pom.xml)
SPARK_STAMP := $(CACHE)/spark/jars/.fetched-$(SPARK_VERSION)
TEST_PREREQS += spark-fetch
# `make backfill` defaults: the sample photos into .run/backfill; an s3:// prefix reads the local object store
# (scripts/s3.sh run: its endpoint and credentials) unless FETCH_S3_ENDPOINT_URL and AWS_* say otherwise
OUT ?= $(ROOT)/.run/backfill

.PHONY: spark-fetch
spark-fetch: $(SPARK_STAMP) ## Fetch spark-sql-kafka-0-10 for the pinned PySpark (spark/pom.xml) from Maven Central into .cache/spark (once)
$(SPARK_STAMP): spark/pom.xml
	@scripts/spark.sh fetch

.PHONY: spark-up
spark-up: $(SETUP_STAMP) $(SPARK_STAMP) models ## Start the Spark streaming consumer (STREAMING_INFERENCE=endpoint|inprocess); `make up CONSUMER=spark` runs it instead of the bridge
	@scripts/spark.sh start

.PHONY: spark-down
spark-down: ## Stop the Spark consumer (its running micro-batch finishes; the checkpoint stays in .run/spark)
	@scripts/spark.sh stop

.PHONY: spark-status
spark-status: ## Say whether the Spark consumer runs (and where its UI is)
	@scripts/spark.sh status

.PHONY: spark-reset
spark-reset: ## Stop the Spark consumer and delete its checkpoint (the next start reads image_data from STREAMING_STARTING_OFFSETS)
	@scripts/spark.sh stop
	rm -rf $(ROOT)/.run/spark

.PHONY: backfill
backfill: $(SETUP_STAMP) models ## Score IMAGES=DIR|s3://bucket/prefix (default: sample photos) into OUT=DIR as Parquet with Spark; skips what is scored (BACKFILL_ARGS: --jsonl --split test)
	@$(if $(filter s3://%,$(IMAGES)),scripts/s3.sh run )$(PY) -m streaming.backfill --out "$(OUT)" $(if $(IMAGES),--images "$(IMAGES)") $(BACKFILL_ARGS)
