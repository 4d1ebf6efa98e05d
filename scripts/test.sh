#!/usr/bin/env bash
# scripts/test.sh — the one test command of tusk (CI runs it through .ci/run).
#
# Why: tusk's tests need real services that no machine has running: three throwaway PostgreSQL
# clusters for direct mode (a source, a fresh target where Mastodon's roles do not exist yet, and
# one that accepts TLS connections only, with a certificate from a throwaway CA),
# a local Postgres Docker image for docker mode (no registry is reachable; the image is built
# from Debian packages), and two local S3 servers for `tusk media` (s3s-fs, strict, on disk; moto,
# lax, in memory; see lib/s3.sh). This script installs what is missing, starts the clusters and S3
# servers, makes the image available, runs `cargo test`, and always stops what it started (also on
# failure or Ctrl-C).
# Setup before cargo: ~4 s on a warm machine; a cold one adds apt installs (~30-60 s), the image
# build (~40 s), `cargo install s3s-fs` (~4-6 min, kept in TUSK_CACHE_DIR), a pip install of
# moto (~40 s), and for the package test `cargo install cargo-deb` (~3-5 min, kept in
# TUSK_CACHE_DIR) and a Debian image with systemd (~1 min; lib/package.sh). CI's fresh clone compiles into a kept CARGO_TARGET_DIR (see below), so only the
# first CI run on a machine pays the ~5 min cold dependency build.
#
# Usage:  scripts/test.sh [CARGO TEST ARGS...] [-- TEST BINARY ARGS...]   (any cwd)
#   e.g.  scripts/test.sh --test backup_restore -- --nocapture
# Runs:   cargo test --locked --no-fail-fast [ARGS] -- --test-threads=2 [TEST BINARY ARGS]
#
# Exported to the tests:
#   TUSK_TEST_PG_URL, TUSK_TEST_PG2_URL   postgresql://postgres:<pw>@127.0.0.1:<port>/postgres
#   TUSK_TEST_PG_{PORT,PASSWORD,DIR,HOST,BIN} and TUSK_TEST_PG2_{...}   (see lib/pg-cluster.sh)
#   TUSK_TEST_PG_BIN                      /usr/lib/postgresql/<N>/bin (pg_dump, psql, ... of the clusters)
#   TUSK_TEST_PG_TLS_URL                  postgresql://postgres:<pw>@127.0.0.1:<port>/postgres of the TLS
#                                         cluster: ssl=on, non-TLS TCP connections refused (hostnossl reject)
#   TUSK_TEST_PG_TLS_CA                   PEM of the throwaway CA that signed its certificate
#                                         (subjectAltName DNS:localhost, IP:127.0.0.1)
#   TUSK_TEST_PG_TLS_OTHER_CA             PEM of a second, unrelated CA (for the negative tests)
#   TUSK_TEST_PG_TLS_ALT_HOST             127.0.0.2: the same server by an address not in its certificate
#   TUSK_TEST_PG_TLS_{PORT,PASSWORD,DIR,HOST,BIN}   as for the other clusters
#   TUSK_TEST_DOCKER_IMAGE                tusk-test/postgres:15 (unless docker tests are skipped;
#                                         containers are created by the Rust tests themselves)
#   TUSK_TEST_DOCKER_IMAGE_<N>            one per TUSK_TEST_DOCKER_EXTRA_MAJORS entry
#   TUSK_TEST_PACKAGE_IMAGE               tusk-test/debian-systemd:bookworm, for tests/package.rs
#   TUSK_TEST_CARGO_DEB                   the cargo-deb binary (pinned; lib/package.sh)
#   TUSK_SKIP_DOCKER_TESTS                passed through as given
#   TUSK_TEST_S3_ENDPOINT                 http://127.0.0.1:<port>, s3s-fs 0.14.1 (path-style, no TLS;
#                                         strict SigV4/Content-MD5/CRC32; no buckets: tests create them)
#   TUSK_TEST_S3_{ACCESS_KEY,SECRET_KEY,REGION}   tusk-test-key / tusk-test-secret / us-east-1
#   TUSK_TEST_S3_DIR                      s3s-fs data dir: <bucket>/<key> files, .bucket-*.json sidecars
#   TUSK_TEST_S3_{PORT,PID,LOG,START_CMD} see lib/s3.sh (START_CMD restarts the same server)
#   TUSK_TEST_S3FS_BIN                    the s3s-fs binary, for tests that run (and kill) a private
#                                         instance: BIN --host 127.0.0.1 --port P --access-key K
#                                         --secret-key S DATA_DIR
#   TUSK_TEST_MOTO_ENDPOINT               http://127.0.0.1:<port>, moto_server (accepts any keys)
#   TUSK_TEST_MOTO_{ACCESS_KEY,SECRET_KEY,REGION,PORT,PID,LOG,DIR,START_CMD}   as for S3
#   TUSK_SKIP_S3_TESTS                    passed through as given
#   TUSK_TEST_REDIS_URL                   redis://:<pw>@127.0.0.1:<port>, a throwaway redis-server (lib/redis.sh)
#   TUSK_TEST_REDIS_{PORT,PASSWORD,DIR,BIN,CLI}   its port, password, data dir, redis-server and redis-cli
#   TUSK_TEST_AGE_BIN                     the `age` command-line tool (Debian's package)
#
# Environment knobs:
#   TUSK_SKIP_DOCKER_TESTS=1        don't need a Docker Engine; no image is built (each skipped test
#                                   prints SKIPPED on stderr; refused under CI=true)
#   TUSK_SKIP_S3_TESTS=1            don't install or start the S3 servers (no TUSK_TEST_S3_*/MOTO_*)
#   TUSK_TEST_DOCKER_EXTRA_MAJORS   default "13 17": also build tusk-test/postgres:13 and :17 (bullseye,
#                                   trixie; ~40 s each when cold) for cross-major tests
#   TUSK_TEST_ONLY_SERVICES=1       start the services, print their exports (and write them to
#                                   target/tusk-test-services.env), then wait until Ctrl-C and clean
#                                   up; for running `cargo test`/a debugger by hand in another shell
#   TUSK_TEST_ONLY_SERVICES=exit    same, but check the services and exit at once (stops them)
#   TUSK_PG_DURABLE=1               clusters with fsync on (see lib/pg-cluster.sh)
#   TUSK_CACHE_DIR                  image tarball cache, s3s-fs/ install root, venv/ with moto
#                                   (default /var/cache/tusk-test)
#   CARGO_TARGET_DIR                honoured; under CI=true it defaults to $TUSK_CACHE_DIR/cargo-target
#                                   so that CI's fresh clones reuse compiled dependencies
#                                   (TUSK_CARGO_TARGET_CACHE=0 turns that off)
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"
# shellcheck source=scripts/lib/pg-cluster.sh
source scripts/lib/pg-cluster.sh
# shellcheck source=scripts/lib/pg-image.sh
source scripts/lib/pg-image.sh
# shellcheck source=scripts/lib/s3.sh
source scripts/lib/s3.sh
# shellcheck source=scripts/lib/package.sh
source scripts/lib/package.sh
# shellcheck source=scripts/lib/redis.sh
source scripts/lib/redis.sh

T_START=$SECONDS
STEP_NAMES=() STEP_RESULTS=()
CURRENT_STEP='' STEP_T0=0 STEP_NO=0
STEP_TOTAL=6
ONLY_SERVICES=${TUSK_TEST_ONLY_SERVICES:-}
[[ -n $ONLY_SERVICES && $ONLY_SERVICES != 0 ]] && STEP_TOTAL=4
SKIP_S3=${TUSK_SKIP_S3_TESTS:-0}
if [[ ${CI:-} == true && ( $SKIP_S3 == 1 || ${TUSK_SKIP_DOCKER_TESTS:-0} == 1 ) ]]; then
    tusk_err "CI never skips tests: unset TUSK_SKIP_S3_TESTS and TUSK_SKIP_DOCKER_TESTS"
    exit 2
fi

step() {
    end_step ok
    STEP_NO=$((STEP_NO + 1))
    CURRENT_STEP=$1 STEP_T0=$SECONDS
    printf '\n==> [%d/%d] %s\n' "$STEP_NO" "$STEP_TOTAL" "$1" >&2
}
end_step() { # RESULT
    [[ -n $CURRENT_STEP ]] || return 0
    STEP_NAMES+=("$CURRENT_STEP")
    STEP_RESULTS+=("$1 ($((SECONDS - STEP_T0)) s)")
    CURRENT_STEP=''
}
summary() {
    local rc=${_TUSK_EXIT_RC:-$?} i
    end_step "FAILED"
    {
        printf '\n==> summary\n'
        for i in "${!STEP_NAMES[@]}"; do
            printf '    %-34s %s\n' "${STEP_NAMES[i]}" "${STEP_RESULTS[i]}"
        done
        if ((rc == 0)); then
            printf 'tusk test.sh: OK in %d s\n' $((SECONDS - T_START))
        else
            printf 'tusk test.sh: FAILED (exit %d) after %d s\n' "$rc" $((SECONDS - T_START))
        fi
    } >&2
}
# Registered first, so it runs last: after the clusters and containers are gone.
tusk_on_exit summary

# --- 1 ---------------------------------------------------------------------------------------------
step "install missing tools"
tusk_pg_install
if ! command -v cargo >/dev/null 2>&1; then
    for d in "${CARGO_HOME:-$HOME/.cargo}/bin" /root/.cargo/bin; do
        [[ -x $d/cargo ]] && { PATH="$d:$PATH"; break; }
    done
fi
if [[ -z $ONLY_SERVICES || $ONLY_SERVICES == 0 ]] && ! command -v cargo >/dev/null 2>&1; then
    tusk_err "cargo not found (PATH=$PATH); install the Rust toolchain (rustup) first"
    exit 1
fi
command -v cargo >/dev/null 2>&1 && tusk_log "$(cargo --version)"
tusk_redis_install # redis-server, redis-tools, age (apt, ~10 s once)
if [[ $SKIP_S3 != 1 ]]; then
    tusk_s3_install # s3s-fs (cargo install, ~5 min once) + moto (pip, ~40 s once); no-ops when warm
fi

# --- 2 ---------------------------------------------------------------------------------------------
step "start PostgreSQL clusters and Redis"
tusk_pg_start TUSK_TEST_PG
tusk_pg_start TUSK_TEST_PG2
tusk_pg_start TUSK_TEST_PG_TLS tls
export TUSK_TEST_PG_BIN TUSK_TEST_PG_URL TUSK_TEST_PG2_URL TUSK_TEST_PG_TLS_URL
tusk_redis_start TUSK_TEST_REDIS

# --- 3 ---------------------------------------------------------------------------------------------
if [[ $SKIP_S3 == 1 ]]; then
    step "S3 servers (skipped: TUSK_SKIP_S3_TESTS=1)"
    unset TUSK_TEST_S3_ENDPOINT TUSK_TEST_MOTO_ENDPOINT TUSK_TEST_S3FS_BIN
else
    step "start S3 servers (s3s-fs, moto)"
    tusk_s3_start TUSK_TEST_S3
    tusk_moto_start TUSK_TEST_MOTO
fi

# --- 4 ---------------------------------------------------------------------------------------------
if [[ ${TUSK_SKIP_DOCKER_TESTS:-0} == 1 ]]; then
    step "docker image (skipped: TUSK_SKIP_DOCKER_TESTS=1)"
    unset TUSK_TEST_DOCKER_IMAGE
else
    step "docker test image"
    if ! tusk_docker_check; then
        tusk_err "docker-mode tests need a reachable Docker Engine; set TUSK_SKIP_DOCKER_TESTS=1 to run without them"
        exit 1
    fi
    image=${TUSK_TEST_DOCKER_IMAGE:-tusk-test/postgres:15}
    if [[ $image =~ ^tusk-test/postgres:([0-9]+)$ ]]; then
        tusk_pg_image_build "" "${BASH_REMATCH[1]}" "$image"
    elif ! docker image inspect "$image" >/dev/null 2>&1; then
        tusk_err "TUSK_TEST_DOCKER_IMAGE=$image does not exist locally (and cannot be pulled)"
        exit 1
    fi
    export TUSK_TEST_DOCKER_IMAGE=$image
    # Migrations across majors (tests/migrate.rs) need 13 and 17 beside the default 15.
    for major in ${TUSK_TEST_DOCKER_EXTRA_MAJORS-13 17}; do
        tusk_pg_image_build "" "$major" "tusk-test/postgres:$major"
        export "TUSK_TEST_DOCKER_IMAGE_$major=tusk-test/postgres:$major"
    done
    # The Debian package test (tests/package.rs): cargo-deb and a bookworm image with systemd.
    tusk_package_image_build  # exports TUSK_TEST_PACKAGE_IMAGE (~1 min once, then cached)
    tusk_cargo_deb_install    # exports TUSK_TEST_CARGO_DEB (cargo install, ~3-5 min once)
fi

# --- 5 ---------------------------------------------------------------------------------------------
print_exports() {
    local v
    for v in $(compgen -e | grep -E '^TUSK_(TEST_|SKIP_DOCKER_TESTS$|SKIP_S3_TESTS$)' | grep -vx TUSK_TEST_ONLY_SERVICES | sort); do
        printf 'export %s=%q\n' "$v" "${!v}"
    done
}

if [[ -n $ONLY_SERVICES && $ONLY_SERVICES != 0 ]]; then
    end_step ok
    env_file=$REPO_ROOT/target/tusk-test-services.env
    mkdir -p "$(dirname "$env_file")"
    print_exports >"$env_file"
    printf '\n# services are up; in another shell: source %s\n' "$env_file"
    print_exports
    psql "$TUSK_TEST_PG_URL" -Atqc 'select 1' >/dev/null
    psql "$TUSK_TEST_PG2_URL" -Atqc 'select 1' >/dev/null
    psql "$TUSK_TEST_PG_TLS_URL?sslmode=verify-full&sslrootcert=$TUSK_TEST_PG_TLS_CA" -Atqc 'select 1' >/dev/null
    tusk_log "the three clusters answer over TCP with their passwords (the TLS one with verify-full)"
    if [[ $SKIP_S3 != 1 ]]; then
        _tusk_http_answers "$TUSK_TEST_S3_ENDPOINT/" && _tusk_http_answers "$TUSK_TEST_MOTO_ENDPOINT/"
        tusk_log "both S3 servers answer HTTP"
    fi
    if [[ $ONLY_SERVICES == exit ]]; then
        rm -f "$env_file"
        exit 0
    fi
    tusk_on_exit "rm -f '$env_file'"
    tusk_log "waiting; press Ctrl-C (or send SIGTERM to $$) to stop the services"
    trap 'exit 0' INT TERM HUP # stopping is the normal end here; the EXIT trap cleans up
    sleep infinity &
    tusk_on_exit "kill $! 2>/dev/null"
    wait $! || true
    exit 0
fi

if [[ ${CI:-} == true && -z ${CARGO_TARGET_DIR:-} && ${TUSK_CARGO_TARGET_CACHE:-1} != 0 ]]; then
    export CARGO_TARGET_DIR=${TUSK_CACHE_DIR:-/var/cache/tusk-test}/cargo-target
    mkdir -p "$CARGO_TARGET_DIR"
    tusk_log "CI: CARGO_TARGET_DIR=$CARGO_TARGET_DIR (kept between runs on this machine)"
fi

cargo_args=() test_args=()
seen_dashdash=0
for a in "$@"; do
    if ((seen_dashdash)); then
        test_args+=("$a")
    elif [[ $a == -- ]]; then
        seen_dashdash=1
    else
        cargo_args+=("$a")
    fi
done
[[ " ${test_args[*]-} " == *" --test-threads"* ]] || test_args=(--test-threads=2 "${test_args[@]}")

step "library builds without clap"
# The layer rule's proof: the library (src/lib.rs) never uses clap, so it
# builds with the 'cli' feature (and thereby clap) left out.
cargo build --locked --lib --no-default-features
if cargo tree --locked --no-default-features -e normal --prefix none | grep -q '^clap'; then
    tusk_err "clap is in the library's dependency graph without the cli feature"
    exit 1
fi

step "cargo test"
tusk_log "cargo test --locked --no-fail-fast ${cargo_args[*]-} -- ${test_args[*]}"
set +e
cargo test --locked --no-fail-fast "${cargo_args[@]}" -- "${test_args[@]}"
cargo_rc=$?
set -e
if ((cargo_rc != 0)); then
    end_step "FAILED (exit $cargo_rc)"
    exit "$cargo_rc"
fi
end_step ok
