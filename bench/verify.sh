#!/usr/bin/env bash
# bench/verify.sh — what content verification costs: a content verify against
# `verify --counts-only`, and the backup's digest tap against a backup without it.
#
# Starts a durable throwaway cluster (fsync on), seeds the Mastodon fixture at BENCH_SCALE
# (900 ≈ 1 GB) and times, on that one cluster, BENCH_ROUNDS alternating rounds of:
#   verify:  tusk verify latest -j2 --counts-only (checksums, test restore, row counts)
#            against tusk verify latest -j2 (the same, plus every table's content, the
#            sequences and the large objects); the target is <= 1.3
#   backup:  tusk backup with the digest tap against BENCH_TUSK_BASE (a tusk built
#            without it), when given; wall time and CPU time (user + system of tusk and
#            its pg_dump child, /usr/bin/time)
# The better time of each counts (the machine is shared). Page cache dropped before each.
#
# Usage: bench/verify.sh            (root; ~5 min at scale 300 on 2 cores)
# Env:   BENCH_SCALE=300  BENCH_ROUNDS=2  BENCH_KEEP=1 (keep the work dir)
#        BENCH_TUSK=path/to/tusk (time that binary instead of a fresh release build)
#        BENCH_TUSK_BASE=path/to/tusk (a build without the digest tap, for the backup)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
source scripts/lib/pg-cluster.sh

SCALE=${BENCH_SCALE:-300}
ROUNDS=${BENCH_ROUNDS:-2}
WORK=$(mktemp -d /var/tmp/tusk-bench-verify.XXXXXX)
[[ ${BENCH_KEEP:-0} == 1 ]] || tusk_on_exit "rm -rf '$WORK'"

tusk_pg_install
command -v /usr/bin/time >/dev/null || apt-get install -y -qq time >/dev/null
if [[ -n ${BENCH_TUSK:-} ]]; then
    TUSK=$BENCH_TUSK
else
    echo "== building tusk (release)"
    cargo build --release --locked -q
    TUSK=$REPO/target/release/tusk
fi
BASE=${BENCH_TUSK_BASE:-}

TUSK_PG_DURABLE=1 tusk_pg_start BENCH_PG
PGBIN=$BENCH_PG_BIN
export PGPASSWORD=$BENCH_PG_PASSWORD PGHOST=127.0.0.1 PGPORT=$BENCH_PG_PORT PGUSER=postgres
url() { echo "postgresql://postgres:$BENCH_PG_PASSWORD@127.0.0.1:$BENCH_PG_PORT/$1"; }
# A script, not a function: /usr/bin/time runs it. run-tusk BINARY SETS ARGS...
run_tusk=$WORK/run-tusk
printf '#!/usr/bin/env bash\nb=$1 s=$2; shift 2\nexec "$b" -q --pg-bin-dir %q --temp-dir %q --backup-dir "$s" --instance bench --database-url %q "$@"\n' \
    "$PGBIN" "$WORK" "$(url bench)" > "$run_tusk"
chmod +x "$run_tusk"

echo "== seeding scale $SCALE"
"$PGBIN/createdb" bench
PGBIN=$PGBIN scripts/seed-fixture.sh "$(url bench)" "$SCALE" >/dev/null
"$PGBIN/psql" -X -q -d bench -c 'VACUUM ANALYZE' >/dev/null
echo "   bench: $("$PGBIN/psql" -X -At -d bench -c "SELECT pg_size_pretty(pg_database_size(current_database()))")"

declare -A BEST CPU
timed() { # NAME COMMAND...   (best wall seconds into BEST[NAME], its CPU seconds into CPU[NAME])
    local name=$1; shift
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    local t0 t1 wall cpu
    t0=$(date +%s.%N)
    /usr/bin/time -f '%U %S' -o "$WORK/time" "$@" > /dev/null
    t1=$(date +%s.%N)
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
    cpu=$(awk '{ printf "%.2f", $1 + $2 }' "$WORK/time")
    printf '   %-36s %6.2f s wall  %6.2f s cpu\n' "$name" "$wall" "$cpu"
    if [[ -z ${BEST[$name]:-} ]] || awk -v a="$wall" -v b="${BEST[$name]}" 'BEGIN { exit !(a < b) }'; then
        BEST[$name]=$wall
        CPU[$name]=$cpu
    fi
}
ratio() { awk -v a="${BEST[$1]}" -v b="${BEST[$2]}" 'BEGIN { printf "%.2f", a / b }'; }
cpu_ratio() { awk -v a="${CPU[$1]}" -v b="${CPU[$2]}" 'BEGIN { printf "%.2f", a / b }'; }

echo "== backup"
for round in $(seq "$ROUNDS"); do
    timed "tusk backup (digests)" "$run_tusk" "$TUSK" "$WORK/sets" backup
    if [[ -n $BASE ]]; then
        timed "tusk backup (base, no digests)" "$run_tusk" "$BASE" "$WORK/base-sets" backup
    fi
done

echo "== verify (same set each time)"
for round in $(seq "$ROUNDS"); do
    timed "verify --counts-only" "$run_tusk" "$TUSK" "$WORK/sets" verify latest -j 2 --counts-only
    timed "verify (content)" "$run_tusk" "$TUSK" "$WORK/sets" verify latest -j 2
done

cat <<EOF

== results (scale $SCALE, best of $ROUNDS, $(nproc) cores, PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}'), fsync on)
verify
  content verify / verify --counts-only       $(ratio "verify (content)" "verify --counts-only")   (target <= 1.3; ${BEST["verify (content)"]} s vs ${BEST["verify --counts-only"]} s)
$(if [[ -n $BASE ]]; then
    echo "backup"
    echo "  tusk backup with digests / without         $(ratio "tusk backup (digests)" "tusk backup (base, no digests)")   (${BEST["tusk backup (digests)"]} s vs ${BEST["tusk backup (base, no digests)"]} s)"
    echo "  CPU time, with digests / without            $(cpu_ratio "tusk backup (digests)" "tusk backup (base, no digests)")   (${CPU["tusk backup (digests)"]} s vs ${CPU["tusk backup (base, no digests)"]} s)"
else
    echo "backup: ${BEST["tusk backup (digests)"]} s wall, ${CPU["tusk backup (digests)"]} s cpu (set BENCH_TUSK_BASE to compare)"
fi)
EOF
