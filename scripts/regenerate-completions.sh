#!/usr/bin/env bash
# scripts/regenerate-completions.sh — rewrite the checked-in shell completion scripts
# (completions/tusk.bash, _tusk, tusk.fish, tusk.elv, tusk.ps1) and man pages
# (completions/man/*.1) from the current command line.
#
# Why: the Debian package installs these files and tests/cli.rs fails when one differs from what
# the binary generates. Run this after adding or changing a subcommand or flag (also after
# merging branches that did), and commit the result.
#
# Usage: scripts/regenerate-completions.sh   (any cwd; builds the debug binary with cargo)
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"
cargo build --locked --quiet --bin tusk
target_dir=$(cargo metadata --format-version 1 --no-deps --locked | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
tusk=$target_dir/debug/tusk

"$tusk" completions --dir completions
# Pages of removed subcommands must go too: write into a fresh directory.
rm -rf completions/man
"$tusk" man completions/man
echo "regenerated completions/ and completions/man/ with $("$tusk" --version)" >&2
