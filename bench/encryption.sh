#!/usr/bin/env bash
# bench/encryption.sh — what age encryption costs a backup.
#
# Starts a throwaway cluster, seeds the Mastodon fixture at BENCH_SCALE
# (900 ≈ 1 GB), then times BENCH_ROUNDS alternating rounds of
#   tusk backup              (zstd level 1, clear text)
#   tusk backup, encrypted   (zstd level 1, then age to an X25519 and an SSH key)
# on the same data, and prints the best of each, the ratio (the goal is
# ≤ 1.1) and the sizes. Also times `age -d | zstd -d` on the dump artefact,
# the manual recovery's read path.
#
# Usage: bench/encryption.sh          (root; ~5 min at the defaults on 2 cores)
# Env:   BENCH_SCALE=900  BENCH_ROUNDS=3  BENCH_KEEP=1 (keep the work dir)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
source scripts/lib/pg-cluster.sh

SCALE=${BENCH_SCALE:-900}
ROUNDS=${BENCH_ROUNDS:-3}
WORK=$(mktemp -d /var/tmp/tusk-bench-age.XXXXXX)
[[ ${BENCH_KEEP:-0} == 1 ]] || tusk_on_exit "rm -rf '$WORK'"

tusk_pg_install
command -v age >/dev/null || apt-get install -y -qq age >/dev/null
echo "== building tusk (release)"
cargo build --release --locked -q
TUSK=$REPO/target/release/tusk

tusk_pg_start BENCH_PG
PGBIN=$BENCH_PG_BIN
export PGPASSWORD=$BENCH_PG_PASSWORD PGHOST=127.0.0.1 PGPORT=$BENCH_PG_PORT PGUSER=postgres
URL="postgresql://postgres:$BENCH_PG_PASSWORD@127.0.0.1:$BENCH_PG_PORT/bench"

echo "== seeding scale $SCALE"
"$PGBIN/createdb" bench
PGBIN=$PGBIN scripts/seed-fixture.sh "$URL" "$SCALE" >/dev/null
"$PGBIN/psql" -X -q -d bench -c 'VACUUM ANALYZE' >/dev/null
echo "   bench: $("$PGBIN/psql" -X -At -d bench -c "SELECT pg_size_pretty(pg_database_size(current_database()))")"

cat > "$WORK/plain.yaml" <<EOF
backup_dir: $WORK/plain
EOF
cat > "$WORK/age.yaml" <<EOF
backup_dir: $WORK/age
encryption:
  recipients:
    - "$(sed -n 's/^# public key: //p' fixtures/encryption/admin.key)"
    - "$(cat fixtures/encryption/id_ed25519.pub)"
EOF

seconds() { # COMMAND... -> wall seconds
    local t0 t1
    t0=$(date +%s.%N)
    "$@" > /dev/null
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }'
}
best() { tr ' ' '\n' | sort -n | head -n1; }

PLAIN=() AGE=()
for ((round = 1; round <= ROUNDS; round++)); do
    sync
    PLAIN+=("$(seconds "$TUSK" -q --config "$WORK/plain.yaml" --instance bench --pg-bin-dir "$PGBIN" --database-url "$URL" backup)")
    sync
    AGE+=("$(seconds "$TUSK" -q --config "$WORK/age.yaml" --instance bench --pg-bin-dir "$PGBIN" --database-url "$URL" backup)")
    printf '   round %d: clear %6.2f s   encrypted %6.2f s\n' "$round" "${PLAIN[-1]}" "${AGE[-1]}"
done
P=$(echo "${PLAIN[*]}" | best)
A=$(echo "${AGE[*]}" | best)
SET_P=$(ls "$WORK/plain" | grep -v '^\.' | tail -n1)
SET_A=$(ls "$WORK/age" | grep -v '^\.' | tail -n1)
BYTES_P=$(stat -c %s "$WORK/plain/$SET_P/database.dump.zst")
BYTES_A=$(stat -c %s "$WORK/age/$SET_A/database.dump.zst.age")
DECRYPT=$(seconds sh -c "age -d -i fixtures/encryption/admin.key '$WORK/age/$SET_A/database.dump.zst.age' | zstd -dc > /dev/null")

echo "== results (best of $ROUNDS)"
printf '   tusk backup, clear text      %6.2f s  %12d bytes\n' "$P" "$BYTES_P"
printf '   tusk backup, age (2 keys)    %6.2f s  %12d bytes\n' "$A" "$BYTES_A"
printf '   ratio encrypted / clear      %6.2f   (goal <= 1.10)\n' "$(awk -v a="$A" -v p="$P" 'BEGIN { print a / p }')"
printf '   size overhead                %6.3f %%\n' "$(awk -v a="$BYTES_A" -v p="$BYTES_P" 'BEGIN { print (a - p) * 100 / p }')"
printf '   age -d | zstd -d (dump)      %6.2f s\n' "$DECRYPT"
