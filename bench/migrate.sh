#!/usr/bin/env bash
# bench/migrate.sh — tusk migrate against running its parts separately, and tusk rehearse
# against a content verify, on the same data in one run.
#
# Starts a durable throwaway cluster (fsync on), seeds the Mastodon fixture at BENCH_SCALE
# (900 ≈ 1 GB) and times, in direct mode on that one cluster:
#   migrate:  tusk backup + tusk restore -j2 (two commands, as an admin would run them)
#             against tusk migrate -j2 (preflight, stop writes with a no-op command, backup,
#             restore, content verification, cut-over report) into a new database
#   rehearse: tusk verify latest -j2 (checksums, test restore, comparison)
#             against tusk rehearse -j2 --target-url (the same, plus the reports)
# and prints each ratio; the goal is <= 1.10 for both. Each pair runs twice, alternating,
# and the better time of each counts (the machine is shared).
#
# Usage: bench/migrate.sh            (root; ~5 min at the default scale on 2 cores)
# Env:   BENCH_SCALE=300  BENCH_KEEP=1 (keep the work dir)
#        BENCH_TUSK=path/to/tusk (time that binary instead of a fresh release build)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
source scripts/lib/pg-cluster.sh

SCALE=${BENCH_SCALE:-300}
WORK=$(mktemp -d /var/tmp/tusk-bench-migrate.XXXXXX)
[[ ${BENCH_KEEP:-0} == 1 ]] || tusk_on_exit "rm -rf '$WORK'"

tusk_pg_install
if [[ -n ${BENCH_TUSK:-} ]]; then
    TUSK=$BENCH_TUSK
else
    echo "== building tusk (release)"
    cargo build --release --locked -q
    TUSK=$REPO/target/release/tusk
fi

TUSK_PG_DURABLE=1 tusk_pg_start BENCH_PG
PGBIN=$BENCH_PG_BIN
export PGPASSWORD=$BENCH_PG_PASSWORD PGHOST=127.0.0.1 PGPORT=$BENCH_PG_PORT PGUSER=postgres
url() { echo "postgresql://postgres:$BENCH_PG_PASSWORD@127.0.0.1:$BENCH_PG_PORT/$1"; }
# A config whose stop/start commands do nothing: there is no app to stop here.
printf 'mastodon:\n  stop_command: "true"\n  start_command: "true"\n' > "$WORK/tusk.yaml"
tusk() { "$TUSK" -q --config "$WORK/tusk.yaml" --pg-bin-dir "$PGBIN" --temp-dir "$WORK" \
    --instance bench --database-url "$(url bench)" "$@"; }

echo "== seeding scale $SCALE"
"$PGBIN/createdb" bench
PGBIN=$PGBIN scripts/seed-fixture.sh "$(url bench)" "$SCALE" >/dev/null
"$PGBIN/psql" -X -q -d bench -c 'VACUUM ANALYZE' >/dev/null
echo "   bench: $("$PGBIN/psql" -X -At -d bench -c "SELECT pg_size_pretty(pg_database_size(current_database()))")"

declare -A SECONDS_OF
timed() { # NAME COMMAND...
    local name=$1; shift
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    local t0 t1
    t0=$(date +%s.%N)
    "$@" > /dev/null
    t1=$(date +%s.%N)
    SECONDS_OF[$name]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
    printf '   %-34s %6.1f s\n' "$name" "${SECONDS_OF[$name]}"
}
best() { awk -v a="${SECONDS_OF[$1 1]}" -v b="${SECONDS_OF[$1 2]}" 'BEGIN { printf "%.2f", (a < b) ? a : b }'; }
separately() { # ROUND
    tusk --backup-dir "$WORK/sep$1" backup
    tusk --backup-dir "$WORK/sep$1" restore latest -j 2 --target-url "$(url "sep$1")"
}
migrate() { # ROUND
    tusk --backup-dir "$WORK/mig$1" migrate -j 2 --to-url "$(url "mig$1")"
}

echo "== migrate vs backup + restore"
for round in 1 2; do
    timed "backup + restore $round" separately "$round"
    timed "migrate $round" migrate "$round"
done
echo "== rehearse vs verify"
for round in 1 2; do
    timed "verify $round" tusk --backup-dir "$WORK/sep1" verify latest -j 2 --verify-url "$(url postgres)"
    timed "rehearse $round" tusk --backup-dir "$WORK/sep1" rehearse -j 2 --target-url "$(url postgres)" \
        --report "$WORK/rehearse.json" --junit "$WORK/rehearse.xml"
done

echo
echo "== results (better of two rounds)"
printf '   %-40s %6ss\n' "backup + restore -j2" "$(best 'backup + restore')"
printf '   %-40s %6ss  ratio %s (goal <= 1.10)\n' "migrate -j2" "$(best migrate)" \
    "$(awk -v a="$(best migrate)" -v b="$(best 'backup + restore')" 'BEGIN { printf "%.2f", a / b }')"
printf '   %-40s %6ss\n' "verify -j2" "$(best verify)"
printf '   %-40s %6ss  ratio %s (goal <= 1.10)\n' "rehearse -j2" "$(best rehearse)" \
    "$(awk -v a="$(best rehearse)" -v b="$(best verify)" 'BEGIN { printf "%.2f", a / b }')"
