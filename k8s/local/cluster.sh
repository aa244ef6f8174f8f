#!/usr/bin/env bash
# The local Kubernetes cluster (issue 10): `make cluster-up` / `make cluster-down` run this.
#
#   k8s/local/cluster.sh up     dockerd, every pinned component (built once into ~/.cache/orderstream),
#                               the project's image, the node image, then a one-node kind cluster
#                               named $CLUSTER with the project's and Redis's images loaded
#   k8s/local/cluster.sh down   delete the cluster: no node container or process of it is left
#   k8s/local/cluster.sh env    print the exports that point kubectl/helm at it
#
# It writes .local-cluster/kubeconfig and copies the exact kind, kubectl and helm it used to
# .local-cluster/bin/. The producer's NodePort 30080 is published on the host at 127.0.0.1:30080,
# and 30379 (the built-in Redis's development NodePort) at 127.0.0.1:30379
# (k8s/local/kind-config.yaml); there is no ingress controller (docs/cluster.md says why).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"
say() { echo "cluster.sh: $*" >&2; }
# shellcheck source=lib.sh
source "$HERE/lib.sh"  # CACHE, app_version
CLUSTER="${CLUSTER_NAME:-orderstream}"
OUT="$REPO/.local-cluster"
BIN="$OUT/bin"
export KUBECONFIG="$OUT/kubeconfig"

tools() {
    mkdir -p "$BIN"
    cp -f "$CACHE/kind-$KIND_VERSION/bin/kind" "$BIN/kind"
    cp -f "$CACHE/kubernetes-$KUBERNETES_VERSION/bin/kubectl" "$BIN/kubectl"
    cp -f "$CACHE/helm-$HELM_VERSION/bin/helm" "$BIN/helm"
}

exists() { [ -x "$BIN/kind" ] && "$BIN/kind" get clusters 2>/dev/null | grep -qx "$CLUSTER"; }

# Seconds an existing cluster's API server gets to answer /readyz before it is recreated.
HEALTH_TIMEOUT="${CLUSTER_HEALTH_TIMEOUT:-60}"

# The existing cluster's node container runs and its API server answers /readyz within
# HEALTH_TIMEOUT. A node container from an earlier dockerd (a reboot, a restored disk: kind's
# nodes do not survive a Docker restart on this cgroup v1 host) may run with an API server that
# resets every connection; CI met exactly that.
healthy() {
    local deadline=$(( $(date +%s) + HEALTH_TIMEOUT )) state
    state="$(docker inspect -f '{{.State.Status}}' "$CLUSTER-control-plane" 2>/dev/null || echo missing)"
    [ "$state" = running ] || { say "node container $CLUSTER-control-plane is $state"; return 1; }
    "$BIN/kind" export kubeconfig --name "$CLUSTER" --kubeconfig "$KUBECONFIG" >/dev/null 2>&1 || return 1
    until "$BIN/kubectl" get --raw /readyz --request-timeout=5s >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || { say "API server did not answer /readyz within ${HEALTH_TIMEOUT}s"; return 1; }
        sleep 2
    done
}

up() {
    local t0 node_image redis_image app_version
    t0=$(date +%s)
    "$HERE/dockerd.sh"
    "$HERE/build-tools.sh"
    "$HERE/image.sh" build
    "$HERE/node-image.sh" all
    tools
    node_image="$("$HERE/node-image.sh" name)"
    redis_image="$("$HERE/node-image.sh" redis-image)"
    app_version="$(app_version)"
    # The config a cluster was made from is kept beside the kubeconfig: a cluster made from
    # another one (a port mapping added since) is made again, as is one that does not answer.
    sed "s/@ETCD_TAG@/${ETCD_VERSION#v}-0/" "$HERE/kind-config.yaml" > "$OUT/kind-config.wanted.yaml"
    if exists; then
        if ! cmp -s "$OUT/kind-config.wanted.yaml" "$OUT/kind-config.yaml"; then
            say "cluster $CLUSTER was made from another k8s/local/kind-config.yaml: deleting it to create it again"
            "$BIN/kind" delete cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG"
        elif ! healthy; then
            say "cluster $CLUSTER exists but is not healthy: deleting it to create it again"
            "$BIN/kind" delete cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG"
        fi
    fi
    if exists; then
        say "cluster $CLUSTER exists and answers"
    else
        mv "$OUT/kind-config.wanted.yaml" "$OUT/kind-config.yaml"
        "$BIN/kind" create cluster --name "$CLUSTER" --image "$node_image" --config "$OUT/kind-config.yaml" \
            --kubeconfig "$KUBECONFIG" --wait 120s
    fi
    rm -f "$OUT/kind-config.wanted.yaml"
    # The same image under the tag that k8s/overlays/kind names (ORDERSTREAM_IMAGE_TAG).
    "$BIN/kind" load docker-image --name "$CLUSTER" "$ORDERSTREAM_IMAGE_REPOSITORY:$app_version" \
        "$ORDERSTREAM_IMAGE_REPOSITORY:$ORDERSTREAM_IMAGE_TAG" "$redis_image"
    "$BIN/kubectl" wait --for=condition=Ready node --all --timeout=120s >/dev/null
    "$BIN/kubectl" -n kube-system rollout status deployment/coredns --timeout=120s >/dev/null
    say "cluster $CLUSTER is up in $(( $(date +%s) - t0 ))s: Kubernetes $KUBERNETES_VERSION"
    echo "pinned versions (k8s/local/versions.env):"
    grep -E '^[A-Z_]+_VERSION=' "$HERE/versions.env" | sed 's/^/  /'
    cat <<MSG
images: $ORDERSTREAM_IMAGE_REPOSITORY:$app_version, $redis_image (loaded), node $node_image
use it:
  export KUBECONFIG=$KUBECONFIG PATH=$BIN:\$PATH
  helm install orderstream charts/orderstream -n orderstream --create-namespace --wait \\
    --set image.pullPolicy=Never --set redis.image.repository=${redis_image%:*} \\
    --set redis.image.tag=${redis_image##*:} --set redis.image.pullPolicy=Never \\
    --set producer.service.type=NodePort --set producer.service.nodePort=30080
  curl http://127.0.0.1:30080/stream/info     # the producer's NodePort, published on loopback
MSG
}

down() {
    if exists; then
        "$BIN/kind" delete cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG"
    else
        say "no cluster $CLUSTER"
    fi
    rm -f "$KUBECONFIG"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    env) echo "export KUBECONFIG=$KUBECONFIG PATH=$BIN:\$PATH" ;;
    *) echo "usage: $0 up|down|env" >&2; exit 2 ;;
esac
