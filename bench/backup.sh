#!/usr/bin/env bash
# bench/backup.sh — tusk backup/restore against the baseline tools, in one run.
#
# Starts a durable throwaway cluster (fsync on: restores are timed as a real
# server would do them), seeds the Mastodon fixture at BENCH_SCALE (900 ≈ 1 GB),
# then times, on the same data:
#   backup:  pg_dump > /dev/null (the bare dump), pg_dump -Fc -Z0 > /dev/null,
#            pg_dump | gzip, pg_dump -Fc, pg_dump -Fc -Z0 | zstd -1 > file (the same
#            work by hand), tusk backup (zstd)
#   restore: zcat | psql, pg_restore -j2, pg_restore -j2 + vacuumdb --analyze-only
#            (the same end state as tusk's: planner statistics), tusk restore -j2
# and prints each as a ratio against its baseline, plus tusk's peak RSS.
# BENCH_RSS_SCALES (default "900 3600") adds tusk's peak RSS at ~1 GB and ~4 GB.
# With a Docker Engine it also compares Docker mode (both transports: the
# default pipe through a helper container, and the exec stream) with direct
# mode on one container (BENCH_DOCKER=0 skips that).
#
# Usage: bench/backup.sh            (root; ~10 min at the defaults on 2 cores)
# Env:   BENCH_SCALE=900  BENCH_RSS_SCALES="900 3600"  BENCH_KEEP=1 (keep the work dir)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
source scripts/lib/pg-cluster.sh

SCALE=${BENCH_SCALE:-900}
RSS_SCALES=${BENCH_RSS_SCALES:-"900 3600"}
WORK=$(mktemp -d /var/tmp/tusk-bench.XXXXXX)
# tusk_on_exit keeps one EXIT trap for everything (clusters, containers, files).
[[ ${BENCH_KEEP:-0} == 1 ]] || tusk_on_exit "rm -rf '$WORK'"

tusk_pg_install
command -v /usr/bin/time >/dev/null || apt-get install -y -qq time >/dev/null
echo "== building tusk (release)"
cargo build --release --locked -q
TUSK=$REPO/target/release/tusk

TUSK_PG_DURABLE=1 tusk_pg_start BENCH_PG
PGBIN=$BENCH_PG_BIN
export PGPASSWORD=$BENCH_PG_PASSWORD PGHOST=127.0.0.1 PGPORT=$BENCH_PG_PORT PGUSER=postgres
url() { echo "postgresql://postgres:$BENCH_PG_PASSWORD@127.0.0.1:$BENCH_PG_PORT/$1"; }

seed() { # DB SCALE
    "$PGBIN/createdb" "$1"
    PGBIN=$PGBIN scripts/seed-fixture.sh "$(url "$1")" "$2" >/dev/null
    "$PGBIN/psql" -X -q -d "$1" -c 'VACUUM ANALYZE' >/dev/null
    echo "   $1: $("$PGBIN/psql" -X -At -d "$1" -c "SELECT pg_size_pretty(pg_database_size(current_database()))")"
}

declare -A SECONDS_OF
timed() { # NAME COMMAND...   (wall seconds into SECONDS_OF[NAME])
    local name=$1; shift
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    local t0 t1
    t0=$(date +%s.%N)
    bash -o pipefail -c "$*"
    t1=$(date +%s.%N)
    SECONDS_OF[$name]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
    printf '   %-34s %6.1f s\n' "$name" "${SECONDS_OF[$name]}"
}
ratio() { awk -v a="${SECONDS_OF[$1]}" -v b="${SECONDS_OF[$2]}" 'BEGIN { printf "%.2f", a / b }'; }
size() { stat -c %s "$1"; }

echo "== seeding scale $SCALE"
seed bench "$SCALE"

echo "== backup"
timed "pg_dump > /dev/null" "$PGBIN/pg_dump bench > /dev/null"
timed "pg_dump -Fc -Z0 > /dev/null" "$PGBIN/pg_dump -Fc -Z0 bench > /dev/null"
timed "pg_dump | gzip" "$PGBIN/pg_dump bench | gzip > $WORK/bench.sql.gz"
timed "pg_dump -Fc" "$PGBIN/pg_dump -Fc bench > $WORK/bench.dump"
# The same work as tusk's dump done by hand: an uncompressed archive through zstd level 1 into a
# file. On 2 cores pg_dump and the server already fill the CPU, so this is the fair baseline.
timed "pg_dump -Fc -Z0 | zstd -1" "$PGBIN/pg_dump -Fc -Z0 bench | zstd -1 -q -c > $WORK/byhand.dump.zst"
timed "tusk backup" "/usr/bin/time -f %M -o $WORK/rss.backup $TUSK -q --backup-dir $WORK/sets --instance bench --pg-bin-dir $PGBIN --database-url '$(url bench)' backup > /dev/null"
SET=$(ls "$WORK/sets" | head -n1)
TUSK_BYTES=$(du -cb "$WORK/sets/$SET"/*.zst | tail -n1 | cut -f1)

echo "== restore"
"$PGBIN/createdb" r_psql
timed "zcat | psql" "zcat $WORK/bench.sql.gz | $PGBIN/psql -X -q -v ON_ERROR_STOP=1 -d r_psql > /dev/null"
"$PGBIN/createdb" r_pgrestore
timed "pg_restore -j2" "$PGBIN/pg_restore -j2 -d r_pgrestore $WORK/bench.dump"
timed "tusk restore -j2" "/usr/bin/time -f %M -o $WORK/rss.restore $TUSK -q --backup-dir $WORK/sets --pg-bin-dir $PGBIN --temp-dir $WORK restore $SET -j 2 --no-globals --target-url '$(url r_tusk)'"
"$PGBIN/createdb" r_analyzed
# pg_restore leaves no planner statistics; tusk restore ANALYZEs. This is the same end state.
timed "pg_restore -j2 + vacuumdb -Z -j2" "$PGBIN/pg_restore -j2 -d r_analyzed $WORK/bench.dump && $PGBIN/vacuumdb -q --analyze-only -j2 r_analyzed"

echo "== Docker mode vs direct mode (same container, same data)"
DOCKER_OK=0
if [[ ${BENCH_DOCKER:-1} == 1 ]] && docker info >/dev/null 2>&1; then
    source scripts/lib/pg-image.sh
    IMAGE=${TUSK_TEST_DOCKER_IMAGE:-tusk-test/postgres:15}
    docker image inspect "$IMAGE" >/dev/null 2>&1 || tusk_pg_image_build "" 15 "$IMAGE"
    docker rm -f tusk-bench-db >/dev/null 2>&1 || true
    docker run -d --name tusk-bench-db --shm-size 256m -e POSTGRES_HOST_AUTH_METHOD=trust \
        --label com.docker.compose.service=db --label com.docker.compose.project=tuskbench "$IMAGE" >/dev/null
    tusk_on_exit "docker rm -f tusk-bench-db >/dev/null 2>&1"
    until docker exec tusk-bench-db pg_isready -q -h 127.0.0.1; do sleep 0.5; done
    DIP=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' tusk-bench-db)
    "$PGBIN/psql" -X -q -h "$DIP" -p 5432 -U postgres -c 'CREATE DATABASE bench' >/dev/null
    PGBIN=$PGBIN scripts/seed-fixture.sh "postgresql://postgres@$DIP:5432/bench" "$SCALE" >/dev/null
    "$PGBIN/psql" -X -q -h "$DIP" -p 5432 -U postgres -d bench -c 'VACUUM ANALYZE' >/dev/null
    # The Engine's own floor: the bare dump through `docker exec` against the same dump over TCP.
    timed "pg_dump -Fc -Z0 over TCP > /dev/null" "$PGBIN/pg_dump -Fc -Z0 -h $DIP -p 5432 -U postgres bench > /dev/null"
    timed "docker exec pg_dump -Fc -Z0 > /dev/null" "docker exec tusk-bench-db pg_dump -Fc -Z0 -U postgres bench > /dev/null"
    for round in 1 2; do
        timed "tusk backup direct (container) $round" "$TUSK -q --backup-dir $WORK/dsets --instance direct --pg-bin-dir $PGBIN --database-url postgresql://postgres@$DIP:5432/bench backup > /dev/null"
        timed "tusk backup docker mode $round" "$TUSK -q --backup-dir $WORK/dsets --instance docker --postgres-mode docker --compose-project tuskbench --database-url postgresql://postgres@db/bench backup > /dev/null"
        timed "tusk backup docker exec $round" "$TUSK -q --backup-dir $WORK/dsets --instance docker --postgres-mode docker --docker-transport exec --compose-project tuskbench --database-url postgresql://postgres@db/bench backup > /dev/null"
    done
    DOCKER_OK=1
    docker rm -f tusk-bench-db >/dev/null
fi
best_of() { awk -v a="${SECONDS_OF[$1 1]}" -v b="${SECONDS_OF[$1 2]}" 'BEGIN { printf "%.2f", (a < b) ? a : b }'; }

echo "== peak RSS of tusk backup by database size"
declare -A RSS_AT
for scale in $RSS_SCALES; do
    if [[ $scale == "$SCALE" ]]; then
        RSS_AT[$scale]=$(cat "$WORK/rss.backup"); continue
    fi
    seed "rss$scale" "$scale"
    /usr/bin/time -f %M -o "$WORK/rss.$scale" "$TUSK" -q --backup-dir "$WORK/rss-sets" --instance "rss$scale" \
        --pg-bin-dir "$PGBIN" --database-url "$(url "rss$scale")" backup > /dev/null
    RSS_AT[$scale]=$(cat "$WORK/rss.$scale")
    "$PGBIN/dropdb" "rss$scale"
done

cat <<EOF

== results (scale $SCALE, $(nproc) cores, PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}'), fsync on)
backup
  tusk backup / bare pg_dump > /dev/null     $(ratio "tusk backup" "pg_dump > /dev/null")   (target <= 1.15 where a core is free)
  tusk backup / pg_dump -Fc -Z0 | zstd -1 > file   $(ratio "tusk backup" "pg_dump -Fc -Z0 | zstd -1")   (the same work by hand; target <= 1.0)
  tusk backup / pg_dump | gzip               $(ratio "tusk backup" "pg_dump | gzip")   (target <= 0.5)
  tusk backup / pg_dump -Fc                  $(ratio "tusk backup" "pg_dump -Fc")   (target <= 0.6)
  size: tusk $TUSK_BYTES bytes, pg_dump -Fc $(size "$WORK/bench.dump") bytes, gzip $(size "$WORK/bench.sql.gz") bytes
restore
  tusk restore -j2 / pg_restore -j2          $(ratio "tusk restore -j2" "pg_restore -j2")   (target <= 1.0, aim 0.8)
  tusk restore -j2 / zcat | psql             $(ratio "tusk restore -j2" "zcat | psql")
  tusk restore -j2 / pg_restore -j2 + vacuumdb --analyze-only -j2   $(ratio "tusk restore -j2" "pg_restore -j2 + vacuumdb -Z -j2")   (same end state)
$(if ((DOCKER_OK)); then
    d=$(best_of "tusk backup direct (container)"); k=$(best_of "tusk backup docker mode"); e=$(best_of "tusk backup docker exec")
    echo "docker mode (best of 2)"
    echo "  docker mode / direct mode                  $(awk -v a="$k" -v b="$d" 'BEGIN { printf "%.2f", a / b }')   (target <= 1.10; $k s vs $d s; default transport: pipe)"
    echo "  docker mode, --docker-transport exec / direct  $(awk -v a="$e" -v b="$d" 'BEGIN { printf "%.2f", a / b }')   ($e s)"
    echo "  floor: docker exec pg_dump / pg_dump over TCP, both to /dev/null  $(ratio "docker exec pg_dump -Fc -Z0 > /dev/null" "pg_dump -Fc -Z0 over TCP > /dev/null")"
else
    echo "docker mode: skipped (no Docker Engine or BENCH_DOCKER=0)"
fi)
peak RSS (KiB)
  tusk backup:  $(for s in $RSS_SCALES; do printf 'scale %s: %s  ' "$s" "${RSS_AT[$s]}"; done)  (target <= 65536, flat)
  tusk restore: $(cat "$WORK/rss.restore")
EOF
