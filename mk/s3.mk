##@ Object store (images by reference: s3:// keys and http(s) URLs, handlers/fetch.py)
STACK_UP_TARGETS := s3-up $(STACK_UP_TARGETS)
STACK_DOWN_TARGETS += s3-down
STACK_STATUS_TARGETS += s3-status
TEST_PREREQS += s3-build

.PHONY: s3-build
s3-build: ## Build the local S3 server (versitygw, pinned) with go install into .cache/tools (once)
	@scripts/s3.sh build

.PHONY: s3-up
s3-up: $(SETUP_STAMP) ## Start the S3 server on 127.0.0.1:S3_PORT with bucket S3_BUCKET of sample photos (stack.env)
	@scripts/s3.sh start

.PHONY: s3-down
s3-down: ## Stop the S3 server (objects stay in .run/s3/data)
	@scripts/s3.sh stop

.PHONY: s3-status
s3-status: ## Say whether the S3 server runs
	@scripts/s3.sh status
