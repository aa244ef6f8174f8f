#!/usr/bin/env bash
# Build every component of the local Kubernetes cluster (issue 10) from the Go module proxy,
# at the versions pinned in k8s/local/versions.env, into ~/.cache/orderstream/<component>-<version>/.
#
#   k8s/local/build-tools.sh                 build every component not built yet
#   k8s/local/build-tools.sh kind helm       build only these (names: see COMPONENTS below)
#   k8s/local/build-tools.sh --list          print the components and where they go
#   k8s/local/build-tools.sh --two-streams   all of them, Kubernetes beside the rest (.ci/run)
#
# A component whose folder holds `.built` is skipped, so a second run costs seconds. A failed
# build leaves `<component>-<version>.partial/` and its log; the next run starts it again (the
# Go build cache keeps what was compiled). Every build is appended to
# ~/.cache/orderstream/build-results.tsv: date, component, version, ok|FAILED, seconds, bytes of bin/.
#
# The machine has 2 cores shared with timing-sensitive tests, so the whole script runs under
# `nice -n 19` (and `ionice -c 3` where it exists) with GOMAXPROCS=1 and GOFLAGS=-p=1: one
# package compiled at a time, one compiler thread. GOTOOLCHAIN=local: the machine's Go is used,
# a toolchain is never downloaded.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"

CACHE="${ORDERSTREAM_CACHE:-$HOME/.cache/orderstream}"
RESULTS="$CACHE/build-results.tsv"
LOGS="$CACHE/logs"

COMPONENTS=(kind helm cri-tools runc containerd cni-plugins pause etcd coredns
            local-path-provisioner kubernetes)
# Built only when named (`build-tools.sh traefik`): the Go module proxy refuses some of its
# modules (docs/cluster.md), so it would fail every default run.
OPTIONAL_COMPONENTS=(traefik)

# Re-run ourselves at the lowest CPU (and I/O) priority, once.
if [ "${ORDERSTREAM_NICED:-}" != 1 ]; then
    export ORDERSTREAM_NICED=1
    if command -v ionice >/dev/null 2>&1; then
        exec nice -n 19 ionice -c 3 "$0" "$@"
    fi
    exec nice -n 19 "$0" "$@"
fi

export GOMAXPROCS=1 GOFLAGS=-p=1 GOTOOLCHAIN=local
export CGO_ENABLED="${CGO_ENABLED:-0}"

version_of() {
    case "$1" in
        kind) echo "$KIND_VERSION" ;;
        helm) echo "$HELM_VERSION" ;;
        cri-tools) echo "$CRI_TOOLS_VERSION" ;;
        runc) echo "$RUNC_VERSION" ;;
        containerd) echo "$CONTAINERD_VERSION" ;;
        cni-plugins) echo "$CNI_PLUGINS_VERSION" ;;
        pause) echo "$PAUSE_VERSION" ;;
        etcd) echo "$ETCD_VERSION" ;;
        coredns) echo "$COREDNS_VERSION" ;;
        local-path-provisioner) echo "$LOCAL_PATH_PROVISIONER_VERSION" ;;
        traefik) echo "$TRAEFIK_VERSION" ;;
        kubernetes) echo "$KUBERNETES_VERSION" ;;
        *) echo "unknown component: $1" >&2; return 1 ;;
    esac
}

# Echo a command before running it, so that each log shows exactly what was run.
run() { printf '+ %s\n' "$*"; "$@"; }

# A wrapper module in $CACHE/src/<component>-<version>/: needed where the upstream go.mod has
# replace directives (they are ignored in a dependency, and `go install pkg@version` refuses them).
# $1 folder, $2 module requirement "path version", then replace lines "old => new version".
wrapper_module() {
    local dir="$1" req="$2"; shift 2
    rm -rf "$dir"; mkdir -p "$dir"
    {
        echo "module orderstream.local/build/$(basename "$dir")"
        echo
        echo "go 1.26"
        echo
        echo "require $req"
        if [ "$#" -gt 0 ]; then
            echo
            echo "replace ("
            printf '\t%s\n' "$@"
            echo ")"
        fi
    } > "$dir/go.mod"
    cat "$dir/go.mod"
}

need_debian_packages() {
    local missing=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if [ "${#missing[@]}" -gt 0 ]; then
        run apt-get update -qq  # a fresh machine may have no package lists yet
        run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    fi
}

# ---------------------------------------------------------------- one function per component
# Each gets the output folder ($1) and puts binaries in $1/bin.

build_kind() {
    run go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kind@$KIND_VERSION"
}

build_helm() {
    run go install -trimpath \
        -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" \
        "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
}

build_cri-tools() {
    run go install -trimpath \
        -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=${CRI_TOOLS_VERSION#v}" \
        "sigs.k8s.io/cri-tools/cmd/crictl@$CRI_TOOLS_VERSION"
}

build_runc() {
    # runc needs cgo (its nsenter is C) and libseccomp for seccomp profiles; linked static so
    # that it runs in any node image.
    need_debian_packages gcc pkg-config libseccomp-dev
    CGO_ENABLED=1 run go install -trimpath -tags "seccomp netgo osusergo" \
        -ldflags "-s -w -X main.version=${RUNC_VERSION#v} -extldflags -static" \
        "github.com/opencontainers/runc@$RUNC_VERSION"
}

build_containerd() {
    local m=github.com/containerd/containerd/v2
    run go install -trimpath -tags "no_btrfs no_devmapper" \
        -ldflags "-s -w -X $m/version.Version=$CONTAINERD_VERSION -X $m/version.Package=$m" \
        "$m/cmd/containerd@$CONTAINERD_VERSION" \
        "$m/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
        "$m/cmd/ctr@$CONTAINERD_VERSION"
}

build_cni-plugins() {
    local m=github.com/containernetworking/plugins
    run go install -trimpath \
        -ldflags "-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$CNI_PLUGINS_VERSION" \
        "$m/plugins/main/bridge@$CNI_PLUGINS_VERSION" \
        "$m/plugins/main/loopback@$CNI_PLUGINS_VERSION" \
        "$m/plugins/main/ptp@$CNI_PLUGINS_VERSION" \
        "$m/plugins/ipam/host-local@$CNI_PLUGINS_VERSION" \
        "$m/plugins/meta/portmap@$CNI_PLUGINS_VERSION"
}

build_pause() {
    # pause is C, shipped in the k8s.io/kubernetes module (build/pause/linux/pause.c).
    need_debian_packages gcc libc6-dev
    local dir
    dir="$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" \
           | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
    run gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE_VERSION-orderstream" \
        -o "$1/bin/pause" "$dir/build/pause/linux/pause.c"
    run strip "$1/bin/pause"
}

build_etcd() {
    # server/v3's go.mod replaces api, client and pkg by path, so `go install` refuses it.
    local src="$CACHE/src/etcd-$ETCD_VERSION"
    wrapper_module "$src" "go.etcd.io/etcd/server/v3 $ETCD_VERSION"
    (cd "$src" \
        && run go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" "go.etcd.io/etcd/etcdctl/v3@$ETCD_VERSION" \
        && run go build -mod=mod -trimpath -ldflags "-s -w" -o "$1/bin/etcd" go.etcd.io/etcd/server/v3 \
        && run go build -mod=mod -trimpath -ldflags "-s -w" -o "$1/bin/etcdctl" go.etcd.io/etcd/etcdctl/v3)
}

build_coredns() {
    run go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION"
}

build_local-path-provisioner() {
    run go install -trimpath \
        -ldflags "-s -w -X main.VERSION=$LOCAL_PATH_PROVISIONER_VERSION" \
        "github.com/rancher/local-path-provisioner@$LOCAL_PATH_PROVISIONER_VERSION"
}

build_traefik() {
    # traefik's go.mod replaces two forks by version (copied here) and its own nested module
    # github.com/traefik/traefik/dynamic/ext by path (./pkg/config/dynamic/ext).
    local src="$CACHE/src/traefik-$TRAEFIK_VERSION" m=github.com/traefik/traefik/v3
    local gomod
    gomod="$(go mod download -json "$m@$TRAEFIK_VERSION" \
             | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
    mapfile -t reps < <(grep -E '^\s*(replace\s+)?[^ ]+ => [^ ]+ v[^ ]+$' "$gomod" \
                        | sed -E 's/^\s*(replace\s+)?//')
    wrapper_module "$src" "$m $TRAEFIK_VERSION" "${reps[@]}"
    (cd "$src" \
        && run go build -mod=mod -trimpath \
             -ldflags "-s -w -X github.com/traefik/traefik/v3/pkg/version.Version=$TRAEFIK_VERSION" \
             -o "$1/bin/traefik" "$m/cmd/traefik")
}

build_kubernetes() {
    # k8s.io/kubernetes replaces its staging modules (k8s.io/api, ...) by ./staging paths, which a
    # dependency's go.mod cannot do: the wrapper module replaces each one by its published version.
    local src="$CACHE/src/kubernetes-$KUBERNETES_VERSION" json gomod commit date
    json="$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION")"
    gomod="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["GoMod"])' "$json")"
    mapfile -t staging < <(grep -oE '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$gomod" \
                           | awk '{print $1}')
    local reps=()
    for s in "${staging[@]}"; do reps+=("$s => $s $KUBERNETES_STAGING_VERSION"); done
    wrapper_module "$src" "k8s.io/kubernetes $KUBERNETES_VERSION" "${reps[@]}"
    # Version stamped as hack/lib/version.sh does: kubeadm compares these with the cluster's.
    commit="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get("Origin",{}).get("Hash",""))' "$json")"
    date="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["Time"])' "$json")"
    local v="${KUBERNETES_VERSION#v}" ld="-s -w"
    for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
        ld="$ld -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=${v%%.*}"
        ld="$ld -X $pkg.gitMinor=$(echo "$v" | cut -d. -f2) -X $pkg.gitTreeState=clean"
        ld="$ld -X $pkg.gitCommit=$commit -X $pkg.buildDate=$date"
    done
    # One binary at a time, smallest first, so that a stopped run leaves usable binaries and
    # the Go build cache for the next; timings per binary go to the log.
    local b t0
    for b in kubectl kubeadm kubelet kube-scheduler kube-controller-manager kube-proxy kube-apiserver; do
        t0=$(date +%s)
        (cd "$src" && run go build -mod=mod -trimpath -ldflags "$ld" -o "$1/bin/$b" "k8s.io/kubernetes/cmd/$b")
        echo "built $b in $(( $(date +%s) - t0 )) s, $(stat -c %s "$1/bin/$b") bytes"
    done
}

# ---------------------------------------------------------------- driver

build_component() {
    local name="$1" version dest log t0 status secs bytes
    version="$(version_of "$name")"
    dest="$CACHE/$name-$version"
    if [ -f "$dest/.built" ]; then
        echo "$name $version: already built in $dest"
        return 0
    fi
    mkdir -p "$LOGS"
    log="$LOGS/$name-$version.log"
    rm -rf "$dest" "$dest.partial"
    mkdir -p "$dest.partial/bin"
    echo "$name $version: building (log: $log)"
    t0=$(date +%s)
    if (export GOBIN="$dest.partial/bin"; set -x; "build_$name" "$dest.partial") >"$log" 2>&1; then
        status=ok
    else
        status=FAILED
    fi
    secs=$(( $(date +%s) - t0 ))
    bytes=$(du -sb "$dest.partial/bin" | cut -f1)
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$name" "$version" "$status" "$secs" "$bytes" >> "$RESULTS"
    if [ "$status" = ok ]; then
        mv "$dest.partial" "$dest"
        (cd "$dest/bin" && ls -l) > "$dest/BINARIES"
        touch "$dest/.built"
        echo "$name $version: ok in ${secs}s, bin/ $bytes bytes"
    else
        echo "$name $version: FAILED after ${secs}s; last lines of $log:" >&2
        tail -n 15 "$log" >&2
        return 1
    fi
}

main() {
    if [ "${1:-}" = --two-streams ]; then
        # CI, on a machine nobody else is using: Kubernetes (half of all the compiling) in one
        # stream, everything else in another, one core each; measured 39 min elapsed cold here.
        local others=() rc=0 k8s_pid
        for c in "${COMPONENTS[@]}"; do [ "$c" = kubernetes ] || others+=("$c"); done
        "$0" kubernetes & k8s_pid=$!
        "$0" "${others[@]}" || rc=1
        wait "$k8s_pid" || rc=1
        return "$rc"
    fi
    if [ "${1:-}" = --list ]; then
        for c in "${COMPONENTS[@]}" "${OPTIONAL_COMPONENTS[@]}"; do echo "$c $(version_of "$c") $CACHE/$c-$(version_of "$c")"; done
        return 0
    fi
    command -v go >/dev/null || { echo "build-tools: go not found on PATH" >&2; exit 1; }
    local want=("$@") failed=()
    [ "${#want[@]}" -gt 0 ] || want=("${COMPONENTS[@]}")
    mkdir -p "$CACHE"
    for c in "${want[@]}"; do
        build_component "$c" || failed+=("$c")
    done
    if [ "${#failed[@]}" -gt 0 ]; then
        echo "build-tools: failed: ${failed[*]} (see $LOGS/)" >&2
        exit 1
    fi
}

main "$@"
