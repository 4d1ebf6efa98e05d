#!/usr/bin/env bash
# bench/backup-s3.sh — tusk backup straight to a bucket against tusk backup to local disk,
# same data, same run, plus tusk's peak RSS when streaming a ~4 GB database to the bucket.
#
# Starts a durable throwaway cluster and a private s3s-fs (its data directory on the same disk
# as the backup directory, so both runs write the same bytes to the same device), seeds the
# Mastodon fixture at BENCH_SCALE (900 ≈ 1 GB) and times, alternating, BENCH_ROUNDS rounds of:
#   tusk backup --destination local   (destinations: one directory)
#   tusk backup --destination bucket  (destinations: one bucket; no local copy)
# then reports the best round of each and their ratio (target <= 1.1), and the peak RSS of a
# backup to the bucket at BENCH_RSS_SCALE (3600 ≈ 4 GB; target <= 64 MiB).
#
# With BENCH_PIN=1 the S3 server runs on a core of its own and everything else (PostgreSQL,
# pg_dump, tusk) on the other, in both runs: a store on another machine, as far as one 2-core
# machine can show it (on loopback the server otherwise takes its CPU from the backup's cores).
#
# Usage: bench/backup-s3.sh        (root; ~15 min at the defaults on 2 cores)
# Env:   BENCH_SCALE=900 BENCH_ROUNDS=2 BENCH_RSS_SCALE=3600 (0 skips) BENCH_KEEP=1 BENCH_PIN=1
#        S3FS=path/to/s3s-fs (default: $TUSK_TEST_S3FS_BIN, else s3s-fs on PATH)
#        TUSK=path/to/tusk (default: a release build of this tree)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
source scripts/lib/pg-cluster.sh

SCALE=${BENCH_SCALE:-900}
ROUNDS=${BENCH_ROUNDS:-2}
RSS_SCALE=${BENCH_RSS_SCALE:-3600}
WORK=$(mktemp -d /var/tmp/tusk-bench-s3.XXXXXX)
[[ ${BENCH_KEEP:-0} == 1 ]] || tusk_on_exit "rm -rf '$WORK'"

tusk_pg_install
command -v /usr/bin/time >/dev/null || apt-get install -y -qq time >/dev/null
if [[ -z ${TUSK:-} ]]; then
    echo "== building tusk (release)"
    cargo build --release --locked -q
    TUSK=$(cargo metadata --format-version 1 --no-deps --locked |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/tusk
fi
S3FS=${S3FS:-${TUSK_TEST_S3FS_BIN:-$(command -v s3s-fs || true)}}
[[ -x $S3FS ]] || { echo "no s3s-fs: cargo install s3s-fs@0.14.1 --features binary --locked" >&2; exit 2; }

TUSK_PG_DURABLE=1 tusk_pg_start BENCH_PG
PGBIN=$BENCH_PG_BIN
export PGPASSWORD=$BENCH_PG_PASSWORD
url() { echo "postgresql://postgres:$BENCH_PG_PASSWORD@127.0.0.1:$BENCH_PG_PORT/$1"; }

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$WORK/s3" "$WORK/sets"
"$S3FS" --host 127.0.0.1 --port "$PORT" --access-key benchkey --secret-key benchsecret "$WORK/s3" \
    >"$WORK/s3fs.log" 2>&1 &
S3FS_PID=$!
tusk_on_exit "kill $S3FS_PID 2>/dev/null || true"
PIN=()
if [[ ${BENCH_PIN:-0} == 1 ]]; then
    last=$(($(nproc) - 1))
    taskset -a -p -c "$last" "$S3FS_PID" >/dev/null
    # New backends inherit the postmaster's affinity; tusk and pg_dump run under taskset.
    taskset -a -p -c "0-$((last - 1))" "$(head -n1 "$BENCH_PG_DIR/data/postmaster.pid")" >/dev/null
    PIN=(taskset -c "0-$((last - 1))")
    echo "== pinned: s3s-fs on core $last, PostgreSQL, pg_dump and tusk on cores 0-$((last - 1))"
fi
until (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do sleep 0.1; done
mkdir -p "$WORK/s3/bench"   # s3s-fs: a bucket is a directory

cat >"$WORK/tusk.yaml" <<YAML
instance: bench
destinations:
  - name: local
    dir: $WORK/sets
  - name: bucket
    s3: {bucket: bench, prefix: sets/, endpoint: "http://127.0.0.1:$PORT", path_style: true}
YAML
export TUSK_S3_ACCESS_KEY_ID=benchkey TUSK_S3_SECRET_ACCESS_KEY=benchsecret
# An array, not a function: /usr/bin/time runs programs, not shell functions.
TUSK_CMD=(${PIN[@]+"${PIN[@]}"} "$TUSK" -q --config "$WORK/tusk.yaml" --pg-bin-dir "$PGBIN")

seed() { # DB SCALE
    "$PGBIN/createdb" -h 127.0.0.1 -p "$BENCH_PG_PORT" -U postgres "$1"
    PGBIN=$PGBIN scripts/seed-fixture.sh "$(url "$1")" "$2" >/dev/null
    "$PGBIN/psql" -X -q -d "$(url "$1")" -c 'VACUUM ANALYZE' >/dev/null
    echo "   $1: $("$PGBIN/psql" -X -At -d "$(url "$1")" -c "SELECT pg_size_pretty(pg_database_size(current_database()))")"
}

declare -A BEST
timed() { # NAME COMMAND...   (best wall seconds into BEST[NAME])
    local name=$1; shift
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    local t0 t1 s
    t0=$(date +%s.%N)
    "$@"
    t1=$(date +%s.%N)
    s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
    printf '   %-28s %6.1f s\n' "$name" "$s"
    if [[ -z ${BEST[$name]:-} ]] || awk -v a="$s" -v b="${BEST[$name]}" 'BEGIN { exit !(a < b) }'; then
        BEST[$name]=$s
    fi
}

echo "== seeding scale $SCALE"
seed bench "$SCALE"
echo "== backup, $ROUNDS rounds alternating (best of each)"
# CPU seconds (user + system) the S3 server has used so far: on loopback it shares the 2 cores
# with pg_dump, PostgreSQL and tusk, which a remote store does not.
server_cpu() { awk -v t="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / t }' "/proc/$S3FS_PID/stat"; }
for round in $(seq "$ROUNDS"); do
    timed "to local disk" /usr/bin/time -f '%M %U %S' -o "$WORK/rss.local" "${TUSK_CMD[@]}" --database-url "$(url bench)" backup --destination local
    echo "      tusk + pg_dump CPU: $(awk '{ printf "%.2f s", $2 + $3 }' "$WORK/rss.local")"
    sleep 1
    before=$(server_cpu)
    timed "to the bucket" /usr/bin/time -f '%M %U %S' -o "$WORK/rss.bucket" "${TUSK_CMD[@]}" --database-url "$(url bench)" backup --destination bucket
    echo "      tusk + pg_dump CPU: $(awk '{ printf "%.2f s", $2 + $3 }' "$WORK/rss.bucket"), s3s-fs CPU: $(awk -v a="$before" -v b="$(server_cpu)" 'BEGIN { printf "%.2f s", b - a }')"
    sleep 1
done
SET_BYTES=$(du -cb "$WORK/sets"/bench-*/*.zst | tail -n1 | cut -f1)

RSS_BIG=skipped
if [[ $RSS_SCALE != 0 ]]; then
    echo "== peak RSS of a backup to the bucket at scale $RSS_SCALE"
    seed "rss$RSS_SCALE" "$RSS_SCALE"
    "$PGBIN/psql" -X -q -d "$(url postgres)" -c "ALTER DATABASE rss$RSS_SCALE RENAME TO bench_big" >/dev/null
    /usr/bin/time -f %M -o "$WORK/rss.big" "$TUSK" -q --config "$WORK/tusk.yaml" --pg-bin-dir "$PGBIN" \
        --instance big --database-url "$(url bench_big)" backup --destination bucket
    RSS_BIG="$(cat "$WORK/rss.big") KiB ($(du -cb "$WORK/s3/bench/sets"/big-*/*.zst | tail -n1 | cut -f1) bytes uploaded)"
fi

cat <<EOF2

== results (scale $SCALE, set $SET_BYTES bytes, $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB, PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}'), s3s-fs on loopback)
  tusk backup to the bucket / to local disk   $(awk -v a="${BEST[to the bucket]}" -v b="${BEST[to local disk]}" 'BEGIN { printf "%.2f", a / b }')   (target <= 1.10; ${BEST[to the bucket]} s vs ${BEST[to local disk]} s)
  peak RSS (KiB): to local disk $(cut -d' ' -f1 "$WORK/rss.local"), to the bucket $(cut -d' ' -f1 "$WORK/rss.bucket")
  peak RSS to the bucket at scale $RSS_SCALE: $RSS_BIG   (target <= 65536)
EOF2
