# shellcheck shell=bash
# scripts/lib/redis.sh — a throwaway Redis server and the `age` tool for the tests.
#
# Why: `tusk status` reads Sidekiq's state from Redis and whole-instance sets snapshot Redis, so
# the tests need a real redis-server (Debian's package); encrypted sets must open with the
# standard `age` command-line tool, so the tests need that binary too (Debian's `age` package).
#
# Functions:
#   tusk_redis_install     apt-get install redis-server, redis-tools and age when missing (idempotent)
#   tusk_redis_start NAME  start a redis-server with a password on 127.0.0.1 and a free port, in a
#                          temp dir removed at exit; exports NAME_URL (redis://:PW@127.0.0.1:PORT),
#                          NAME_PORT, NAME_PASSWORD, NAME_DIR (its data directory), NAME_BIN (the
#                          redis-server binary, for tests that start private servers),
#                          NAME_CLI (redis-cli)
#   TUSK_TEST_AGE_BIN      exported by tusk_redis_install: the `age` binary

# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

tusk_redis_install() {
    local missing=()
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
    command -v age >/dev/null 2>&1 || missing+=(age)
    if ((${#missing[@]})); then
        tusk_apt_install "${missing[@]}" || return 1
    fi
    # Debian's package starts a system-wide server on 6379; the tests never use it.
    export TUSK_TEST_AGE_BIN
    TUSK_TEST_AGE_BIN=$(command -v age)
    tusk_log "Redis: $(redis-server --version | awk '{print $3}'), age: $(age --version 2>&1)"
}

tusk_redis_start() {
    local name=${1:?usage: tusk_redis_start NAME}
    [[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || { tusk_err "tusk_redis_start: NAME must be a shell variable name, got '$name'"; return 1; }
    local dir password port attempt bin cli
    bin=$(command -v redis-server) || { tusk_err "redis-server is not installed"; return 1; }
    cli=$(command -v redis-cli) || { tusk_err "redis-cli is not installed"; return 1; }
    dir=$(mktemp -d "${TMPDIR:-/tmp}/tusk-redis-${name}.XXXXXX") || return 1
    tusk_on_exit "_tusk_redis_teardown '$name' '$dir'"
    password=$(tusk_random_hex 16)
    for ((attempt = 1; attempt <= 10; attempt++)); do
        port=$(_tusk_pick_port) || return 1
        # No persistence of its own: the tests ask for snapshots explicitly (BGSAVE, --rdb).
        "$bin" --bind 127.0.0.1 --port "$port" --requirepass "$password" --dir "$dir" \
            --save '' --appendonly no --daemonize yes --pidfile "$dir/redis.pid" \
            --logfile "$dir/redis.log" >/dev/null 2>&1 || true
        local i
        for ((i = 0; i < 50; i++)); do
            REDISCLI_AUTH=$password "$cli" -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG && break
            sleep 0.1
        done
        if REDISCLI_AUTH=$password "$cli" -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG; then
            break
        fi
        if grep -q 'Address already in use' "$dir/redis.log" 2>/dev/null; then
            tusk_warn "$name: port $port was taken, retrying with another one"
            port=''
            continue
        fi
        tusk_err "starting Redis $name failed:"
        tail -n 20 "$dir/redis.log" >&2
        return 1
    done
    [[ -n $port ]] || { tusk_err "Redis $name: could not bind a port after 10 attempts"; return 1; }
    declare -gx "${name}_URL=redis://:${password}@127.0.0.1:${port}"
    declare -gx "${name}_PORT=$port"
    declare -gx "${name}_PASSWORD=$password"
    declare -gx "${name}_DIR=$dir"
    declare -gx "${name}_BIN=$bin"
    declare -gx "${name}_CLI=$cli"
    tusk_log "Redis $name up: 127.0.0.1:$port, dir $dir"
}

_tusk_redis_teardown() {
    local name=$1 dir=$2
    [[ -d $dir ]] || return 0
    if [[ -f $dir/redis.pid ]]; then
        kill "$(cat "$dir/redis.pid")" 2>/dev/null || true
        local i
        for ((i = 0; i < 50; i++)); do
            kill -0 "$(cat "$dir/redis.pid" 2>/dev/null)" 2>/dev/null || break
            sleep 0.1
        done
    fi
    rm -rf -- "$dir"
    tusk_log "Redis $name stopped and removed"
}
