# Shared by k8s/local/image.sh, node-image.sh and cluster.sh (sourced, not run): Debian base
# images made with debootstrap, since no registry can be reached to pull one (issue 10).
# Expects versions.env to be sourced first (DEBIAN_SUITE) and a `say` function.

CACHE="${ORDERSTREAM_CACHE:-$HOME/.cache/orderstream}"
SUITE="$DEBIAN_SUITE"

# The chart's appVersion, the tag of the project's image (needs REPO).
app_version() { sed -nE 's/^appVersion: *"?([^"]+)"?$/\1/p' "$REPO/charts/orderstream/Chart.yaml"; }

# Debian mirror of the host's own apt configuration (deb822 or one-line format), so that no host
# name is written here.
debian_mirror() {
    local uri
    uri="$(awk -v s="$SUITE" '
        /^URIs:/ {u=$2} /^Suites:/ {for (i=2;i<=NF;i++) if ($i==s) {print u; exit}}
        /^deb / && $3==s {print $2; exit}' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true)"
    [ -n "$uri" ] || { say "no Debian mirror for $SUITE in the host's apt sources"; exit 1; }
    echo "$uri"
}

# debootstrap_image TARBALL IMAGE PACKAGES [DOCKER_IMPORT_CHANGE...]
# Debian minbase plus PACKAGES (comma-separated), debootstrapped once into TARBALL (cached; its
# name should carry a key of the package list) and `docker import`ed as IMAGE when that image is
# missing. Prints IMAGE.
debootstrap_image() {
    local tarball="$1" image="$2" packages="$3"
    shift 3
    if [ ! -f "$tarball" ]; then
        command -v debootstrap >/dev/null || {
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
        local root="$tarball.root.tmp" t0
        t0=$(date +%s)
        rm -rf "$root"; mkdir -p "$(dirname "$tarball")"
        say "debootstrap $SUITE (minbase + $packages) into $root"
        nice -n 19 debootstrap --variant=minbase --include="$packages" "$SUITE" "$root" "$(debian_mirror)" >&2
        # Nothing an image needs: package lists and caches, docs, man pages, non-English locales.
        rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
               "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
               "$root"/var/log/*.log "$root"/var/log/apt/* "$root"/tmp/* "$root"/var/cache/debconf/*-old
        find "$root"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name 'en*' ! -name locale.alias -exec rm -rf {} +
        tar --numeric-owner -C "$root" -cf "$tarball.tmp" .
        mv "$tarball.tmp" "$tarball"
        rm -rf "$root"
        say "base tarball $tarball ($(du -h "$tarball" | cut -f1)) in $(( $(date +%s) - t0 ))s"
    fi
    if ! docker image inspect "$image" >/dev/null 2>&1; then
        say "docker import $tarball as $image"
        local args=(--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin') change
        for change in "$@"; do args+=(--change "$change"); done
        docker import "${args[@]}" "$tarball" "$image" >/dev/null
    fi
    echo "$image"
}
