# The release the images are tagged with; no image is ever "latest".
VERSION ?= v0.1.0
# Image the Dockerfile builds: the manager, with the controller and the HTTP shim.
# make docker-build docker-push deploy IMG=registry.example/kinfer:v1 uses your own.
IMG ?= ghcr.io/kinfer/kinfer:$(VERSION)
# The example workers' images: WORKER_REGISTRY/worker-<name>:WORKER_TAG, the
# names the samples in config/samples use under ghcr.io/kinfer.
WORKER_REGISTRY ?= ghcr.io/kinfer
WORKER_TAG ?= $(VERSION)
GO_WORKERS := sleep echo sentiment
WORKERS := $(GO_WORKERS) python
# The manifests with these images in place of the ones config/ names.
DEPLOY_IMAGES := ghcr.io/kinfer/kinfer=$(IMG)
SAMPLE_IMAGES := $(foreach w,$(WORKERS),ghcr.io/kinfer/worker-$(w)=$(WORKER_REGISTRY)/worker-$(w):$(WORKER_TAG))
CONTAINER_TOOL ?= docker

# Tools and the control plane are built into bin/, never fetched as binaries.
LOCALBIN ?= $(shell pwd)/bin
TOOLS_MOD := hack/tools/go.mod
CONTROLLER_GEN ?= $(LOCALBIN)/controller-gen-$(shell awk '$$1 == "sigs.k8s.io/controller-tools" { print $$2 }' $(TOOLS_MOD))
GOLANGCI_LINT ?= $(LOCALBIN)/golangci-lint-$(shell awk '$$1 == "github.com/golangci/golangci-lint/v2" { print $$2 }' $(TOOLS_MOD))
HELM ?= $(LOCALBIN)/helm-$(shell awk '$$1 == "helm.sh/helm/v4" { print $$2 }' $(TOOLS_MOD))

# Run recipes with bash and stop at the first failing command of a pipeline.
SHELL = /usr/bin/env bash -o pipefail
.SHELLFLAGS = -ec

.PHONY: all
all: build

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "\nUsage:\n  make \033[36m<target>\033[0m\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) } ' $(MAKEFILE_LIST)

##@ Development

.PHONY: manifests
manifests: $(CONTROLLER_GEN) ## Generate the CRDs and the manager's ClusterRole from markers in the code.
	$(CONTROLLER_GEN) rbac:roleName=manager-role crd:generateEmbeddedObjectMeta=true paths="./..." output:crd:artifacts:config=config/crd/bases

.PHONY: generate
generate: $(CONTROLLER_GEN) ## Generate the API types' DeepCopy methods.
	$(CONTROLLER_GEN) object:headerFile="hack/boilerplate.go.txt" paths="./..."

.PHONY: chart
chart: manifests $(HELM) ## Write the Helm chart in charts/kinfer from config/default, lint it, and check that its defaults render config/default.
	go run ./hack/chart --root . --helm $(HELM)

.PHONY: fmt
fmt: ## Run go fmt on the code.
	go fmt ./...

.PHONY: vet
vet: ## Run go vet on the code.
	go vet ./...

.PHONY: lint
lint: $(GOLANGCI_LINT) ## Run golangci-lint (configured in .golangci.yml).
	$(GOLANGCI_LINT) run

.PHONY: lint-fix
lint-fix: $(GOLANGCI_LINT) ## Run golangci-lint and apply the fixes it can.
	$(GOLANGCI_LINT) run --fix

.PHONY: control-plane
control-plane: ## Build etcd, kube-apiserver, kube-controller-manager and kube-scheduler from source into bin/k8s/.
	@hack/control-plane.sh >/dev/null

.PHONY: test
test: manifests generate fmt vet lint receiver-packages ## Lint, run the unit and envtest suites (with the race detector), the end-to-end suite, then the benchmark harness in short form (builds the control plane on first use).
	KUBEBUILDER_ASSETS="$$(hack/control-plane.sh)" go test -race $$(go list ./... | grep -v /test/e2e) -timeout 20m -coverprofile cover.out
	$(MAKE) --no-print-directory test-e2e E2E_FLAGS=
	$(MAKE) --no-print-directory bench BENCH_SHORT=1

# The end-to-end suite builds the binaries it runs, which go test's cache cannot
# see, so its results are never taken from the cache (-count=1).
E2E_FLAGS ?= -v -ginkgo.v
.PHONY: test-e2e
test-e2e: $(HELM) ## Run only the end-to-end suite, on the local cluster (real Job controller, scheduler and local node).
	KUBEBUILDER_ASSETS="$$(hack/control-plane.sh)" HELM=$(HELM) go test ./test/e2e -count=1 -timeout 15m $(E2E_FLAGS)

# make bench BENCH_SHORT=1 checks the harness in a minute or two (make test runs
# it); its figures are not meaningful and go to bin/bench/, not docs/.
BENCH_SHORT ?=
.PHONY: bench
bench: ## Measure kinfer next to what it is built on (about 8 minutes) and write docs/benchmarks.md.
	@assets="$$(hack/control-plane.sh)"; \
	$(MAKE) --no-print-directory local-bin && \
	go run ./hack/bench --root . --assets "$$assets" $(if $(BENCH_SHORT),--short --out $(LOCALBIN)/bench/benchmarks-short.md)

# The Node receiver example's packages come from its package-lock.json into
# bin/, never next to the example; make test installs them, and go test runs
# the example's test wherever they are installed (it skips it, saying so,
# where they are not).
.PHONY: receiver-packages
receiver-packages: ## Install the Node receiver example's packages into bin/receivers/node (npm ci, from its lockfile).
	@mkdir -p $(LOCALBIN)/receivers/node
	@cmp -s examples/receivers/node/package-lock.json $(LOCALBIN)/receivers/node/package-lock.json && \
		[ -d $(LOCALBIN)/receivers/node/node_modules/standardwebhooks ] || { \
		cp examples/receivers/node/package.json examples/receivers/node/package-lock.json $(LOCALBIN)/receivers/node/ && \
		cd $(LOCALBIN)/receivers/node && npm ci --ignore-scripts --no-audit --no-fund; }

.PHONY: receivers
receivers: receiver-packages ## Test the Node receiver example against real signed callbacks.
	go test -race -count=1 -run TestNodeReceiver -v ./internal/callback/

.PHONY: verify
verify: manifests generate chart ## Fail when generated files, the Helm chart or go.mod drift from the code and config/.
	@hack/verify.sh

##@ Build

.PHONY: build
build: manifests generate fmt vet ## Build the manager binary.
	go build -o $(LOCALBIN)/manager .

.PHONY: local-bin
local-bin: ## Build what the local stack runs: bin/manager, bin/localnode, bin/workers/*, bin/localstack.
	@echo "Building the manager, the local node and the example workers"
	go build -o $(LOCALBIN)/manager .
	go build -o $(LOCALBIN)/localnode ./hack/localnode
	for w in sleep echo sentiment; do go build -o $(LOCALBIN)/workers/$$w ./examples/workers/$$w || exit 1; done
	go build -o $(LOCALBIN)/localstack ./hack/localstack

# Extra flags for bin/localstack, e.g. LOCALSTACK_FLAGS=--shim-bind-address=:8000.
LOCALSTACK_FLAGS ?=
.PHONY: run
run: manifests generate ## Start the whole local stack (control plane, local node, models, manager, shim on 127.0.0.1:8000); Ctrl-C stops it.
	@assets="$$(hack/control-plane.sh)"; \
	$(MAKE) --no-print-directory local-bin && \
	exec $(LOCALBIN)/localstack --root . --assets "$$assets" $(LOCALSTACK_FLAGS)

# make demo MODEL=sentiment submits DEMO_COUNT requests to that model, one after
# another with ids of their own for the run, and prints each one's time to its
# callback: a pool's first request may wait for a pod to start, the others
# find it waiting.
MODEL ?=
DEMO_COUNT ?= 3
DEMO_INPUT ?= {"text": "a great movie, I loved it"}
.PHONY: demo
demo: ## Against a running make run: submit {"id": "1234", ...} as the original client did and print the callback; MODEL=sentiment times 3 requests to that pool.
	python3 examples/python/client.py --server http://localhost:8000 --listen localhost:8001$(if $(MODEL), --model $(MODEL) --count $(DEMO_COUNT) --id $(MODEL)-$$(date +%s) --input '$(DEMO_INPUT)')

.PHONY: docker-build
docker-build: ## Build the manager image IMG (needs a Docker engine).
	$(CONTAINER_TOOL) build -t $(IMG) .

.PHONY: docker-push
docker-push: ## Push the manager image IMG.
	$(CONTAINER_TOOL) push $(IMG)

.PHONY: docker-build-workers
docker-build-workers: ## Build the example workers' images, WORKER_REGISTRY/worker-<name>:WORKER_TAG (needs a Docker engine).
	for w in $(GO_WORKERS); do \
		$(CONTAINER_TOOL) build -f examples/workers/Dockerfile --build-arg WORKER=$$w -t $(WORKER_REGISTRY)/worker-$$w:$(WORKER_TAG) . || exit 1; \
	done
	$(CONTAINER_TOOL) build -f examples/python/Dockerfile -t $(WORKER_REGISTRY)/worker-python:$(WORKER_TAG) .

.PHONY: docker-push-workers
docker-push-workers: ## Push the example workers' images.
	for w in $(WORKERS); do $(CONTAINER_TOOL) push $(WORKER_REGISTRY)/worker-$$w:$(WORKER_TAG) || exit 1; done

##@ Deployment

.PHONY: build-installer
build-installer: manifests ## Write dist/install.yaml: CRDs, RBAC and the manager (image IMG) in one file.
	mkdir -p dist
	hack/kustomize-images.sh config/default $(DEPLOY_IMAGES) > dist/install.yaml

.PHONY: install
install: manifests ## Install the CRDs into the cluster of the current kubeconfig.
	kubectl apply --server-side -k config/crd

.PHONY: uninstall
uninstall: ## Remove the CRDs, and with them every request and model, from the cluster.
	kubectl delete --ignore-not-found -k config/crd

.PHONY: deploy
deploy: manifests ## Deploy CRDs, RBAC and the manager (image IMG) to the cluster of the current kubeconfig.
	hack/kustomize-images.sh config/default $(DEPLOY_IMAGES) | kubectl apply --server-side -f -

.PHONY: undeploy
undeploy: ## Remove what deploy installed, the CRDs and so every request and model with it.
	kubectl delete --ignore-not-found -k config/default

.PHONY: deploy-samples
deploy-samples: ## Apply config/samples to NAMESPACE (default: the kubeconfig's), with the workers' images from WORKER_REGISTRY and WORKER_TAG.
	hack/kustomize-images.sh config/samples $(SAMPLE_IMAGES) | kubectl apply --server-side $(if $(NAMESPACE),--namespace $(NAMESPACE)) -f -

##@ Tools

$(LOCALBIN):
	mkdir -p $(LOCALBIN)

$(CONTROLLER_GEN): | $(LOCALBIN)
	cd hack/tools && GOWORK=off go build -o $@ sigs.k8s.io/controller-tools/cmd/controller-gen

$(HELM): | $(LOCALBIN)
	@echo "Building helm from source (a few minutes the first time)"
	cd hack/tools && GOWORK=off go build -o $@ helm.sh/helm/v4/cmd/helm

$(GOLANGCI_LINT): | $(LOCALBIN)
	@echo "Building golangci-lint from source (a minute or two the first time)"
	cd hack/tools && GOWORK=off go build -o $@ github.com/golangci/golangci-lint/v2/cmd/golangci-lint
