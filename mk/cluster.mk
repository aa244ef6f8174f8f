# Local Kubernetes without a registry (issue 10): the groundwork. Included from the Makefile.
# Nothing here runs in `make test` or CI yet; see docs/cluster.md for what works and what remains.
#
#   make dockerd           install Debian's docker.io and start dockerd (root) with the runtime wrapper
#   make image             the project's image on a debootstrapped Debian base, from a host wheelhouse
#   make cluster-tools     build every pinned component from the Go module proxy (slow the first time)
#   make cluster-versions  print the pinned versions (k8s/local/versions.env)
#
# Components to build; empty means all (e.g. `make cluster-tools CLUSTER_TOOLS="kind helm"`).
CLUSTER_TOOLS ?=

.PHONY: dockerd image cluster-tools cluster-versions

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
