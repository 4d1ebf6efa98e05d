# shellcheck shell=bash
# scripts/lib/common.sh — small helpers shared by the test-infrastructure libraries
# (pg-cluster.sh, pg-image.sh, s3.sh) and scripts/test.sh.
#
# Why: the libraries are sourced into one shell, so they share one apt-get update, one EXIT trap
# that runs every registered cleanup (in reverse order, also on failure or Ctrl-C), and one style
# of log line. Sourcing it twice is harmless.
#
# Functions:
#   tusk_log / tusk_warn / tusk_err MSG...   progress / warning / error line on stderr ("[tusk-test] ...")
#   tusk_apt_install PKG...    apt-get install -y the given packages; runs apt-get update once per shell
#   tusk_on_exit CMD           run CMD (a string, eval'd) at shell exit; last registered runs first;
#                              CMD can read the script's exit status in $_TUSK_EXIT_RC
#   tusk_cancel_exit CMD       forget a registered CMD (after it was run by hand)
#   tusk_random_hex N          N random bytes as 2N hex digits
#   _tusk_pick_port            a TCP port in 20000-32000 that nothing listens on (below the kernel's
#                              ephemeral range 32768-60999; the caller retries if the bind loses a race)

[[ -n ${_TUSK_COMMON_SH:-} ]] && return 0
_TUSK_COMMON_SH=1

tusk_log() { printf '[tusk-test] %s\n' "$*" >&2; }
tusk_warn() { printf '[tusk-test] WARNING: %s\n' "$*" >&2; }
tusk_err() { printf '[tusk-test] ERROR: %s\n' "$*" >&2; }

tusk_apt_install() {
    (($# > 0)) || return 0
    if ((EUID != 0)); then
        tusk_err "need root to install missing packages: $* (run as root or install them yourself)"
        return 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    local log
    log=$(mktemp "${TMPDIR:-/tmp}/tusk-apt.XXXXXX")
    if [[ -z ${_TUSK_APT_UPDATED:-} ]]; then
        tusk_log "apt-get update"
        if ! apt-get update >"$log" 2>&1; then
            tail -n 20 "$log" >&2; rm -f "$log"
            tusk_err "apt-get update failed"
            return 1
        fi
        _TUSK_APT_UPDATED=1
    fi
    tusk_log "apt-get install -y $*"
    if ! apt-get install -y -o Dpkg::Use-Pty=0 "$@" >"$log" 2>&1; then
        tail -n 30 "$log" >&2; rm -f "$log"
        tusk_err "apt-get install $* failed"
        return 1
    fi
    rm -f "$log"
}

# --- exit-time cleanups ------------------------------------------------------------------------
_TUSK_CLEANUPS=()

_tusk_run_cleanups() {
    local rc=$? i
    _TUSK_EXIT_RC=$rc # for cleanups that report the outcome (they run after other cleanups' $?)
    # `scripts/test.sh | tee log` + Ctrl-C kills tee first: a log line must then not kill us
    # (SIGPIPE) half-way through stopping the clusters.
    trap '' PIPE
    for ((i = ${#_TUSK_CLEANUPS[@]} - 1; i >= 0; i--)); do
        [[ -n ${_TUSK_CLEANUPS[i]} ]] || continue
        eval "${_TUSK_CLEANUPS[i]}" || true
    done
    _TUSK_CLEANUPS=()
    return "$rc"
}

tusk_on_exit() {
    _TUSK_CLEANUPS+=("$1")
    if [[ -z ${_TUSK_TRAP_SET:-} ]]; then
        trap _tusk_run_cleanups EXIT
        # In a script, a signal ends it through the EXIT trap, with the usual 128+N status.
        # (Not in an interactive shell that sourced us: Ctrl-C there must not close the shell.)
        if [[ $- != *i* ]]; then
            trap 'exit 130' INT
            trap 'exit 143' TERM
            trap 'exit 129' HUP
        fi
        _TUSK_TRAP_SET=1
    fi
}

tusk_cancel_exit() {
    local i
    for i in "${!_TUSK_CLEANUPS[@]}"; do
        [[ ${_TUSK_CLEANUPS[i]} == "$1" ]] && _TUSK_CLEANUPS[i]=''
    done
    return 0
}

tusk_random_hex() {
    od -An -N"${1:-16}" -tx1 /dev/urandom | tr -d ' \n'
}

_tusk_port_in_use() {
    # ss -H: no header; any listening TCP socket on that port (any address) counts as taken.
    # Without ss (iproute2) we skip the check: a taken port then fails the bind, and we retry.
    command -v ss >/dev/null 2>&1 || return 1
    [[ -n $(ss -Htln "sport = :$1" 2>/dev/null) ]]
}

_tusk_pick_port() {
    local tries port
    for ((tries = 0; tries < 200; tries++)); do
        port=$((20000 + (RANDOM * 32768 + RANDOM) % 12001))
        _tusk_port_in_use "$port" || { printf '%s\n' "$port"; return 0; }
    done
    tusk_err "no free TCP port found in 20000-32000"
    return 1
}
