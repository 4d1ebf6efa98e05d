# shellcheck shell=bash
# scripts/lib/pg-image.sh — a local PostgreSQL Docker image, and a compose-like Mastodon container
# set, for tusk's "docker mode" tests.
#
# Why: no container registry is reachable (nothing can be pulled), so the image is built from
# Debian packages with mmdebstrap (recipe and measurements: shared/notes/test-infra.md §1) and
# `docker import`ed. The build takes ~1-2 min, so it is done once: it is skipped when the image
# tag exists with the same recipe label, and the rootfs tarball is cached (zstd) under
# ${TUSK_CACHE_DIR:-/var/cache/tusk-test}, keyed on suite + major + build date (reused for up to
# 7 days), and imported as tusk-test/postgres-rootfs:<key>. The entrypoint, env and STOPSIGNAL
# come from a thin docker/postgres/Dockerfile layer on top, so editing the entrypoint costs a ~8 s
# rebuild, and a machine whose engine lost its images re-imports the cached tarball in seconds.
# Concurrent builds are serialised with flock.
#
# Usage (bash, root):
#   source scripts/lib/pg-image.sh
#   tusk_docker_check || exit 1     # is the engine reachable? (clear message if not)
#   tusk_pg_image_build             # -> tusk-test/postgres:15 from bookworm (sets TUSK_PG_IMAGE_TAG)
#   tusk_pg_image_build trixie      # -> tusk-test/postgres:17;  also: bullseye (13), sid (18)
#   tusk_pg_image_build bookworm 15 my/tag:x
#   tusk_docker_up mastodon-        # containers mastodon-postgres, mastodon-web, -streaming, -sidekiq
#   docker exec mastodon-postgres pg_dump -U postgres postgres | head
#   psql -h "$TUSK_TEST_DOCKER_PG_IP" -U postgres -c 'select version()'
#   tusk_docker_down mastodon-      # also done automatically at shell exit
#
# tusk_docker_up PREFIX: project = PREFIX without a trailing -/_ (default "tusk-test"); network
# "<project>_default" (user-defined bridge); containers
#   ${PREFIX}postgres   the image's postgres (trust auth; POSTGRES_USER=postgres; db "postgres"),
#                       network alias "db", labels com.docker.compose.project=<project>,
#                       com.docker.compose.service=db (as in Mastodon's docker-compose.yml)
#   ${PREFIX}web, ${PREFIX}streaming, ${PREFIX}sidekiq
#                       same image running `sleep infinity`, services web/streaming/sidekiq,
#                       env DB_HOST=db DB_PORT=5432 DB_USER=postgres DB_NAME=postgres DB_PASS=
# and exports TUSK_TEST_DOCKER_PG_IP (the postgres container's IP, reachable from the host; no
# published ports), TUSK_TEST_DOCKER_PG_CONTAINER, TUSK_TEST_DOCKER_PROJECT,
# TUSK_TEST_DOCKER_NETWORK, TUSK_TEST_DOCKER_PREFIX. It never pulls.
#
# Environment:
#   TUSK_PG_IMAGE_SUITE / TUSK_PG_IMAGE_MAJOR / TUSK_PG_IMAGE  defaults for the build arguments
#   TUSK_TEST_DOCKER_IMAGE   image used by tusk_docker_up (default: tusk-test/postgres:15)
#   TUSK_CACHE_DIR           tarball cache (default /var/cache/tusk-test)
#   TUSK_PG_IMAGE_MAX_AGE_DAYS  reuse a cached tarball up to this many days old (default 7)
#   TUSK_PG_IMAGE_REBUILD=1  ignore the existing image and cached tarball, build from scratch
#   TUSK_APT_SOURCES         apt source file given to mmdebstrap (default: the host's Debian one)

[[ -n ${_TUSK_PG_IMAGE_SH:-} ]] && return 0
_TUSK_PG_IMAGE_SH=1
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

_TUSK_REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# Bump when the mmdebstrap command or the import --change list changes (invalidates cached
# tarballs and images).
_TUSK_ROOTFS_RECIPE=2

tusk_docker_check() {
    [[ -n ${_TUSK_DOCKER_OK:-} ]] && return 0
    if ! command -v docker >/dev/null 2>&1; then
        tusk_err "the docker CLI is not installed; docker-mode tests need a Docker Engine (or set TUSK_SKIP_DOCKER_TESTS=1)"
        return 1
    fi
    local out
    if ! out=$(timeout 20 docker version --format '{{.Server.Version}}' 2>&1); then
        tusk_err "the Docker Engine is unreachable (DOCKER_HOST=${DOCKER_HOST:-unix:///var/run/docker.sock}): ${out##*$'\n'}"
        tusk_err "start dockerd, or set TUSK_SKIP_DOCKER_TESTS=1 to skip docker-mode tests"
        return 1
    fi
    tusk_log "Docker Engine $out reachable"
    _TUSK_DOCKER_OK=1
}

_tusk_suite_major() {
    case $1 in
        bullseye) echo 13 ;;
        bookworm) echo 15 ;;
        trixie) echo 17 ;;
        sid | unstable | forky) echo 18 ;;
        *) return 1 ;;
    esac
}
_tusk_major_suite() {
    case $1 in
        13) echo bullseye ;;
        15) echo bookworm ;;
        17) echo trixie ;;
        18) echo sid ;;
        *) return 1 ;;
    esac
}

# The host's Debian apt source (deb822 .sources or a one-line .list), given to mmdebstrap.
_tusk_apt_sources() {
    if [[ -n ${TUSK_APT_SOURCES:-} ]]; then
        printf '%s\n' "$TUSK_APT_SOURCES"
        return 0
    fi
    local f
    for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        grep -qE '^[^#]*(/debian|debian-archive-keyring)' "$f" || continue
        printf '%s\n' "$f"
        return 0
    done
    tusk_err "no Debian apt source found in /etc/apt (set TUSK_APT_SOURCES)"
    return 1
}

# Label that identifies what went into an image: rootfs recipe + Dockerfile + entrypoint.
_tusk_image_recipe_id() {
    local suite=$1 major=$2
    {
        printf 'rootfs=%s suite=%s major=%s\n' "$_TUSK_ROOTFS_RECIPE" "$suite" "$major"
        cat "$_TUSK_REPO_ROOT/docker/postgres/Dockerfile" "$_TUSK_REPO_ROOT/docker/postgres/docker-entrypoint"
    } | sha256sum | cut -c1-16
}

_tusk_build_rootfs() { # SUITE MAJOR OUT.tar WORKDIR
    local suite=$1 major=$2 out=$3 work=$4 src
    command -v mmdebstrap >/dev/null 2>&1 || tusk_apt_install mmdebstrap || return 1
    src=$(_tusk_apt_sources) || return 1
    # Same mirror (and keyring), other suite: bookworm-security -> trixie-security etc.
    # mmdebstrap tells the format by the extension: .sources = deb822, else one-line format.
    local host_suite srcfile="$work/$suite.list"
    [[ $src == *.sources ]] && srcfile="$work/$suite.sources"
    host_suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
    sed -e '/^[[:space:]]*#/d' -e "s/\\b$host_suite\\b/$suite/g" "$src" >"$srcfile" || return 1
    tusk_log "mmdebstrap: $suite + postgresql-$major + redis-server (slim) -> rootfs tarball (1-2 min)"
    # Slim: no docs/man/locales, no LLVM JIT (libLLVM alone is 105 MB; JIT just reports unavailable),
    # and no packaged "main" cluster (the entrypoint runs initdb on first start).
    # redis-server (with redis-cli): the same image runs a compose deployment's Redis container
    # in the tests of Redis snapshots (tests/redis_backup.rs); nothing starts it by default.
    if ! mmdebstrap --quiet --variant=essential --include="postgresql-$major,redis-server" \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/lib/postgresql/*/lib/llvmjit*' \
        --dpkgopt='path-exclude=/usr/lib/postgresql/*/lib/bitcode/*' \
        --dpkgopt='path-exclude=/usr/lib/*-linux-gnu/libLLVM*' \
        --dpkgopt='path-exclude=/usr/lib/*-linux-gnu/libz3*' \
        --customize-hook="if [ -d \"\$1/etc/postgresql/$major/main\" ]; then chroot \"\$1\" pg_dropcluster $major main; fi" \
        "$suite" "$out" "$srcfile" >&2; then
        tusk_err "mmdebstrap failed for $suite/postgresql-$major"
        return 1
    fi
}

# tusk_pg_image_build [SUITE] [MAJOR] [TAG] — make sure the image exists; sets TUSK_PG_IMAGE_TAG.
tusk_pg_image_build() {
    local suite=${1:-${TUSK_PG_IMAGE_SUITE:-}} major=${2:-${TUSK_PG_IMAGE_MAJOR:-}} tag=${3:-${TUSK_PG_IMAGE:-}}
    if [[ -z $suite && -z $major ]]; then suite=bookworm; fi
    if [[ -z $major ]]; then
        major=$(_tusk_suite_major "$suite") || { tusk_err "unknown suite '$suite': give the PostgreSQL major too"; return 1; }
    fi
    if [[ -z $suite ]]; then
        suite=$(_tusk_major_suite "$major") || { tusk_err "no Debian suite known for PostgreSQL $major (13, 15, 17, 18 exist)"; return 1; }
    fi
    tag=${tag:-tusk-test/postgres:$major}
    local recipe_id
    recipe_id=$(_tusk_image_recipe_id "$suite" "$major") || return 1

    tusk_docker_check || return 1
    _tusk_image_current() {
        [[ $(docker image inspect -f '{{ index .Config.Labels "tusk.recipe" }}' "$tag" 2>/dev/null) == "$recipe_id" ]]
    }
    if [[ ${TUSK_PG_IMAGE_REBUILD:-0} != 1 ]] && _tusk_image_current; then
        tusk_log "image $tag is up to date (recipe $recipe_id); skipping build"
        TUSK_PG_IMAGE_TAG=$tag
        return 0
    fi

    local cache=${TUSK_CACHE_DIR:-/var/cache/tusk-test}
    mkdir -p "$cache" || { tusk_err "cannot create cache dir $cache (set TUSK_CACHE_DIR)"; return 1; }
    command -v zstd >/dev/null 2>&1 || tusk_apt_install zstd || return 1

    # One build at a time per cache dir (parallel test runs, or two suites being built).
    local lockfd
    exec {lockfd}>"$cache/.lock"
    if ! flock -w 1800 "$lockfd"; then
        tusk_err "timed out waiting for the image build lock $cache/.lock"
        exec {lockfd}>&-
        return 1
    fi
    local rc=0
    _tusk_pg_image_build_locked "$suite" "$major" "$tag" "$recipe_id" "$cache" || rc=$?
    exec {lockfd}>&-
    # shellcheck disable=SC2034 # for the caller
    ((rc == 0)) && TUSK_PG_IMAGE_TAG=$tag
    return "$rc"
}

_tusk_pg_image_build_locked() {
    local suite=$1 major=$2 tag=$3 recipe_id=$4 cache=$5
    if [[ ${TUSK_PG_IMAGE_REBUILD:-0} != 1 ]] && _tusk_image_current; then
        tusk_log "image $tag was built meanwhile; skipping build"
        return 0
    fi
    local t0=$SECONDS stem="pg$major-$suite-r$_TUSK_ROOTFS_RECIPE" today max_age f d tarball=''
    today=$(date -u +%Y%m%d)
    max_age=${TUSK_PG_IMAGE_MAX_AGE_DAYS:-7}
    if [[ ${TUSK_PG_IMAGE_REBUILD:-0} != 1 ]]; then
        # Newest cached tarball for this suite+major that is young enough (the Debian point
        # release may have moved on since; a week-old PostgreSQL minor is fine for tests).
        local cached=("$cache/$stem-"*.tar.zst) i
        for ((i = ${#cached[@]} - 1; i >= 0; i--)); do # glob order is sorted: newest date last
            f=${cached[i]}
            [[ -f $f ]] || continue
            d=${f##*-}; d=${d%.tar.zst}
            [[ $d =~ ^[0-9]{8}$ ]] || continue
            if (($(date -u -d "$today" +%s) - $(date -u -d "$d" +%s) <= max_age * 86400)); then
                tarball=$f
                break
            fi
        done
    fi

    local work rc=0
    rm -rf -- "$cache"/build.* # leftovers of an interrupted build (we hold the lock)
    work=$(mktemp -d "$cache/build.XXXXXX") || return 1
    tusk_on_exit "rm -rf -- '$work'"
    _tusk_pg_image_build_in "$work" || rc=$?
    rm -rf -- "$work"
    tusk_cancel_exit "rm -rf -- '$work'"
    ((rc == 0)) && tusk_log "image $tag ready in $((SECONDS - t0)) s"
    return "$rc"
}

# Runs in the locked section with $work as scratch space; uses the caller's locals.
_tusk_pg_image_build_in() {
    local work=$1 base
    if [[ -z $tarball ]]; then
        _tusk_build_rootfs "$suite" "$major" "$work/rootfs.tar" "$work" || return 1
        tarball="$cache/$stem-$today.tar.zst"
        if ! { zstd -T0 -q -f "$work/rootfs.tar" -o "$tarball.tmp" && mv -f "$tarball.tmp" "$tarball"; }; then
            tusk_err "cannot write $tarball"
            rm -f "$tarball.tmp"
            return 1
        fi
        # Keep only the tarball just written for this suite+major.
        for f in "$cache/pg$major-$suite-"*.tar.zst; do
            [[ $f == "$tarball" || ! -e $f ]] || rm -f -- "$f"
        done
        tusk_log "cached rootfs as $tarball ($(du -h "$tarball" | cut -f1))"
    fi

    # Base image = the rootfs as is, tagged after its tarball, imported once.
    f=${tarball##*/}
    base="tusk-test/postgres-rootfs:${f%.tar.zst}"
    if [[ ${TUSK_PG_IMAGE_REBUILD:-0} == 1 ]] || ! docker image inspect "$base" >/dev/null 2>&1; then
        tusk_log "docker import ${tarball##*/} -> $base"
        local changes=(
            --change "ENV PATH=/usr/lib/postgresql/$major/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
            --change 'ENV PGDATA=/var/lib/postgresql/data'
            --change 'ENV LANG=C.UTF-8'
            --change 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint"]'
            --change 'CMD []'
            --change 'EXPOSE 5432'
            --change "LABEL tusk.test-image=1 tusk.pg.suite=$suite tusk.pg.major=$major"
        )
        if [[ -f $work/rootfs.tar ]]; then
            docker import "${changes[@]}" --message "tusk test rootfs: Debian $suite postgresql-$major" "$work/rootfs.tar" "$base" >/dev/null
        else
            zstd -dc -q "$tarball" | docker import "${changes[@]}" --message "tusk test rootfs: Debian $suite postgresql-$major" - "$base" >/dev/null
        fi || { tusk_err "docker import of $tarball failed"; return 1; }
    fi

    # Top layer (entrypoint, env, STOPSIGNAL, labels) from a two-file context: seconds.
    mkdir -p "$work/ctx"
    sed "s/@RECIPE@/$recipe_id/g" "$_TUSK_REPO_ROOT/docker/postgres/Dockerfile" >"$work/ctx/Dockerfile"
    install -m 0755 "$_TUSK_REPO_ROOT/docker/postgres/docker-entrypoint" "$work/ctx/docker-entrypoint"
    tusk_log "docker build -> $tag (FROM $base)"
    # The legacy builder needs no buildx plugin and never pulls a local FROM.
    if ! DOCKER_BUILDKIT=0 docker build -q --build-arg "BASE=$base" -t "$tag" "$work/ctx" >"$work/build.log" 2>&1; then
        tusk_err "docker build of $tag failed:"
        cat "$work/build.log" >&2
        return 1
    fi
    # Drop superseded rootfs tags of this suite+major and our dangling old top layers.
    local old
    for old in $(docker image ls --format '{{.Repository}}:{{.Tag}}' "tusk-test/postgres-rootfs" 2>/dev/null); do
        [[ $old == "tusk-test/postgres-rootfs:pg$major-$suite-"* && $old != "$base" ]] && docker rmi "$old" >/dev/null 2>&1
    done
    docker image prune -f --filter label=tusk.test-image=1 >/dev/null 2>&1 || true
}

# --- compose-like container set -------------------------------------------------------------------

_tusk_docker_project() {
    local p=${1%[-_]}
    p=$(printf '%s' "$p" | tr '[:upper:]' '[:lower:]' | tr -cd 'a-z0-9_-')
    printf '%s\n' "${p:-tusk-test}"
}

tusk_docker_up() {
    local prefix=${1-}
    local project image net pg="${prefix}postgres" svc
    project=$(_tusk_docker_project "$prefix")
    net="${project}_default"
    image=${TUSK_TEST_DOCKER_IMAGE:-tusk-test/postgres:15}
    tusk_docker_check || return 1
    if ! docker image inspect "$image" >/dev/null 2>&1; then
        local major=${image##*:}
        [[ $image == tusk-test/postgres:* && $major =~ ^[0-9]+$ ]] ||
            { tusk_err "image $image does not exist (and is not a tusk-test/postgres:N image this script can build)"; return 1; }
        tusk_pg_image_build "" "$major" "$image" || return 1
    fi
    _tusk_docker_remove "$prefix" "$project" quiet
    tusk_on_exit "_tusk_docker_remove '$prefix' '$project'"

    local labels=(--label "com.docker.compose.project=$project" --label com.docker.compose.container-number=1
        --label com.docker.compose.oneoff=False --label tusk.test=1)
    docker network create --driver bridge --label "com.docker.compose.project=$project" \
        --label com.docker.compose.network=default --label tusk.test=1 "$net" >/dev/null ||
        { tusk_err "docker network create $net failed"; return 1; }
    docker run -d --name "$pg" --hostname db --network "$net" --network-alias db \
        "${labels[@]}" --label com.docker.compose.service=db \
        -e POSTGRES_USER=postgres -e POSTGRES_HOST_AUTH_METHOD=trust \
        "$image" >/dev/null || { tusk_err "docker run $pg failed"; return 1; }
    for svc in web streaming sidekiq; do
        docker run -d --name "${prefix}$svc" --hostname "$svc" --network "$net" --network-alias "$svc" \
            "${labels[@]}" --label "com.docker.compose.service=$svc" \
            -e RAILS_ENV=production -e DB_HOST=db -e DB_PORT=5432 -e DB_USER=postgres -e DB_NAME=postgres -e DB_PASS= \
            --entrypoint sleep "$image" infinity >/dev/null || { tusk_err "docker run ${prefix}$svc failed"; return 1; }
    done

    local deadline=$((SECONDS + 90))
    until docker exec "$pg" pg_isready -U postgres -q >/dev/null 2>&1; do
        if [[ $(docker inspect -f '{{.State.Running}}' "$pg" 2>/dev/null) != true ]] || ((SECONDS > deadline)); then
            tusk_err "$pg did not become ready; its log:"
            docker logs --tail 30 "$pg" >&2 || true
            return 1
        fi
        sleep 0.2
    done
    declare -gx TUSK_TEST_DOCKER_PG_IP
    TUSK_TEST_DOCKER_PG_IP=$(docker inspect -f "{{ (index .NetworkSettings.Networks \"$net\").IPAddress }}" "$pg")
    declare -gx TUSK_TEST_DOCKER_PG_CONTAINER=$pg TUSK_TEST_DOCKER_PROJECT=$project \
        TUSK_TEST_DOCKER_NETWORK=$net TUSK_TEST_DOCKER_PREFIX=$prefix
    tusk_log "compose-like set '$project' up: $pg ($TUSK_TEST_DOCKER_PG_IP), ${prefix}web, ${prefix}streaming, ${prefix}sidekiq on $net"
}

_tusk_docker_remove() { # PREFIX PROJECT [quiet]
    local prefix=$1 project=$2 svc names=()
    for svc in postgres web streaming sidekiq; do names+=("${prefix}$svc"); done
    docker rm -f -v "${names[@]}" >/dev/null 2>&1 || true
    docker network rm "${project}_default" >/dev/null 2>&1 || true
    [[ ${3-} == quiet ]] || tusk_log "compose-like set '$project' removed"
}

tusk_docker_down() {
    local prefix=${1-} project
    project=$(_tusk_docker_project "$prefix")
    _tusk_docker_remove "$prefix" "$project"
    tusk_cancel_exit "_tusk_docker_remove '$prefix' '$project'"
    if [[ ${TUSK_TEST_DOCKER_PREFIX-unset} == "$prefix" ]]; then
        unset TUSK_TEST_DOCKER_PG_IP TUSK_TEST_DOCKER_PG_CONTAINER TUSK_TEST_DOCKER_PROJECT \
            TUSK_TEST_DOCKER_NETWORK TUSK_TEST_DOCKER_PREFIX
    fi
}
