#!/usr/bin/env bash
# bench/prune.sh — `tusk prune` against tootctl's way of deleting expired cached media on S3.
#
# Seeds the Mastodon fixture (scale 1) and adds BENCH_PRUNE_ROWS (default 100,000) remote
# media attachments, cached (image/jpeg, storage schema 1) and 30 days old, each with two objects
# (original/ and small/) under cache/media_attachments/files/<6-group partition>/ in a fresh
# s3s-fs (objects of 1 KiB written straight into its data directory: quick, and s3s-fs serves
# them like uploaded ones). Then, in the same run:
#   baseline   per object, a HEAD then a DELETE, BENCH_BASELINE_CONCURRENCY (5) attachments at a
#              time: what tootctl media remove does through Paperclip (boto3 in Python, whose
#              per-request cost is close to Ruby's aws-sdk). It does not update the rows, which
#              tootctl also does, so the ratio flatters the baseline. Timed on the first
#              BENCH_BASELINE_ROWS attachments (default 10,000 = 40,000 requests; a full
#              100,000 takes ~15 min here) and projected linearly: every object costs the same
#              two requests.
#   tusk       tusk prune --media-cache-days 7 over all rows (release build, default settings:
#              batches of 1000 rows, 4 in flight, DeleteObjects of up to 1000 keys), including
#              its row updates; peak RSS from /usr/bin/time.
# Afterwards it checks that both buckets hold no object of the pruned rows and that no cached
# row is left. It prints attachments/s for both, the ratio, and tusk's seconds.
#
# Usage: bench/prune.sh   (root; ~3 min at the defaults on 2 cores, plus installs when cold)
# Env:   BENCH_PRUNE_ROWS=100000  BENCH_BASELINE_ROWS=10000  BENCH_BASELINE_CONCURRENCY=5
#        BENCH_KEEP=1 (keep the work dir)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
source scripts/lib/pg-cluster.sh
source scripts/lib/s3.sh

ROWS=${BENCH_PRUNE_ROWS:-100000}
BASELINE_ROWS=${BENCH_BASELINE_ROWS:-10000}
((BASELINE_ROWS <= ROWS)) || BASELINE_ROWS=$ROWS
CONCURRENCY=${BENCH_BASELINE_CONCURRENCY:-5}
WORK=$(mktemp -d /var/tmp/tusk-bench-prune.XXXXXX)
[[ ${BENCH_KEEP:-0} == 1 ]] || tusk_on_exit "rm -rf '$WORK'"

echo "== installs (each only when missing)"
tusk_pg_install
tusk_s3fs_install
tusk_moto_install # the venv with boto3
command -v /usr/bin/time >/dev/null || apt-get install -y -qq time >/dev/null
PY=$(tusk_s3_venv)/bin/python
echo "== building tusk (release)"
cargo build --release --locked -q
TUSK=$REPO/target/release/tusk

tusk_pg_start BENCH_PG
PGBIN=$BENCH_PG_BIN
URL="postgresql://postgres:$BENCH_PG_PASSWORD@127.0.0.1:$BENCH_PG_PORT/prune"
tusk_s3_start BENCH_S3
unset AWS_CA_BUNDLE AWS_PROFILE
export AWS_ACCESS_KEY_ID=$TUSK_S3_TEST_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$TUSK_S3_TEST_SECRET_KEY
export AWS_DEFAULT_REGION=$TUSK_S3_TEST_REGION AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null

echo "== database: fixture + $ROWS expired cached attachments"
"$PGBIN/psql" -X -q -d "${URL%/prune}/postgres" -c "CREATE DATABASE prune"
PGBIN=$PGBIN scripts/seed-fixture.sh "$URL" 1 >/dev/null
"$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -d "$URL" <<SQL
INSERT INTO media_attachments (id, status_id, account_id, file_file_name, file_content_type,
  file_file_size, file_updated_at, remote_url, created_at, updated_at, type, file_storage_schema_version)
SELECT ((extract(epoch FROM t) * 1000)::bigint << 16) | (n & 65535),
       (SELECT min(id) FROM statuses), (SELECT min(id) FROM accounts WHERE domain IS NOT NULL),
       substr(md5(n::text), 1, 16) || '.jpg', 'image/jpeg', 1024, t,
       'https://remote.example/media/' || n || '.jpg', t, t, 0, 1
FROM (SELECT n, (now() AT TIME ZONE 'UTC') - interval '30 days' - n * interval '1 second' AS t
      FROM generate_series(1, $ROWS) n) s;
VACUUM ANALYZE media_attachments;
SQL
CACHED_SQL="SELECT id, file_file_name FROM media_attachments WHERE remote_url <> '' AND file_file_name IS NOT NULL AND created_at < (now() AT TIME ZONE 'UTC') - interval '7 days' ORDER BY id"
# Objects only for the added rows (the fixture's own rows have other styles and no files here).
"$PGBIN/psql" -X -q -At -F $'\t' -d "$URL" -c "SELECT id, file_file_name FROM media_attachments WHERE remote_url LIKE 'https://remote.example/media/%' ORDER BY id" >"$WORK/cached.tsv"
CACHED=$("$PGBIN/psql" -X -At -d "$URL" -c "SELECT count(*) FROM ($CACHED_SQL) c")
echo "   $CACHED cached attachments older than 7 days ($ROWS added)"

echo "== objects: two per attachment, in buckets 'tusk' (all) and 'baseline' (first $BASELINE_ROWS)"
"$PY" - "$WORK/cached.tsv" "$BENCH_S3_DIR" "$BASELINE_ROWS" <<'PY'
import os, sys
rows, data, sample = sys.argv[1], sys.argv[2], int(sys.argv[3])
def partition(i):
    s = ("%09d" % i) if i < 1_000_000_000 else ("%012d" % i)
    return "/".join(s[k:k + 3] for k in range(0, len(s) - len(s) % 3, 3))
blob = os.urandom(1024)
with open(rows) as f:
    for n, line in enumerate(f):
        rid, name = line.rstrip("\n").split("\t")
        for bucket in (("tusk", "baseline") if n < sample else ("tusk",)):
            for style in ("original", "small"):
                d = f"{data}/{bucket}/cache/media_attachments/files/{partition(int(rid))}/{style}"
                os.makedirs(d, exist_ok=True)
                with open(f"{d}/{name}", "wb") as out:
                    out.write(blob)
PY
count() { find "$BENCH_S3_DIR/$1" -type f | wc -l; }
echo "   tusk: $(count tusk) objects, baseline: $(count baseline) objects"

echo "== baseline: HEAD + DELETE per object, $CONCURRENCY attachments at a time, $BASELINE_ROWS attachments"
t0=$(date +%s.%N)
"$PY" - "$WORK/cached.tsv" "$BENCH_S3_ENDPOINT" "$BASELINE_ROWS" "$CONCURRENCY" <<'PY'
import sys, threading
from concurrent.futures import ThreadPoolExecutor
import boto3, botocore
rows, endpoint, sample, workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
local = threading.local()
def client():
    if not hasattr(local, "c"):
        local.c = boto3.session.Session().client("s3", endpoint_url=endpoint,
            config=botocore.config.Config(s3={"addressing_style": "path"}, retries={"max_attempts": 0}))
    return local.c
def partition(i):
    s = ("%09d" % i) if i < 1_000_000_000 else ("%012d" % i)
    return "/".join(s[k:k + 3] for k in range(0, len(s) - len(s) % 3, 3))
def remove(row):  # Paperclip: for each style, delete it if it exists
    rid, name = row
    for style in ("original", "small"):
        key = f"cache/media_attachments/files/{partition(int(rid))}/{style}/{name}"
        try:
            client().head_object(Bucket="baseline", Key=key)
        except botocore.exceptions.ClientError:
            continue
        client().delete_object(Bucket="baseline", Key=key)
with open(rows) as f:
    todo = [line.rstrip("\n").split("\t") for _, line in zip(range(sample), f)]
with ThreadPoolExecutor(workers) as pool:
    list(pool.map(remove, todo))
PY
t1=$(date +%s.%N)
BASE_S=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
BASE_LEFT=$(count baseline)
((BASE_LEFT == 0)) || { echo "   ERROR: the baseline left $BASE_LEFT objects" >&2; exit 1; }

echo "== tusk prune --media-cache-days 7, $CACHED attachments"
t0=$(date +%s.%N)
/usr/bin/time -f '%M' -o "$WORK/rss" "$TUSK" -q --database-url "$URL" --media-store s3 \
    --s3-endpoint "$BENCH_S3_ENDPOINT" --s3-bucket tusk --s3-region "$TUSK_S3_TEST_REGION" \
    prune --media-cache-days 7 --yes
t1=$(date +%s.%N)
TUSK_S=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
TUSK_LEFT=$(count tusk)
LEFT_ROWS=$("$PGBIN/psql" -X -At -d "$URL" -c "SELECT count(*) FROM ($CACHED_SQL) c")
((TUSK_LEFT == 0 && LEFT_ROWS == 0)) || {
    echo "   ERROR: tusk left $TUSK_LEFT objects and $LEFT_ROWS cached rows" >&2
    exit 1
}

echo
echo "== results ($(nproc) cores, PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}'), s3s-fs $TUSK_S3FS_VERSION on 127.0.0.1)"
awk -v bs="$BASE_S" -v bn="$BASELINE_ROWS" -v ts="$TUSK_S" -v tn="$CACHED" -v rss="$(cat "$WORK/rss")" 'BEGIN {
    brate = bn / bs; trate = tn / ts
    printf "   baseline (HEAD+DELETE per object, c=5) %8.1f s for %6d attachments  %8.0f attachments/s\n", bs, bn, brate
    printf "   baseline projected to %d attachments   %8.1f s\n", tn, tn / brate
    printf "   tusk prune                             %8.1f s for %6d attachments  %8.0f attachments/s  peak RSS %d MB\n", ts, tn, trate, rss / 1024
    printf "   tusk is %.1fx faster than the baseline (target >= 20x), %s 60 s (target: under)\n", trate / brate, (ts < 60 ? "under" : "OVER")
}'
