##@ Local Kubernetes cluster (real upstream components on this machine; cluster/README.md)
CLUSTER_KUBECONFIG := $(ROOT)/.run/cluster/kubeconfig

.PHONY: cluster-up
cluster-up: preflight $(SETUP_STAMP) k8s-tools ## Build (cached) and start a single-node cluster: etcd, control plane, containerd, kubelet, kube-proxy, CoreDNS, KServe, kube-state-metrics
	cluster/up.sh

.PHONY: cluster-down
cluster-down: ## Stop every cluster process, undo its network changes, remove .run/cluster (caches stay)
	cluster/down.sh

.PHONY: cluster-status
cluster-status: ## Nodes and pods of the local cluster (KUBECONFIG=.run/cluster/kubeconfig)
	@KUBECONFIG=$(CLUSTER_KUBECONFIG) cluster/status.sh

.PHONY: cluster-deploy
cluster-deploy: preflight models images ## The local Kafka broker, then helm install of the chart (ci/local-cluster-values.yaml), wait for Ready
	cluster/deploy.sh

.PHONY: e2e
e2e: preflight $(SETUP_STAMP) k8s-tools models ## cluster-up + images + deploy + end-to-end checks through the cluster's network, one summary
	KUBECONFIG=$(CLUSTER_KUBECONFIG) cluster/e2e.sh checks

.PHONY: e2e-chaos
e2e-chaos: preflight $(SETUP_STAMP) k8s-tools models ## cluster-up + deploy, CHAOS_N (5000) records via Kafka while pods die: 0 lost; CHAOS_RUNS (2) runs
	KUBECONFIG=$(CLUSTER_KUBECONFIG) cluster/e2e.sh chaos

.PHONY: e2e-kserve
e2e-kserve: preflight $(SETUP_STAMP) k8s-tools models ## cluster-up + deploy with runtime=kserve (torch-free KServe runtime image), then its checks
	KUBECONFIG=$(CLUSTER_KUBECONFIG) cluster/e2e.sh kserve

.PHONY: e2e-scale
e2e-scale: preflight $(SETUP_STAMP) k8s-tools models ## cluster-up + deploy + metrics-server/KEDA, then HPA scale-out under Locust and KEDA on consumer lag
	KUBECONFIG=$(CLUSTER_KUBECONFIG) cluster/e2e.sh scale
