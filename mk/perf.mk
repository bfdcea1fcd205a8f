##@ Performance
# Load test against the running stack (`make up`). Closed loop by default; RPS_PER_USER>0 = open loop
# (each user paced at that rate, offered load = USERS x RPS_PER_USER). KAFKA=1 adds the Kafka user.
USERS ?= 8
SPAWN_RATE ?= 4
DURATION ?= 60s
HOST ?= http://$(STACK_HOST):$(INFERENCE_PORT)
TARGET ?= $(HOST)
RPS_PER_USER ?= 0
KAFKA ?= 0
LOADTEST_OUT := $(ROOT)/loadtest/results/locust-$(shell date +%Y%m%d-%H%M%S)

.PHONY: loadtest
loadtest: $(SETUP_STAMP) ## Headless Locust vs `make up` (USERS SPAWN_RATE DURATION TARGET RPS_PER_USER KAFKA); fails on SLO breach
	mkdir -p $(LOADTEST_OUT)
	LOADTEST_RPS_PER_USER=$(RPS_PER_USER) LOADTEST_KAFKA=$(KAFKA) $(VENV)/bin/locust -f loadtest/locustfile.py \
	  --headless -u $(USERS) -r $(SPAWN_RATE) -t $(DURATION) -H $(TARGET) --only-summary --stop-timeout 30 \
	  --csv $(LOADTEST_OUT)/locust --html $(LOADTEST_OUT)/report.html
	@echo "reports: $(LOADTEST_OUT)"

.PHONY: bench
bench: $(SETUP_STAMP) models ## Side-by-side benchmark: in-process ceiling, our handler, stock handler, Kafka; then TorchServe vs the KServe runtime; Spark and bytes-vs-reference rows when `make up` runs (loadtest/BENCHMARKS.md)
	$(PY) -m loadtest.bench $(BENCH_ARGS)
	$(PY) -m loadtest.runtimes $(RUNTIMES_BENCH_ARGS)
	$(PY) -m loadtest.spark_bench --if-running $(SPARK_BENCH_ARGS)
	scripts/s3.sh run $(PY) -m loadtest.reference_bench --if-running $(REFERENCES_BENCH_ARGS)

.PHONY: bench-spark
bench-spark: $(SETUP_STAMP) $(SPARK_STAMP) up ## Spark streaming (endpoint, inprocess) vs the bridge vs direct HTTP at one input rate; backfill vs the in-process ceiling
	$(PY) -m loadtest.spark_bench $(SPARK_BENCH_ARGS)

.PHONY: bench-references
bench-references: $(SETUP_STAMP) ## Kafka bytes vs s3:// references (640x480 and 8 MB photos) through the `make up` bridge: bytes moved, img/s (ABBA rounds), e2e p95; REFERENCES_BENCH_ARGS="--serving-cores 1.2" gives TorchServe a pod-like CPU limit
	scripts/s3.sh run $(PY) -m loadtest.bridge_costs
	scripts/s3.sh run $(PY) -m loadtest.reference_bench $(REFERENCES_BENCH_ARGS)

.PHONY: bench-runtimes
bench-runtimes: $(SETUP_STAMP) models ## Only the runtimes comparison: TorchServe vs KServe ModelServer, A B B A (its section of loadtest/BENCHMARKS.md)
	$(PY) -m loadtest.runtimes $(RUNTIMES_BENCH_ARGS)

.PHONY: bench-levers
bench-levers: $(SETUP_STAMP) models ## Each speed lever alone, one thread: JPEG decode paths, eager/TorchScript/torch.compile/ONNX fp32/int8 (loadtest/LEVERS.md)
	$(PY) -m loadtest.levers $(LEVERS_ARGS)
