#!/usr/bin/env bash
# Check (by hand, not in CI yet) that the runtime a kind node will carry works here: the pinned
# containerd 2 and runc, built by build-tools.sh, run inside a --privileged container of the
# local Debian base (as in a kind node), import the project's image from `docker save`, and run it
# plain and --privileged. Needs: `make dockerd image` and `build-tools.sh containerd runc`.
# Leaves nothing behind: the container and its volume are removed on exit.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"
CACHE="${ORDERSTREAM_CACHE:-$HOME/.cache/orderstream}"
CTD="$CACHE/containerd-$CONTAINERD_VERSION/bin"
RUNC="$CACHE/runc-$RUNC_VERSION/bin"
APP_VERSION="$(sed -nE 's/^appVersion: *"?([^"]+)"?$/\1/p' "$REPO/charts/orderstream/Chart.yaml")"
IMAGE="$ORDERSTREAM_IMAGE_REPOSITORY:$APP_VERSION"
NAME=orderstream-nested-check
for f in "$CTD/containerd" "$CTD/containerd-shim-runc-v2" "$CTD/ctr" "$RUNC/runc"; do
    [ -x "$f" ] || { echo "missing $f: run k8s/local/build-tools.sh containerd runc" >&2; exit 1; }
done
BASE="$("$HERE/image.sh" base)"

cleanup() { docker rm -f "$NAME" >/dev/null 2>&1 || true; docker volume rm "$NAME-var" >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup

# /var/lib/containerd on a volume: the overlayfs snapshotter cannot stack on the container's overlay root.
docker run -d --name "$NAME" --privileged -v "$NAME-var:/var/lib/containerd" \
    -v "$CTD:/opt/containerd/bin:ro" -v "$RUNC:/opt/runc/bin:ro" "$BASE" sleep 600 >/dev/null
docker exec "$NAME" sh -c 'ln -s /opt/containerd/bin/* /opt/runc/bin/* /usr/local/bin/ \
    && (setsid containerd --log-level warn >/var/log/containerd.log 2>&1 &)'
deadline=$(( $(date +%s) + 30 ))
until docker exec "$NAME" ctr version >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || { docker exec "$NAME" cat /var/log/containerd.log; exit 1; }
    sleep 0.5
done
docker exec "$NAME" ctr version
docker exec "$NAME" runc --version | head -1
docker save "$IMAGE" | docker exec -i "$NAME" ctr -n k8s.io images import -
docker exec "$NAME" ctr -n k8s.io images ls -q
ref="docker.io/library/$IMAGE"
echo "--- nested container, plain"
docker exec "$NAME" ctr -n k8s.io run --rm "$ref" plain python -c 'import os, producer; print("uid", os.getuid(), "imports ok")'
echo "--- nested container, --privileged"
docker exec "$NAME" ctr -n k8s.io run --rm --privileged "$ref" priv sh -c 'grep CapBnd /proc/self/status'
echo "nested runtime check: ok"
