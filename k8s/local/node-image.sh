#!/usr/bin/env bash
# Build the kind node image from pinned sources, with no registry (issue 10): `make kind-node-image`.
#
#   k8s/local/node-image.sh images   the images a node must hold, built locally and tagged as
#                                    kubeadm and our manifests name them (registry.k8s.io/...)
#   k8s/local/node-image.sh node     those images preloaded into the node image $NODE_IMAGE
#   k8s/local/node-image.sh extra    images loaded into a cluster later: Debian's Redis for the
#                                    chart's built-in Redis ($REDIS_IMAGE)
#   k8s/local/node-image.sh all      all three (default); every step is skipped when its image exists
#
# `kind build node-image` cannot be used here: it fetches etcd, CoreDNS, pause, kindnetd and the
# storage images from a registry inside its build container (docs/cluster.md). This script does
# what it does, without the fetch:
#
# 1. A node base: Debian (debootstrap) with systemd and the packages of kind's own base image, the
#    files of kind's base image taken from the pinned kind module in the Go module cache
#    (entrypoint, containerd and kubelet units, sysctls), and our binaries built by
#    k8s/local/build-tools.sh: containerd, runc, crictl, CNI plugins, kubeadm, kubelet, kubectl.
#    runc inside the node goes through k8s/local/runc-no-sys-resource, as dockerd's does (this
#    host has no CAP_SYS_RESOURCE; kubelet asks pod sandboxes for oom_score_adj -998).
# 2. Control-plane images `FROM scratch` (the binaries are static), kube-proxy on the node base
#    (it needs iptables and conntrack), etcd, CoreDNS, pause, local-path-provisioner and its helper.
# 3. The base is run as a privileged container, containerd is started in it, every image is
#    imported from `docker save` into containerd's content store (`ctr images import --no-unpack`,
#    as kind does; unpacked in the node's /var volume at first use), /kind/version and the storage
#    manifest (storage_manifest) are written, and the container is committed as the node image.
#
# CNI: kind's kindnetd cannot be fetched (the Go module proxy refuses github.com/aojea/kindnet), so
# the node carries a static ptp + host-local + portmap conflist for the pod subnet 10.244.0.0/24;
# clusters using this image are single-node (k8s/local/kind-config.yaml disables kind's CNI).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"
say() { echo "node-image.sh: $*" >&2; }
# shellcheck source=lib.sh
source "$HERE/lib.sh"

K8S="$KUBERNETES_VERSION"
NODE_IMAGE="${KIND_NODE_IMAGE:-orderstream/kind-node:$K8S}"
# What kind's base image installs (images/base/Dockerfile), less NFS/iSCSI/fuse (no rootless, no
# network storage here), plus python3 for the runtime wrapper.
NODE_PACKAGES="systemd,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,bash,ca-certificates,curl,jq,procps,python3"
NODE_KEY="$(printf '%s %s' "$SUITE" "$NODE_PACKAGES" | cksum | cut -d' ' -f1)"
NODE_BASE_TARBALL="$CACHE/debian-$SUITE-node-$NODE_KEY.tar"
NODE_BASE_IMAGE="orderstream-base/node:$SUITE-$NODE_KEY"
# Images, named as kubeadm (`kubeadm config images list`) and containerd's sandbox setting name them.
ETCD_TAG="${ETCD_VERSION#v}-0"
IMG_APISERVER="registry.k8s.io/kube-apiserver:$K8S"
IMG_CONTROLLER="registry.k8s.io/kube-controller-manager:$K8S"
IMG_SCHEDULER="registry.k8s.io/kube-scheduler:$K8S"
IMG_PROXY="registry.k8s.io/kube-proxy:$K8S"
IMG_ETCD="registry.k8s.io/etcd:$ETCD_TAG"
IMG_COREDNS="registry.k8s.io/coredns/coredns:$COREDNS_VERSION"
IMG_PAUSE="registry.k8s.io/pause:$PAUSE_VERSION"
IMG_LOCAL_PATH="orderstream.local/local-path-provisioner:$LOCAL_PATH_PROVISIONER_VERSION"
IMG_LOCAL_PATH_HELPER="orderstream.local/local-path-helper:$SUITE"
NODE_IMAGES=("$IMG_APISERVER" "$IMG_CONTROLLER" "$IMG_SCHEDULER" "$IMG_PROXY" "$IMG_ETCD" "$IMG_COREDNS"
             "$IMG_PAUSE" "$IMG_LOCAL_PATH" "$IMG_LOCAL_PATH_HELPER")
# The chart's built-in Redis, from Debian (the chart needs Redis >= 7.0; bookworm has 7.0.15).
REDIS_IMAGE="${REDIS_IMAGE:-orderstream.local/redis:7.0-$SUITE}"

bin_dir() {
    local d="$CACHE/$1-$2/bin"
    [ -d "$d" ] || { say "$d missing: run make cluster-tools first"; exit 1; }
    echo "$d"
}
KIND_MODULE="$(go env GOMODCACHE)/sigs.k8s.io/kind@$KIND_VERSION"

exists() { docker image inspect "$1" >/dev/null 2>&1; }

# scratch_image IMAGE ENTRYPOINT-JSON FILE... : an image of static binaries in /usr/local/bin.
scratch_image() {
    local image="$1" entrypoint="$2" ctx f
    shift 2
    exists "$image" && return 0
    ctx="$(mktemp -d)"
    for f in "$@"; do cp "$f" "$ctx/"; done
    {
        echo "FROM scratch"
        for f in "$@"; do echo "COPY $(basename "$f") /usr/local/bin/"; done
        echo "ENV PATH=/usr/local/bin"
        [ -z "$entrypoint" ] || echo "ENTRYPOINT $entrypoint"
    } > "$ctx/Dockerfile"
    DOCKER_BUILDKIT=0 docker build -q -t "$image" "$ctx" >/dev/null
    rm -rf "$ctx"
    say "built $image"
}

node_base() {
    debootstrap_image "$NODE_BASE_TARBALL" "$NODE_BASE_IMAGE" "$NODE_PACKAGES" 'CMD ["/bin/bash"]'
}

# The node image before its images are preloaded: kind's base image, assembled from our parts.
node_stage1() {
    local image="$NODE_IMAGE-stage1" base ctx k8s
    exists "$image" && { echo "$image"; return 0; }
    base="$(node_base)"
    [ -d "$KIND_MODULE/images/base/files" ] || { say "$KIND_MODULE missing: run make cluster-tools first"; exit 1; }
    ctx="$(mktemp -d)"
    cp -r "$KIND_MODULE/images/base/files" "$ctx/files"
    chmod -R u+w "$ctx/files"
    mkdir -p "$ctx/bin" "$ctx/cni"
    k8s="$(bin_dir kubernetes "$K8S")"
    cp "$k8s/kubeadm" "$k8s/kubelet" "$k8s/kubectl" "$ctx/bin/"
    cp "$(bin_dir containerd "$CONTAINERD_VERSION")"/* "$ctx/bin/"
    cp "$(bin_dir cri-tools "$CRI_TOOLS_VERSION")/crictl" "$ctx/bin/"
    cp "$(bin_dir runc "$RUNC_VERSION")/runc" "$ctx/runc"
    cp "$(bin_dir cni-plugins "$CNI_PLUGINS_VERSION")"/{host-local,loopback,ptp,portmap} "$ctx/cni/"
    cp "$HERE/runc-no-sys-resource" "$ctx/runc-wrapper"
    cp "$HERE/node/10-orderstream-ptp.conflist" "$ctx/"
    cat > "$ctx/Dockerfile" <<EOF
FROM $base
COPY files/usr/local/bin/ /usr/local/bin/
COPY files/kind/ /kind/
COPY files/etc/ /etc/
COPY bin/ /usr/local/bin/
COPY cni/ /opt/cni/bin/
# The pinned runc is the real one; the wrapper, first on PATH, is what containerd's shim runs.
COPY runc /usr/sbin/runc
COPY runc-wrapper /usr/local/sbin/runc
COPY 10-orderstream-ptp.conflist /etc/cni/net.d/
RUN set -e; chmod 0755 /kind /kind/bin /kind/bin/* /usr/local/bin/* /usr/local/sbin/runc /usr/sbin/runc /opt/cni/bin/* \\
 && mv /usr/local/bin/kubeadm /usr/local/bin/kubelet /usr/local/bin/kubectl /usr/bin/ \\
 && find /lib/systemd/system/sysinit.target.wants/ -name systemd-tmpfiles-setup.service -delete \\
 && rm -f /lib/systemd/system/multi-user.target.wants/* /etc/systemd/system/*.wants/* \\
      /lib/systemd/system/local-fs.target.wants/* /lib/systemd/system/sockets.target.wants/*udev* \\
      /lib/systemd/system/sockets.target.wants/*initctl* /lib/systemd/system/basic.target.wants/* \\
 && echo ReadKMsg=no >> /etc/systemd/journald.conf \\
 && ln -sf /usr/lib/systemd/systemd /sbin/init \\
 && systemctl enable kubelet.service containerd.service undo-mount-hacks.service \\
 && systemctl mask systemd-binfmt.service \\
 && mkdir -p /etc/kubernetes/manifests \\
 && sed -i 's#sandbox_image = .*#sandbox_image = "$IMG_PAUSE"#' /etc/containerd/config.toml \\
 && ctr oci spec | jq '.hooks.createContainer[.hooks.createContainer | length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' \\
      | jq 'del(.process.rlimits)' > /etc/containerd/cri-base.json \\
 && containerd --version && runc --version && kubelet --version
ENV container=docker
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]
EOF
    DOCKER_BUILDKIT=0 nice -n 19 docker build -q -t "$image" "$ctx" >/dev/null
    rm -rf "$ctx"
    say "built $image"
    echo "$image"
}

images() {
    local k8s etcd
    k8s="$(bin_dir kubernetes "$K8S")"
    scratch_image "$IMG_APISERVER" "" "$k8s/kube-apiserver"
    scratch_image "$IMG_CONTROLLER" "" "$k8s/kube-controller-manager"
    scratch_image "$IMG_SCHEDULER" "" "$k8s/kube-scheduler"
    etcd="$(bin_dir etcd "$ETCD_VERSION")"
    scratch_image "$IMG_ETCD" "" "$etcd/etcd" "$etcd/etcdctl"
    scratch_image "$IMG_COREDNS" '["/usr/local/bin/coredns"]' "$(bin_dir coredns "$COREDNS_VERSION")/coredns"
    scratch_image "$IMG_PAUSE" '["/usr/local/bin/pause"]' "$(bin_dir pause "$PAUSE_VERSION")/pause"
    scratch_image "$IMG_LOCAL_PATH" '["/usr/local/bin/local-path-provisioner"]' \
        "$(bin_dir local-path-provisioner "$LOCAL_PATH_PROVISIONER_VERSION")/local-path-provisioner"
    if ! exists "$IMG_PROXY"; then
        # kube-proxy programs iptables/nftables and conntrack: the node base has both.
        local ctx; ctx="$(mktemp -d)"
        cp "$k8s/kube-proxy" "$ctx/"
        printf 'FROM %s\nCOPY kube-proxy /usr/local/bin/kube-proxy\n' "$(node_base)" > "$ctx/Dockerfile"
        DOCKER_BUILDKIT=0 docker build -q -t "$IMG_PROXY" "$ctx" >/dev/null
        rm -rf "$ctx"; say "built $IMG_PROXY"
    fi
    # The provisioner's helper pod only needs sh, mkdir, rm: the project's Python base has them.
    exists "$IMG_LOCAL_PATH_HELPER" || docker tag "$("$HERE/image.sh" base)" "$IMG_LOCAL_PATH_HELPER"
}

# The provisioner's own manifest (deploy/local-path-storage.yaml of the pinned module), with our
# image names, kind's default StorageClass name `standard` marked default, and volumes under /var
# (the node's /var is a docker volume, as in kind).
storage_manifest() {
    local src
    src="$(go env GOMODCACHE)/github.com/rancher/local-path-provisioner@$LOCAL_PATH_PROVISIONER_VERSION/deploy/local-path-storage.yaml"
    [ -f "$src" ] || { say "$src missing: run make cluster-tools first"; exit 1; }
    sed -e "s#image: rancher/local-path-provisioner:.*#image: $IMG_LOCAL_PATH#" \
        -e "s#image: busybox#image: $IMG_LOCAL_PATH_HELPER#" \
        -e 's#/opt/local-path-provisioner#/var/local-path-provisioner#' \
        -e 's#^  name: local-path$#  name: standard\n  annotations:\n    storageclass.kubernetes.io/is-default-class: "true"#' "$src"
}

node() {
    exists "$NODE_IMAGE" && { say "$NODE_IMAGE exists"; return 0; }
    local stage1 t0 image id
    t0=$(date +%s)
    images
    stage1="$(node_stage1)"
    id="orderstream-node-build-$$"
    docker run -d --privileged --name "$id" --entrypoint sleep "$stage1" infinity >/dev/null
    NODE_BUILD_ID="$id"
    trap 'docker rm -f "$NODE_BUILD_ID" >/dev/null 2>&1 || true' EXIT
    docker exec "$id" bash -c 'nohup containerd >/tmp/containerd.log 2>&1 &
        for i in $(seq 1 50); do [ -S /run/containerd/containerd.sock ] && ctr version >/dev/null 2>&1 && exit 0; sleep 0.2; done
        cat /tmp/containerd.log; exit 1'
    for image in "${NODE_IMAGES[@]}"; do
        docker save "$image" | docker exec -i "$id" ctr --namespace=k8s.io images import \
            --label=io.cri-containerd.pinned=pinned --all-platforms --no-unpack --digests - >/dev/null 2>&1
    done
    docker exec "$id" bash -c "echo $K8S > /kind/version && mkdir -p /kind/manifests"
    storage_manifest | docker exec -i "$id" cp /dev/stdin /kind/manifests/default-storage.yaml
    docker exec "$id" bash -c 'ctr --namespace=k8s.io images list -q 2>/dev/null | grep -v "^import-\|^sha256:" | sort > /kind/images.txt; pkill containerd;
        for i in $(seq 1 50); do ps -C containerd -o stat= | grep -qv "^Z" || exit 0; sleep 0.2; done; exit 1'
    docker commit --change 'ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]' "$id" "$NODE_IMAGE" >/dev/null
    say "built $NODE_IMAGE in $(( $(date +%s) - t0 ))s ($(docker image inspect -f '{{.Size}}' "$NODE_IMAGE" | awk '{printf "%d MB", $1/1e6}')); preloaded:"
    docker run --rm --entrypoint cat "$NODE_IMAGE" /kind/images.txt | sed 's/^/  /' >&2
}

extra() {
    exists "$REDIS_IMAGE" && return 0
    local ctx; ctx="$(mktemp -d)"
    # uid/gid 999 as in the official image, which the chart's securityContext names.
    cat > "$ctx/Dockerfile" <<EOF
FROM $("$HERE/image.sh" base)
RUN groupadd --system --gid 999 redis && useradd --system --uid 999 --gid 999 --home-dir /data redis \\
 && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null \\
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc/* /usr/share/man/* \\
 && mkdir -p /data && chown redis:redis /data && redis-server --version
WORKDIR /data
USER 999:999
CMD ["redis-server"]
EOF
    DOCKER_BUILDKIT=0 nice -n 19 docker build -q -t "$REDIS_IMAGE" "$ctx" >/dev/null
    rm -rf "$ctx"
    say "built $REDIS_IMAGE"
}

case "${1:-all}" in
    images) images ;;
    node) node ;;
    extra) extra ;;
    all) node; extra ;;
    name) echo "$NODE_IMAGE" ;;
    redis-image) echo "$REDIS_IMAGE" ;;
    *) echo "usage: $0 [all|images|node|extra|name|redis-image]" >&2; exit 2 ;;
esac
