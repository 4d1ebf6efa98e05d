# shellcheck shell=bash
# scripts/lib/pg-cluster.sh — throwaway local PostgreSQL clusters for tusk's "direct mode" tests.
#
# Why: tests need real servers (a source, and a fresh target where no Mastodon roles exist yet),
# but must leave no global state behind and must not collide with a packaged cluster, another test
# run, or the kernel's ephemeral ports (32768-60999; see shared/notes/test-infra.md §3). So each
# cluster lives in its own mktemp dir (data + log + unix socket), listens only on 127.0.0.1 on a
# port picked free in 20000-32000 (retried if the bind still loses a race), and is stopped and
# deleted at exit. initdb+start takes about one second.
#
# Usage (bash, as root or as an ordinary user that can run initdb):
#   source scripts/lib/pg-cluster.sh
#   tusk_pg_install                 # apt-installs postgresql + zstd only when missing (needs root then)
#   tusk_pg_start TUSK_TEST_PG      # exports TUSK_TEST_PG_URL _PORT _DIR _PASSWORD _BIN _HOST
#   psql "$TUSK_TEST_PG_URL" -c 'select 1'
#   tusk_pg_stop TUSK_TEST_PG       # also done automatically at shell exit
#   tusk_pg_start TUSK_TEST_PG_TLS tls   # a cluster that accepts TLS connections only (see below)
#
# tusk_pg_start NAME exports:
#   NAME_URL       postgresql://postgres:<password>@127.0.0.1:<port>/postgres
#   NAME_PORT      TCP port on 127.0.0.1
#   NAME_PASSWORD  random hex password of the superuser "postgres" (scram-sha-256 over TCP)
#   NAME_DIR       temp dir: data/ (PGDATA), log, and the unix socket (local connections: trust)
#   NAME_HOST      same as NAME_DIR, usable as PGHOST for socket connections
#   NAME_BIN       the server's bin dir, e.g. /usr/lib/postgresql/15/bin (pg_dump, psql, ...)
#
# With "tls" as second argument the cluster runs with ssl=on and a server certificate from a
# throwaway CA made with openssl at start (EC P-256, valid 2 days; subjectAltName DNS:localhost and
# IP:127.0.0.1). It also listens on 127.0.0.2, an address the certificate does not name, and its
# pg_hba.conf has "hostssl ... scram-sha-256" and "hostnossl ... reject" for TCP, so a client that
# does not use TLS is refused (the unix socket stays trust). It also exports:
#   NAME_CA        PEM file of the CA that signed the server's certificate
#   NAME_OTHER_CA  PEM file of a second, unrelated CA (signed nothing the server has)
#   NAME_ALT_HOST  127.0.0.2: reaches the same server under a name not in its certificate
# Generating the keys and certificates takes well under a second.
#
# Environment:
#   TUSK_PG_BIN      bin dir to use (default: newest /usr/lib/postgresql/*/bin)
#   TUSK_PG_DURABLE  1 = keep fsync/synchronous_commit/full_page_writes on (for timing restores);
#                    default off, which is much faster and fine for throwaway data
#   TUSK_PG_OPTS     extra postgres options appended to the command line, e.g. "-c max_connections=200"
#   TMPDIR           where the temp dirs go (default /tmp)

[[ -n ${_TUSK_PG_CLUSTER_SH:-} ]] && return 0
_TUSK_PG_CLUSTER_SH=1
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# Prints the bin dir of the newest installed server, or fails.
tusk_pg_bin() {
    if [[ -n ${TUSK_PG_BIN:-} ]]; then
        [[ -x $TUSK_PG_BIN/postgres ]] || { tusk_err "TUSK_PG_BIN=$TUSK_PG_BIN has no postgres binary"; return 1; }
        printf '%s\n' "$TUSK_PG_BIN"
        return 0
    fi
    local bins
    bins=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n1)
    [[ -n $bins && -x $bins/postgres ]] || { tusk_err "no PostgreSQL server found under /usr/lib/postgresql (run tusk_pg_install)"; return 1; }
    printf '%s\n' "$bins"
}

# Idempotent: installs the Debian PostgreSQL server+client, zstd and openssl (the TLS cluster's
# throwaway CA) only if they are missing.
tusk_pg_install() {
    local missing=()
    if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/pg_dump >/dev/null 2>&1; then
        missing+=(postgresql)
    fi
    command -v zstd >/dev/null 2>&1 || missing+=(zstd)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    if ((${#missing[@]})); then
        tusk_apt_install "${missing[@]}" || return 1
    fi
    local bin
    bin=$(tusk_pg_bin) || return 1
    if ((EUID == 0)) && ! id -u postgres >/dev/null 2>&1; then
        tusk_err "OS user 'postgres' is missing (the postgresql package normally creates it)"
        return 1
    fi
    tusk_log "PostgreSQL: $("$bin/postgres" --version)"
}

# Runs a command as the postgres OS user when we are root (initdb/postgres refuse root).
_tusk_as_pg() {
    if ((EUID == 0)); then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# Makes a throwaway CA, a server certificate it signs (for localhost and 127.0.0.1) and a second,
# unrelated CA in DIR: ca.crt, other-ca.crt, server.crt, server.key.
_tusk_pg_tls_files() {
    local dir=$1 ca
    mkdir -p "$dir" || return 1
    printf '%s\n' 'subjectAltName=DNS:localhost,IP:127.0.0.1' 'basicConstraints=critical,CA:FALSE' \
        'keyUsage=critical,digitalSignature' 'extendedKeyUsage=serverAuth' >"$dir/server.ext"
    for ca in ca other-ca; do
        openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -days 2 \
            -subj "/CN=tusk test $ca $(tusk_random_hex 4)" -keyout "$dir/$ca.key" -out "$dir/$ca.crt" \
            -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
            >>"$dir/openssl.log" 2>&1 || return 1
    done
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -subj /CN=localhost \
        -keyout "$dir/server.key" -out "$dir/server.csr" >>"$dir/openssl.log" 2>&1 &&
        openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
            -days 2 -extfile "$dir/server.ext" -out "$dir/server.crt" >>"$dir/openssl.log" 2>&1 || return 1
    chmod 600 "$dir/server.key"
}

tusk_pg_start() {
    local name=${1:?usage: tusk_pg_start NAME [tls]} tls=${2:-}
    [[ -z $tls || $tls == tls ]] || { tusk_err "tusk_pg_start: second argument must be 'tls', got '$tls'"; return 1; }
    [[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || { tusk_err "tusk_pg_start: NAME must be a shell variable name, got '$name'"; return 1; }
    local dirvar="${name}_DIR"
    if [[ -n ${!dirvar:-} && -d ${!dirvar} ]]; then
        tusk_err "cluster $name is already running in ${!dirvar}"
        return 1
    fi
    local bin dir password attempt port opts
    bin=$(tusk_pg_bin) || return 1
    dir=$(mktemp -d "${TMPDIR:-/tmp}/tusk-pg-${name}.XXXXXX") || return 1
    # Register removal first, so that a failure half-way still leaves nothing behind.
    tusk_on_exit "_tusk_pg_teardown '$name' '$bin' '$dir'"
    ((EUID == 0)) && chown postgres:postgres "$dir"
    chmod 700 "$dir"
    password=$(tusk_random_hex 16)
    (umask 077; printf '%s\n' "$password" >"$dir/pwfile")
    ((EUID == 0)) && chown postgres:postgres "$dir/pwfile"
    if ! _tusk_as_pg "$bin/initdb" -D "$dir/data" -U postgres --pwfile="$dir/pwfile" \
        --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 -N \
        >"$dir/initdb.log" 2>&1; then
        tusk_err "initdb for $name failed:"
        cat "$dir/initdb.log" >&2
        return 1
    fi
    rm -f "$dir/pwfile"

    opts="-k $dir -c listen_addresses=127.0.0.1"
    if [[ -n $tls ]]; then
        if ! _tusk_pg_tls_files "$dir/tls"; then
            tusk_err "making the TLS certificates for $name failed:"
            cat "$dir/tls/openssl.log" >&2
            return 1
        fi
        ((EUID == 0)) && chown -R postgres:postgres "$dir/tls"
        printf '%s\n' 'local all all trust' 'local replication all trust' \
            'hostssl all all 127.0.0.0/8 scram-sha-256' 'hostnossl all all 127.0.0.0/8 reject' \
            >"$dir/data/pg_hba.conf"
        opts="-k $dir -c listen_addresses=127.0.0.1,127.0.0.2 -c ssl=on"
        opts+=" -c ssl_cert_file=$dir/tls/server.crt -c ssl_key_file=$dir/tls/server.key"
    fi
    if [[ ${TUSK_PG_DURABLE:-0} != 1 ]]; then
        opts+=" -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    fi
    [[ -n ${TUSK_PG_OPTS:-} ]] && opts+=" $TUSK_PG_OPTS"

    # The port can be taken between the check and the bind (another test run starting at the same
    # time): then postgres fails with "could not bind" / "could not create any TCP/IP sockets"
    # and we simply try another port.
    for ((attempt = 1; attempt <= 10; attempt++)); do
        port=$(_tusk_pick_port) || return 1
        : >"$dir/log"
        ((EUID == 0)) && chown postgres:postgres "$dir/log"
        if _tusk_as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 start \
            -o "-p $port $opts" >/dev/null 2>&1; then
            break
        fi
        if grep -qE 'could not bind|could not create any TCP/IP sockets|Address already in use|could not create lock file' "$dir/log"; then
            tusk_warn "$name: port $port was taken, retrying with another one"
            port=''
            continue
        fi
        tusk_err "starting cluster $name failed; server log:"
        tail -n 30 "$dir/log" >&2
        return 1
    done
    [[ -n $port ]] || { tusk_err "cluster $name: could not bind a port after 10 attempts"; return 1; }

    declare -gx "${name}_URL=postgresql://postgres:${password}@127.0.0.1:${port}/postgres"
    declare -gx "${name}_PORT=$port"
    declare -gx "${name}_PASSWORD=$password"
    declare -gx "${name}_DIR=$dir"
    declare -gx "${name}_HOST=$dir"
    declare -gx "${name}_BIN=$bin"
    if [[ -n $tls ]]; then
        declare -gx "${name}_CA=$dir/tls/ca.crt"
        declare -gx "${name}_OTHER_CA=$dir/tls/other-ca.crt"
        declare -gx "${name}_ALT_HOST=127.0.0.2"
    fi
    tusk_log "cluster $name up: 127.0.0.1:$port${tls:+ (TLS only)}, dir $dir ($("$bin/postgres" --version | awk '{print $3}'))"
}

# Stops (fast) and deletes a cluster; safe to call twice, or for a cluster that never started.
_tusk_pg_teardown() {
    local name=$1 bin=$2 dir=$3
    [[ -d $dir ]] || return 0
    if [[ -f $dir/data/postmaster.pid ]]; then
        _tusk_as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null 2>&1 ||
            _tusk_as_pg "$bin/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
    fi
    rm -rf -- "$dir"
    tusk_log "cluster $name stopped and removed"
}

tusk_pg_stop() {
    local name=${1:?usage: tusk_pg_stop NAME}
    local dirvar="${name}_DIR" binvar="${name}_BIN"
    local dir=${!dirvar:-} bin=${!binvar:-}
    [[ -n $dir ]] || return 0
    _tusk_pg_teardown "$name" "$bin" "$dir"
    tusk_cancel_exit "_tusk_pg_teardown '$name' '$bin' '$dir'"
    unset "${name}_URL" "${name}_PORT" "${name}_PASSWORD" "${name}_DIR" "${name}_HOST" "${name}_BIN" \
        "${name}_CA" "${name}_OTHER_CA" "${name}_ALT_HOST"
}
