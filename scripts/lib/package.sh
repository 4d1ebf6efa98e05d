# shellcheck shell=bash
# scripts/lib/package.sh — what the Debian package test (tests/package.rs) needs: cargo-deb, and a
# plain Debian bookworm image with systemd (for `systemd-analyze verify`) to install the .deb into.
#
# Why: no container registry is reachable, so the image is built like the PostgreSQL test images
# (lib/pg-image.sh): mmdebstrap from the host's Debian apt source, `docker import`ed, the rootfs
# tarball cached under ${TUSK_CACHE_DIR:-/var/cache/tusk-test} so a machine whose engine lost the
# image re-imports it in seconds. cargo-deb is pinned and `cargo install`ed once into the same cache
# (~3-5 min on 2 cores when cold; a no-op when the pinned version is there).
#
# Usage (bash, root):
#   source scripts/lib/package.sh
#   tusk_cargo_deb_install      # exports TUSK_TEST_CARGO_DEB (the cargo-deb binary)
#   tusk_package_image_build    # exports TUSK_TEST_PACKAGE_IMAGE (tusk-test/debian-systemd:bookworm)
#
# Environment:
#   TUSK_CACHE_DIR              install root and tarball cache (default /var/cache/tusk-test)
#   TUSK_CARGO_DEB_VERSION      cargo-deb version (default 3.8.0, needs Rust 1.85+)
#   TUSK_PACKAGE_IMAGE_REBUILD=1  build the image from scratch

[[ -n ${_TUSK_PACKAGE_SH:-} ]] && return 0
_TUSK_PACKAGE_SH=1
# shellcheck source=scripts/lib/pg-image.sh
source "$(dirname "${BASH_SOURCE[0]}")/pg-image.sh"

TUSK_CARGO_DEB_VERSION=${TUSK_CARGO_DEB_VERSION:-3.8.0}
# Bump when the mmdebstrap command or the import changes (invalidates cached tarball and image).
_TUSK_PACKAGE_RECIPE=2

tusk_cargo_deb_install() {
    local root=${TUSK_CACHE_DIR:-/var/cache/tusk-test}/cargo-deb log build
    declare -gx TUSK_TEST_CARGO_DEB=$root/bin/cargo-deb
    if grep -q "\"cargo-deb $TUSK_CARGO_DEB_VERSION " "$root/.crates.toml" 2>/dev/null && [[ -x $TUSK_TEST_CARGO_DEB ]]; then
        tusk_log "cargo-deb $TUSK_CARGO_DEB_VERSION is installed ($TUSK_TEST_CARGO_DEB)"
        return 0
    fi
    command -v cargo >/dev/null 2>&1 || { tusk_err "cargo not found: cargo-deb is installed with 'cargo install'"; return 1; }
    mkdir -p "$root" || return 1
    build=$(mktemp -d "${TMPDIR:-/tmp}/tusk-cargo-deb-build.XXXXXX") || return 1
    log=$build/cargo.log
    tusk_log "installing cargo-deb $TUSK_CARGO_DEB_VERSION with cargo into $root (one time; ~3-5 min on 2 cores) ..."
    # --target-dir: a private scratch dir, not tusk's CARGO_TARGET_DIR.
    if ! cargo install "cargo-deb@$TUSK_CARGO_DEB_VERSION" --locked --force \
        --root "$root" --target-dir "$build/target" >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        rm -rf -- "$build"
        tusk_err "cargo install cargo-deb@$TUSK_CARGO_DEB_VERSION failed"
        return 1
    fi
    rm -rf -- "$build"
    tusk_log "cargo-deb $TUSK_CARGO_DEB_VERSION installed"
}

tusk_package_image_build() {
    local suite=bookworm tag=tusk-test/debian-systemd:bookworm
    local cache=${TUSK_CACHE_DIR:-/var/cache/tusk-test} recipe tarball work rc=0 lockfd
    recipe="debian-systemd-$suite-r$_TUSK_PACKAGE_RECIPE"
    tarball=$cache/$recipe.tar.zst
    declare -gx TUSK_TEST_PACKAGE_IMAGE=$tag
    tusk_docker_check || return 1
    if [[ ${TUSK_PACKAGE_IMAGE_REBUILD:-0} != 1 &&
        $(docker image inspect -f '{{ index .Config.Labels "tusk.recipe" }}' "$tag" 2>/dev/null) == "$recipe" ]]; then
        tusk_log "image $tag is up to date ($recipe); skipping build"
        return 0
    fi
    mkdir -p "$cache" || return 1
    exec {lockfd}>"$cache/.lock"
    flock -w 1800 "$lockfd" || { tusk_err "timed out waiting for $cache/.lock"; exec {lockfd}>&-; return 1; }
    work=$(mktemp -d "$cache/build.XXXXXX") || { exec {lockfd}>&-; return 1; }
    tusk_on_exit "rm -rf -- '$work'"
    _tusk_package_image_build_in "$suite" "$tag" "$recipe" "$tarball" "$work" || rc=$?
    rm -rf -- "$work"
    tusk_cancel_exit "rm -rf -- '$work'"
    exec {lockfd}>&-
    return "$rc"
}

_tusk_package_image_build_in() {
    local suite=$1 tag=$2 recipe=$3 tarball=$4 work=$5 src srcfile host_suite
    if [[ ${TUSK_PACKAGE_IMAGE_REBUILD:-0} == 1 || ! -f $tarball ]]; then
        command -v mmdebstrap >/dev/null 2>&1 || tusk_apt_install mmdebstrap || return 1
        command -v zstd >/dev/null 2>&1 || tusk_apt_install zstd || return 1
        src=$(_tusk_apt_sources) || return 1
        srcfile="$work/$suite.list"
        [[ $src == *.sources ]] && srcfile="$work/$suite.sources"
        host_suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
        sed -e '/^[[:space:]]*#/d' -e "s/\\b$host_suite\\b/$suite/g" "$src" >"$srcfile" || return 1
        tusk_log "mmdebstrap: $suite + systemd, man-db (no docs) -> $tarball (~1 min)"
        # systemd for systemd-analyze, man-db because `systemd-analyze verify` runs `man` for each
        # Documentation=man:... reference; the package's own files under /usr/share/man and
        # /usr/share/doc must land, so only other packages' docs are left out (after the build).
        if ! mmdebstrap --quiet --variant=essential --include=systemd,man-db \
            --customize-hook='rm -rf "$1"/usr/share/doc/* "$1"/usr/share/man/* "$1"/usr/share/locale/* "$1"/usr/share/info/*' \
            "$suite" "$work/rootfs.tar" "$srcfile" >&2; then
            tusk_err "mmdebstrap failed for $suite + systemd"
            return 1
        fi
        zstd -T0 -q -f "$work/rootfs.tar" -o "$tarball.tmp" && mv -f "$tarball.tmp" "$tarball" ||
            { tusk_err "cannot write $tarball"; rm -f "$tarball.tmp"; return 1; }
        local f
        for f in "${tarball%-r*}"-r*.tar.zst; do # older recipes
            [[ $f == "$tarball" || ! -e $f ]] || rm -f -- "$f"
        done
    fi
    tusk_log "docker import ${tarball##*/} -> $tag"
    zstd -dc -q "$tarball" | docker import --change "LABEL tusk.recipe=$recipe tusk.test-image=1" \
        --change 'CMD ["sleep", "infinity"]' --change 'ENV LANG=C.UTF-8' \
        --message "tusk package test: Debian $suite with systemd" - "$tag" >/dev/null ||
        { tusk_err "docker import of $tarball failed"; return 1; }
}
