#!/usr/bin/env bash
# Build the project's image with no container registry (issue 10): `make image` runs this.
#
#   k8s/local/image.sh base     Debian base with Python 3.11 made by debootstrap, cached as a
#                               tarball under ~/.cache/orderstream/, `docker import`ed as $BASE_IMAGE
#   k8s/local/image.sh wheels   build/wheelhouse/: every runtime dependency (and the build backend)
#                               as wheels, made by `pip wheel` on the host
#   k8s/local/image.sh build    both of the above, then `docker build` of the project's Dockerfile
#                               on that base, installing from the wheelhouse with --no-index
#
# No registry can be reached from this machine, so `FROM python:3.11-slim` cannot be pulled; the
# Dockerfile's PYTHON_IMAGE build argument is pointed at the local base instead. The build runs
# with the classic builder (DOCKER_BUILDKIT=0): the engine is Debian's docker.io 20.10 and no
# buildx plugin is installed; BuildKit would also try to pull its Dockerfile frontend image.
# Everything slow runs under `nice -n 19` (2 shared cores).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"
# shellcheck source=lib.sh
source "$HERE/lib.sh"

# What the base holds beyond Debian's minbase: the Python that both Dockerfile stages use
# (`python` and `python -m venv` must work, as in python:3.11-slim).
BASE_PACKAGES="python3,python3-venv,python-is-python3,ca-certificates"
BASE_KEY="$(printf '%s %s' "$SUITE" "$BASE_PACKAGES" | cksum | cut -d' ' -f1)"
BASE_TARBALL="$CACHE/debian-$SUITE-python3-$BASE_KEY.tar"
BASE_IMAGE="orderstream-base/python:$SUITE-$BASE_KEY"
WHEELHOUSE="$REPO/build/wheelhouse"
APP_VERSION="$(app_version)"
IMAGE="$ORDERSTREAM_IMAGE_REPOSITORY:$APP_VERSION"
PYTHON="${PYTHON:-python3}"

say() { echo "image.sh: $*" >&2; }

base() {
    debootstrap_image "$BASE_TARBALL" "$BASE_IMAGE" "$BASE_PACKAGES" 'CMD ["/bin/bash"]'
}

# The image interpreter's marker environment (PEP 508), as JSON.
IMAGE_MARKER_ENV='import json, os, platform, sys
v = sys.implementation.version
iv = "%d.%d.%d" % v[:3] + ("" if v.releaselevel == "final" else v.releaselevel[0] + str(v.serial))
print(json.dumps({"implementation_name": sys.implementation.name, "implementation_version": iv,
    "os_name": os.name, "platform_machine": platform.machine(), "platform_release": platform.release(),
    "platform_system": platform.system(), "platform_version": platform.version(),
    "python_full_version": platform.python_version(),
    "platform_python_implementation": platform.python_implementation(),
    "python_version": ".".join(platform.python_version_tuple()[:2]), "sys_platform": sys.platform}))'

wheels() {
    # The wheels must fit the image's Python (Debian bookworm: CPython 3.11.2, glibc 2.36). The
    # host's python3 is 3.11 too, so its platform tags fit; its patch level differs, so markers
    # such as python_full_version < "3.11.3" are checked again against the image (wheel_closure.py).
    local base_image="$1" pyver env req="$REPO/build/requirements-image.txt" round lacking
    pyver="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    [ "$pyver" = 3.11 ] || { say "host $PYTHON is $pyver; the image has 3.11 (set PYTHON=)"; exit 1; }
    mkdir -p "$WHEELHOUSE"
    "$PYTHON" - "$REPO/pyproject.toml" > "$req" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)
# Runtime dependencies, and the build backend that `pip install .` needs without an index.
print("\n".join(project["project"]["dependencies"] + project["build-system"]["requires"]))
PY
    say "pip wheel into $WHEELHOUSE"
    nice -n 19 "$PYTHON" -m pip wheel --quiet --disable-pip-version-check \
        --wheel-dir "$WHEELHOUSE" -r "$req"
    env="$(docker run --rm --network none "$base_image" python3 -c "$IMAGE_MARKER_ENV")"
    for round in 1 2 3 4 5; do
        lacking="$("$PYTHON" "$HERE/wheel_closure.py" "$WHEELHOUSE" "$env" "$req")"
        [ -n "$lacking" ] || break
        say "for the image's Python also: $(echo "$lacking" | tr '\n' ' ')"
        # shellcheck disable=SC2086
        echo "$lacking" | nice -n 19 "$PYTHON" -m pip wheel --quiet --disable-pip-version-check \
            --no-deps --wheel-dir "$WHEELHOUSE" -r /dev/stdin
    done
    [ -z "$lacking" ] || { say "wheelhouse still lacks: $lacking"; exit 1; }
    say "wheelhouse: $(ls "$WHEELHOUSE" | wc -l) wheels, $(du -sh "$WHEELHOUSE" | cut -f1)"
}

build() {
    local base_image t0
    base_image="$(base)"
    wheels "$base_image"
    t0=$(date +%s)
    say "docker build $IMAGE on $base_image"
    DOCKER_BUILDKIT=0 nice -n 19 docker build \
        --build-arg PYTHON_IMAGE="$base_image" \
        --build-arg APT_BUILD_PACKAGES= \
        --build-arg PIP_INSTALL_ARGS="--no-index --find-links=/wheels" \
        -t "$IMAGE" -t "$ORDERSTREAM_IMAGE_REPOSITORY:$ORDERSTREAM_IMAGE_TAG" \
        "$REPO"
    say "built $IMAGE (also tagged $ORDERSTREAM_IMAGE_REPOSITORY:$ORDERSTREAM_IMAGE_TAG) in $(( $(date +%s) - t0 ))s"
    docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$ORDERSTREAM_IMAGE_REPOSITORY"
}

case "${1:-build}" in
    base) base ;;
    wheels) wheels "$(base)" ;;
    build) build ;;
    *) echo "usage: $0 [base|wheels|build]" >&2; exit 2 ;;
esac
