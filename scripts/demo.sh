#!/usr/bin/env bash
# scripts/demo.sh — build tusk, start a throwaway Mastodon-like database, and
# run the main job on it: backup -> list -> verify -> restore.
#
# Everything happens in a temporary sandbox (a private PostgreSQL cluster on
# 127.0.0.1, a backup directory, a .env.production) that is removed at exit.
# Usage: scripts/demo.sh   (root, or a user who may run initdb; any cwd)
#        DEMO_SCALE=100 scripts/demo.sh   for a bigger instance (~120 MB)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
source scripts/lib/pg-cluster.sh

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
SCALE=${DEMO_SCALE:-10}
SANDBOX=$(mktemp -d /tmp/tusk-demo.XXXXXX)
# Through the libraries' one EXIT trap (a plain `trap ... EXIT` here would be
# replaced by the cluster's): the sandbox goes on success, failure and Ctrl-C.
tusk_on_exit "rm -rf '$SANDBOX'"

say "Installing PostgreSQL if it is missing"
tusk_pg_install

say "Building tusk (release)"
cargo build --release --locked
TUSK=$REPO/target/release/tusk

say "Starting a sandbox PostgreSQL cluster on 127.0.0.1"
tusk_pg_start DEMO_PG
PGBIN=$DEMO_PG_BIN
"$PGBIN/psql" -X -q -d "$DEMO_PG_URL" -c "CREATE ROLE mastodon LOGIN PASSWORD 'demo-password' CREATEDB"
"$PGBIN/psql" -X -q -d "$DEMO_PG_URL" -c "CREATE DATABASE mastodon_production OWNER mastodon"

say "Seeding a small Mastodon 4.3 instance (fixture scale $SCALE)"
APP_URL="postgresql://mastodon:demo-password@127.0.0.1:$DEMO_PG_PORT/mastodon_production"
PGBIN=$PGBIN scripts/seed-fixture.sh "$APP_URL" "$SCALE"

say "Writing the instance's .env.production (tusk reads DB_* from it, like Mastodon)"
cat > "$SANDBOX/.env.production" <<ENV
LOCAL_DOMAIN=demo.tusk.example
DB_HOST=127.0.0.1
DB_PORT=$DEMO_PG_PORT
DB_USER=postgres
DB_PASS=$DEMO_PG_PASSWORD
DB_NAME=mastodon_production
ENV
cat > "$SANDBOX/tusk.yaml" <<YAML
backup_dir: $SANDBOX/backups
mastodon:
  env_file: $SANDBOX/.env.production
postgres:
  bin_dir: $PGBIN
YAML
cd "$SANDBOX"
echo "tusk.yaml:"; sed 's/^/    /' tusk.yaml

say "tusk backup — roles and database into a checksummed backup set"
"$TUSK" backup

say "tusk backups list"
"$TUSK" backups list

say "tusk verify latest — re-hash, restore into a scratch database, compare every table"
"$TUSK" verify latest

say "tusk restore latest — into a new database mastodon_restored"
"$TUSK" restore latest --target-url "postgresql://postgres:$DEMO_PG_PASSWORD@127.0.0.1:$DEMO_PG_PORT/mastodon_restored"
echo "statuses in the original: $("$PGBIN/psql" -X -At -d "$APP_URL" -c 'SELECT count(*) FROM statuses')"
echo "statuses in the restore:  $("$PGBIN/psql" -X -At -d "${DEMO_PG_URL%/postgres}/mastodon_restored" -c 'SELECT count(*) FROM statuses')"

say "tusk backups list — now with the verification"
"$TUSK" backups list

say "Done. The sandbox is removed on exit; see README.md for real use."
