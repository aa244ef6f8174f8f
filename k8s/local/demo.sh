#!/usr/bin/env bash
# The whole stack on the local kind cluster, left running for exploration (issue 11):
# `make cluster-demo` / `make cluster-demo-down` run this.
#
#   k8s/local/demo.sh up     the cluster (k8s/local/cluster.sh up: built or reused), then
#                            `helm upgrade --install --wait` of charts/orderstream with
#                            k8s/local/demo-values.yaml (built-in Redis, operator, a
#                            StreamAutoscaler), then two lines that scripts can read:
#                              PRODUCER_URL=http://127.0.0.1:30080
#                              REDIS_URL=redis://127.0.0.1:30379/0
#   k8s/local/demo.sh down   helm uninstall and delete the namespace (the cluster stays)
#
# DEMO_NAMESPACE (default orderstream) and DEMO_RELEASE (default orderstream) choose where; extra
# arguments after `up` go to helm (e.g. --set consumer.concurrency=32). The two URLs are the
# NodePorts 30080 and 30379 that k8s/local/kind-config.yaml publishes on 127.0.0.1: there is no
# ingress controller (docs/cluster.md says why), so one demo release at a time.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
NAMESPACE="${DEMO_NAMESPACE:-orderstream}"
RELEASE="${DEMO_RELEASE:-orderstream}"
OUT="$REPO/.local-cluster"
export KUBECONFIG="$OUT/kubeconfig" PATH="$OUT/bin:$PATH"
PRODUCER_URL=http://127.0.0.1:30080
REDIS_HOST=127.0.0.1 REDIS_PORT=30379
# Seconds to wait for the two URLs to answer after helm's --wait.
ANSWER_TIMEOUT="${DEMO_ANSWER_TIMEOUT:-60}"
say() { echo "demo.sh: $*" >&2; }

# A Service of another release already holding one of the demo's node ports (kubectl's -o jsonpath
# over every Service in the cluster): the install would fail with "provided port is already allocated".
port_holder() {
    kubectl get services -A -o jsonpath='{range .items[*]}{.metadata.namespace}/{.metadata.name}{" "}{.spec.ports[*].nodePort}{"\n"}{end}' \
        | awk -v ns="$NAMESPACE/" '$0 !~ "^"ns && (/ 30080( |$)/ || / 30379( |$)/) {print $1}'
}

redis_ping() {
    python3 - "$REDIS_HOST" "$REDIS_PORT" <<'PY'
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2) as s:
    s.sendall(b"PING\r\n")
    sys.exit(0 if s.recv(16).startswith(b"+PONG") else 1)
PY
}

wait_for() {  # wait_for WHAT COMMAND...
    local what="$1" deadline=$(( $(date +%s) + ANSWER_TIMEOUT ))
    shift
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || { say "$what did not answer within ${ANSWER_TIMEOUT}s"; return 1; }
        sleep 1
    done
}

up() {
    local redis_image holder t0
    t0=$(date +%s)
    "$HERE/cluster.sh" up >&2
    holder="$(port_holder)"
    if [ -n "$holder" ]; then
        say "node port 30080 or 30379 is taken by $holder; uninstall that release first (DEMO_NAMESPACE=... $0 down)"
        exit 1
    fi
    redis_image="$("$HERE/node-image.sh" redis-image)"
    say "helm upgrade --install $RELEASE in namespace $NAMESPACE (k8s/local/demo-values.yaml)"
    helm upgrade --install "$RELEASE" "$REPO/charts/orderstream" -n "$NAMESPACE" --create-namespace \
        --wait --timeout 5m -f "$HERE/demo-values.yaml" \
        --set image.pullPolicy=Never --set redis.image.repository="${redis_image%:*}" \
        --set redis.image.tag="${redis_image##*:}" --set redis.image.pullPolicy=Never "$@" >&2
    wait_for "the producer at $PRODUCER_URL/readyz" curl -fsS "$PRODUCER_URL/readyz"
    wait_for "Redis at $REDIS_HOST:$REDIS_PORT" redis_ping
    say "ready in $(( $(date +%s) - t0 ))s; the stack keeps running (make cluster-demo-down removes it)"
    cat >&2 <<MSG
try it (README, "Run it on Kubernetes"):
  eval "\$(k8s/local/cluster.sh env)"          # this cluster's kubectl and helm
  curl -X POST $PRODUCER_URL/orders -H 'Content-Type: application/json' \\
       -d '{"orderId": 1, "product": "Laptop", "quantity": 1, "userId": 42}'
  make venv && .venv/bin/orderstream burst --url $PRODUCER_URL --orders 20000   # lag: watch it scale
  kubectl -n $NAMESPACE get streamautoscaler,deployment -w
  kubectl -n $NAMESPACE describe streamautoscaler   # its decisions, as Events
  redis-cli -u redis://$REDIS_HOST:$REDIS_PORT/0 XINFO CONSUMERS orders order-processors
MSG
    echo "PRODUCER_URL=$PRODUCER_URL"
    echo "REDIS_URL=redis://$REDIS_HOST:$REDIS_PORT/0"
}

down() {
    if helm status "$RELEASE" -n "$NAMESPACE" >/dev/null 2>&1; then
        helm uninstall "$RELEASE" -n "$NAMESPACE" --wait --timeout 3m
    else
        say "no release $RELEASE in namespace $NAMESPACE"
    fi
    kubectl delete namespace "$NAMESPACE" --ignore-not-found --wait=true --timeout=120s
}

cmd="${1:-}"
shift || true
case "$cmd" in
    up) up "$@" ;;
    down) down ;;
    *) echo "usage: $0 up [helm args...]|down" >&2; exit 2 ;;
esac
