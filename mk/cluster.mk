# Local Kubernetes without a registry (issue 10). Included from the Makefile; docs/cluster.md
# says what each step does and what could not be built here.
#
#   make cluster-up        everything below, then a one-node kind cluster (Kubernetes from
#                          versions.env) with the images loaded; writes .local-cluster/
#   make cluster-down      delete it
#   make cluster-demo      the chart with operator and StreamAutoscaler on it, left running; prints
#                          PRODUCER_URL= and REDIS_URL= (make cluster-demo-down removes it)
#   make kind-node-image   the kind node image, assembled offline from the components
#   make test-cluster      the cluster tier (tests/cluster) against that cluster
#   make dockerd           install Debian's docker.io and start dockerd (root) with the runtime wrapper
#   make image             the project's image on a debootstrapped Debian base, from a host wheelhouse
#   make cluster-tools     build every pinned component from the Go module proxy (slow the first time)
#   make cluster-versions  print the pinned versions (k8s/local/versions.env)
#   make k8s-base          regenerate k8s/base/ (and its CRD copy) from the chart (see k8s/README.md)
#
# Components to build; empty means all (e.g. `make cluster-tools CLUSTER_TOOLS="kind helm"`).
CLUSTER_TOOLS ?=

.PHONY: dockerd image cluster-tools cluster-versions kind-node-image cluster-up cluster-down cluster-demo cluster-demo-down test-cluster k8s-base

## Install docker.io if missing and start dockerd in the background (idempotent; needs root).
dockerd:
	k8s/local/dockerd.sh

## Build orderstream:<appVersion> (and :dev) on a local Debian base, offline; prints its size.
image: dockerd
	k8s/local/image.sh build

## Build kind, helm, Kubernetes, containerd, runc, CNI plugins, etcd, CoreDNS, ... into ~/.cache/orderstream.
cluster-tools:
	k8s/local/build-tools.sh $(CLUSTER_TOOLS)

## Print the pinned versions of every component.
cluster-versions:
	@grep -E '^[A-Z_]+=' k8s/local/versions.env

## Build the kind node image (and the local Redis image) from the components; skipped when built.
kind-node-image: dockerd cluster-tools
	k8s/local/node-image.sh all

## Create the local cluster (builds what is missing first); prints the versions and how to use it.
cluster-up:
	k8s/local/cluster.sh up

## Delete the local cluster; no node container is left.
cluster-down:
	k8s/local/cluster.sh down

## The cluster tier alone (it creates the cluster when it is not up).
test-cluster: venv
	ORDERSTREAM_CLUSTER=1 $(VENV)/bin/python -m pytest -q -m cluster tests/cluster

## Regenerate the kustomize base from the chart, CRD copy included (tests fail while they differ).
k8s-base: venv
	$(VENV)/bin/python k8s/render_base.py

## The whole stack on the local cluster (operator and StreamAutoscaler included), left running;
## prints PRODUCER_URL=... and REDIS_URL=... (k8s/local/demo.sh; DEMO_NAMESPACE to choose where).
cluster-demo:
	k8s/local/demo.sh up

## Remove the demo release and its namespace (the cluster stays).
cluster-demo-down:
	k8s/local/demo.sh down
