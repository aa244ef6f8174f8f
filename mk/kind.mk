# kind workflow: a throw-away local cluster running the chart with a locally built image.
# Included from the top-level Makefile. Needs docker (with a running engine), kind, helm
# and kubectl on PATH; nothing here runs in CI (there is no Docker engine there).
#
#   make kind-up     create the cluster, build + load the image, helm install --wait
#   make kind-demo   post orders through the producer Service and show them processed
#   make kind-down   delete the cluster
#   make k8s-base    regenerate k8s/base/ (and its CRD copy) from the chart (see k8s/README.md)

DOCKER        ?= docker
KIND          ?= kind
HELM          ?= helm
KUBECTL       ?= kubectl
KIND_CLUSTER  ?= orderstream
KIND_IMAGE_REPOSITORY ?= orderstream
KIND_IMAGE_TAG        ?= dev
KIND_NAMESPACE ?= orderstream
KIND_RELEASE  ?= orderstream
KIND_CONTEXT  := kind-$(KIND_CLUSTER)
# Local port used by `kind-demo` to reach the producer Service through kubectl port-forward.
KIND_DEMO_PORT ?= 18080
KIND_DEMO_ORDERS ?= 10

.PHONY: kind-up kind-demo kind-down k8s-base

## Create the kind cluster, build and load the image, install the chart and wait until ready.
kind-up:
	@for tool in $(DOCKER) $(KIND) $(HELM) $(KUBECTL); do \
	  command -v $$tool >/dev/null 2>&1 || { echo "kind-up: $$tool not found on PATH" >&2; exit 1; }; \
	done
	@$(DOCKER) info >/dev/null 2>&1 || { echo "kind-up: no Docker engine reachable ($(DOCKER) info failed)" >&2; exit 1; }
	@if $(KIND) get clusters 2>/dev/null | grep -qx '$(KIND_CLUSTER)'; then \
	  echo "kind cluster $(KIND_CLUSTER) already exists"; \
	else \
	  $(KIND) create cluster --name $(KIND_CLUSTER) --config k8s/kind-config.yaml --wait 180s; \
	fi
	$(DOCKER) build -t $(KIND_IMAGE_REPOSITORY):$(KIND_IMAGE_TAG) .
	$(KIND) load docker-image $(KIND_IMAGE_REPOSITORY):$(KIND_IMAGE_TAG) --name $(KIND_CLUSTER)
	$(HELM) upgrade --install $(KIND_RELEASE) charts/orderstream \
	  --kube-context $(KIND_CONTEXT) --namespace $(KIND_NAMESPACE) --create-namespace \
	  --set image.repository=$(KIND_IMAGE_REPOSITORY) \
	  --set image.tag=$(KIND_IMAGE_TAG) \
	  --set image.pullPolicy=Never \
	  --wait --timeout 5m
	$(KUBECTL) --context $(KIND_CONTEXT) -n $(KIND_NAMESPACE) get pods -o wide

## Post orders through the producer Service (port-forward) and show the group catching up.
kind-demo:
	@set -eu; \
	$(KUBECTL) --context $(KIND_CONTEXT) -n $(KIND_NAMESPACE) port-forward \
	  svc/$(KIND_RELEASE)-producer $(KIND_DEMO_PORT):http >/dev/null 2>&1 & pf=$$!; \
	trap 'kill $$pf 2>/dev/null || true' EXIT INT TERM; \
	base=http://127.0.0.1:$(KIND_DEMO_PORT); \
	ok=; for i in $$(seq 1 100); do \
	  if curl -fsS $$base/readyz >/dev/null 2>&1; then ok=1; break; fi; sleep 0.2; \
	done; \
	[ -n "$$ok" ] || { echo "producer not reachable through the port-forward" >&2; exit 1; }; \
	for i in $$(seq 1 $(KIND_DEMO_ORDERS)); do \
	  curl -fsS -X POST $$base/orders -H 'Content-Type: application/json' \
	    -d "{\"orderId\": $$i, \"product\": \"Item-$$i\", \"quantity\": 1, \"userId\": 100}"; echo; \
	done; \
	echo "--- waiting for the group to acknowledge everything (lag 0, pending 0)"; \
	for i in $$(seq 1 60); do \
	  info=$$(curl -fsS $$base/stream/info); \
	  if echo "$$info" | python3 -c 'import json,sys; g=json.load(sys.stdin)["groups"]; sys.exit(0 if g and all((x.get("lag") or 0)==0 and x.get("pending",1)==0 for x in g) else 1)'; then \
	    echo "$$info" | python3 -m json.tool; echo "all orders processed"; exit 0; \
	  fi; sleep 1; \
	done; \
	echo "$$info" | python3 -m json.tool; echo "orders still pending after 60 s" >&2; exit 1

## Delete the kind cluster.
kind-down:
	$(KIND) delete cluster --name $(KIND_CLUSTER)

## Regenerate the kustomize base from the chart, CRD copy included (tests fail while they differ).
k8s-base:
	$(VENV)/bin/python k8s/render_base.py
