#!/usr/bin/env bash
# Create the Mastodon 4.3 fixture schema and fill it with synthetic data.
#
#   scripts/seed-fixture.sh <libpq-url-or-dbname> [scale]
#
# The database must already exist and be empty. scale defaults to 1 (~2k rows);
# see fixtures/mastodon/README.md for sizes (scale 900 is ~1 GB).
# psql is taken from $PGBIN if set, else from PATH. Set SEED_BASE_TIME (any
# timestamptz literal) to pin "now" for the data and get byte-identical seeds.
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
  echo "usage: $0 <libpq-url-or-dbname> [scale]" >&2
  exit 2
fi
db=$1
scale=${2:-1}
if ! [[ $scale =~ ^[0-9]+([.][0-9]+)?$ ]]; then
  echo "$0: scale must be a positive number, got '$scale'" >&2
  exit 2
fi

fixtures=$(cd "$(dirname "${BASH_SOURCE[0]}")/../fixtures/mastodon" && pwd)
psql=${PGBIN:+$PGBIN/}psql
base_time_args=()
if [[ -n ${SEED_BASE_TIME:-} ]]; then
  base_time_args=(-v "base_time=$SEED_BASE_TIME")
fi

echo "seed-fixture: loading Mastodon 4.3 fixture (scale $scale${SEED_BASE_TIME:+, base time $SEED_BASE_TIME}) into $db"
# -X: ignore ~/.psqlrc; schema in one transaction so a failure leaves nothing behind.
"$psql" -X -q -v ON_ERROR_STOP=1 -1 -d "$db" -f "$fixtures/schema.sql"
"$psql" -X -q -v ON_ERROR_STOP=1 -v "scale=$scale" "${base_time_args[@]}" -d "$db" -f "$fixtures/seed.sql"
