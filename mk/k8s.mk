##@ Kubernetes (Helm chart, k8s/ manifests, monitoring; validated offline)
K8S_TOOLS := scripts/k8s-tools.sh
K8S_BIN := $(CACHE)/tools/bin
K8S_TOOLS_STAMP := $(K8S_BIN)/.all-$(shell sha1sum $(K8S_TOOLS) | cut -c1-12)
CHART := helm/image-moderation
K8S_PYTEST = $(PY) -m pytest -q $(PYTEST_ARGS)

# `make test` installs the toolchain first (the tests fail, not skip, without it).
TEST_PREREQS += k8s-tools k8s-schemas

.PHONY: k8s-tools
k8s-tools: $(K8S_TOOLS_STAMP) ## Build helm/kubeconform/kube-score/kustomize (go install, pinned) + Debian prometheus/promtool
$(K8S_TOOLS_STAMP): $(K8S_TOOLS)
	@$(K8S_TOOLS) tools
	@touch $@

.PHONY: k8s-schemas
k8s-schemas: $(SETUP_STAMP) k8s-tools ## Generate strict JSON schemas from the pinned k8s OpenAPI + KServe/prom-operator/KEDA CRDs
	@$(K8S_TOOLS) schemas

.PHONY: chart-lint
chart-lint: k8s-tools ## helm lint --strict (default + production values), kube-score, hadolint of docker/*.Dockerfile
	$(K8S_PYTEST) tests/test_k8s_chart.py -k "lint or kube_score" tests/test_k8s_images.py

.PHONY: k8s-validate
k8s-validate: k8s-schemas ## Every rendered object (chart variants, k8s/ overlays) strictly against the pinned schemas
	$(K8S_PYTEST) tests/test_k8s_chart.py tests/test_k8s_manifests.py

.PHONY: rules-test
rules-test: k8s-tools ## promtool check rules + promtool unit tests of every alert (monitoring/tests)
	$(K8S_PYTEST) tests/test_monitoring_rules.py

.PHONY: dashboard-schema
dashboard-schema: k8s-tools ## The chart's Grafana dashboard against Grafana's schema (grafana-foundation-sdk, Go, pinned in monitoring/)
	$(K8S_PYTEST) tests/test_monitoring_dashboard.py -k schema

.PHONY: dashboard-check
dashboard-check: k8s-tools models ## Live: real Prometheus scrapes the local stack; every panel query and recording rule has data
	$(K8S_PYTEST) tests/test_monitoring_dashboard.py

.PHONY: k8s-check
k8s-check: chart-lint k8s-validate rules-test dashboard-schema ## All offline Kubernetes checks (no running stack needed)

.PHONY: k8s-render
k8s-render: k8s-tools ## Regenerate k8s/base (chart defaults) and k8s/overlays/kserve's generated files from `helm template` (then commit)
	$(PY) scripts/k8s_render.py

.PHONY: upload-models
upload-models: models ## Upload model-archive/build/{config,model-store} to STORAGE_URI=s3://…|gs://…|pvc://claim[/path] (docs: helm/image-moderation/README.md)
	scripts/upload-models.sh "$(STORAGE_URI)"

.PHONY: images
images: ## Build the bridge, predictor and kserve-predictor images + the local broker (Docker, else buildah on Debian-assembled bases; cached in ~/.cache/image-moderation/images)
	scripts/images.sh build

.PHONY: images-check
images-check: $(SETUP_STAMP) images ## The built images as the chart runs them: config, layers, each run as its user (fails, not skips, when one is missing)
	IMAGES_REQUIRED=1 $(PY) -m pytest -q -p no:cacheprovider tests/test_images_built.py

.PHONY: images-load
images-load: ## Import the built images into containerd (CONTAINERD_ADDRESS, default /run/containerd/containerd.sock)
	scripts/images.sh load
