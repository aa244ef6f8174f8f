#!/usr/bin/env bash
# Check (by hand, not in CI yet) the biggest risk of issue 10 on this cgroup v1 host: does the
# pinned kubelet (v1.37) run pods here with `failCgroupV1: false`, on the pinned containerd 2 and
# runc, inside a --privileged container of the local Debian base (as in a kind node)?
# Standalone kubelet (no API server): one static pod with hostNetwork (no CNI needed), running the
# project's image. Prints what crictl sees and the pod's log; exit 0 when the pod's container ran.
# Needs `make dockerd image` and `build-tools.sh containerd runc cri-tools pause kubernetes`
# (kubelet may still be in the .partial folder). Leaves nothing behind.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"
CACHE="${ORDERSTREAM_CACHE:-$HOME/.cache/orderstream}"
bin_of() { # component version binary: the built one, else the one a running build left
    local d="$CACHE/$1-$2"
    if [ -x "$d/bin/$3" ]; then echo "$d/bin"; elif [ -x "$d.partial/bin/$3" ]; then echo "$d.partial/bin";
    else echo "missing $3 ($1 $2): run k8s/local/build-tools.sh $1" >&2; exit 1; fi
}
CTD="$(bin_of containerd "$CONTAINERD_VERSION" containerd)"
RUNC="$(bin_of runc "$RUNC_VERSION" runc)"
CRICTL="$(bin_of cri-tools "$CRI_TOOLS_VERSION" crictl)"
PAUSE="$(bin_of pause "$PAUSE_VERSION" pause)"
KUBE="$(bin_of kubernetes "$KUBERNETES_VERSION" kubelet)"
APP_VERSION="$(sed -nE 's/^appVersion: *"?([^"]+)"?$/\1/p' "$REPO/charts/orderstream/Chart.yaml")"
IMAGE="$ORDERSTREAM_IMAGE_REPOSITORY:$APP_VERSION"
PAUSE_IMAGE="registry.k8s.io/pause:$PAUSE_VERSION"
NAME=orderstream-kubelet-check
BASE="$("$HERE/image.sh" base)"

cleanup() {
    docker rm -f "$NAME" >/dev/null 2>&1 || true
    docker volume rm "$NAME-ctd" "$NAME-kubelet" >/dev/null 2>&1 || true
    rm -rf "${WORK:-}"
}
trap cleanup EXIT
cleanup
WORK="$(mktemp -d)"

# The pause image: the static pause binary alone.
cp "$PAUSE/pause" "$WORK/pause"
printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' > "$WORK/Dockerfile"
DOCKER_BUILDKIT=0 docker build -q -t "$PAUSE_IMAGE" "$WORK" >/dev/null

cat > "$WORK/config.toml" <<EOF
version = 3
[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = '$PAUSE_IMAGE'
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
  SystemdCgroup = false
EOF
cat > "$WORK/kubelet.yaml" <<'EOF'
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# The point of this check: kubelet >= 1.35 refuses cgroup v1 unless told otherwise.
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
staticPodPath: /etc/kubernetes/manifests
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
address: 127.0.0.1
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
failSwapOn: false
EOF
cat > "$WORK/pod.yaml" <<EOF
apiVersion: v1
kind: Pod
metadata: {name: orderstream-check, namespace: default}
spec:
  hostNetwork: true
  containers:
    - name: app
      image: $IMAGE
      imagePullPolicy: Never
      command: ["python", "-c", "import os, producer, time; print('orderstream image ran as uid', os.getuid(), flush=True); time.sleep(600)"]
EOF

docker run -d --name "$NAME" --privileged --network none \
    -v "$NAME-ctd:/var/lib/containerd" -v "$NAME-kubelet:/var/lib/kubelet" \
    -v "$CTD:/opt/containerd/bin:ro" -v "$RUNC:/opt/runc/bin:ro" -v "$CRICTL:/opt/crictl/bin:ro" \
    -v "$KUBE:/opt/kube/bin:ro" -v "$WORK:/check:ro" "$BASE" sleep 900 >/dev/null
# runc inside the node also lacks CAP_SYS_RESOURCE: the same wrapper goes first in PATH, the
# pinned runc where the wrapper looks for it (/usr/sbin/runc).
docker cp "$HERE/runc-no-sys-resource" "$NAME:/usr/local/bin/runc"
docker exec "$NAME" sh -c 'ln -s /opt/runc/bin/runc /usr/sbin/runc \
    && ln -s /opt/containerd/bin/* /opt/crictl/bin/* /opt/kube/bin/kubelet /usr/local/bin/ \
    && mkdir -p /etc/containerd /etc/kubernetes/manifests && cp /check/config.toml /etc/containerd/ \
    && (setsid containerd >/var/log/containerd.log 2>&1 &)'
deadline=$(( $(date +%s) + 30 ))
until docker exec "$NAME" ctr version >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || { docker exec "$NAME" tail -20 /var/log/containerd.log; exit 1; }
    sleep 0.5
done
for img in "$PAUSE_IMAGE" "$IMAGE"; do
    docker save "$img" | docker exec -i "$NAME" ctr -n k8s.io images import --label io.cri-containerd.pinned=pinned - >/dev/null
done
docker exec "$NAME" kubelet --version
docker exec "$NAME" sh -c 'cp /check/pod.yaml /etc/kubernetes/manifests/ \
    && (setsid sh -c "echo \$\$ >/run/kubelet.pid; exec kubelet --config /check/kubelet.yaml" >/var/log/kubelet.log 2>&1 &)'
export CONTAINER_RUNTIME_ENDPOINT=unix:///run/containerd/containerd.sock
deadline=$(( $(date +%s) + 180 ))
until docker exec "$NAME" crictl --runtime-endpoint "$CONTAINER_RUNTIME_ENDPOINT" ps --name app -q 2>/dev/null | grep -q .; do
    if [ "$(date +%s)" -ge "$deadline" ] || ! docker exec "$NAME" sh -c 'kill -0 "$(cat /run/kubelet.pid)"' 2>/dev/null; then
        echo "--- no running container within 180 s; kubelet log:"
        docker exec "$NAME" tail -40 /var/log/kubelet.log
        exit 1
    fi
    sleep 1
done
echo "--- kubelet pid $(docker exec "$NAME" cat /run/kubelet.pid) running; a container of the static pod is up"
docker exec "$NAME" crictl --runtime-endpoint "$CONTAINER_RUNTIME_ENDPOINT" pods
docker exec "$NAME" crictl --runtime-endpoint "$CONTAINER_RUNTIME_ENDPOINT" ps
id="$(docker exec "$NAME" crictl --runtime-endpoint "$CONTAINER_RUNTIME_ENDPOINT" ps --name app -q | head -1)"
deadline=$(( $(date +%s) + 60 ))
until docker exec "$NAME" crictl --runtime-endpoint "$CONTAINER_RUNTIME_ENDPOINT" logs "$id" 2>&1 | grep -q 'ran as uid'; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "no log line from the pod"; exit 1; }
    sleep 1
done
docker exec "$NAME" crictl --runtime-endpoint "$CONTAINER_RUNTIME_ENDPOINT" logs "$id"
echo "--- kubelet log lines about cgroup v1:"
docker exec "$NAME" grep -i 'cgroup v1\|cgroupv1\|cgroup version' /var/log/kubelet.log | head -5 || true
echo "kubelet cgroup v1 check: ok"
