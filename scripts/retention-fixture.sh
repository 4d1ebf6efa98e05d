#!/usr/bin/env bash
# Regenerates fixtures/retention/restic-forget.json: what the real restic's
# `forget` keeps and removes for a synthetic two-year timeline of snapshots,
# under several policies, with calendar buckets in Europe/Berlin (a DST
# change in spring and in autumn) and in UTC. src/set/retention.rs reads the
# fixture in its unit tests and must decide exactly the same; the tests never
# run restic.
#
# Needs restic and jq (Debian packages; installed when missing and run as root). Usage:
#   scripts/retention-fixture.sh [OUTPUT]
#
# restic stores a snapshot's time with the UTC offset it was made under and
# forms its calendar buckets in that offset, so each snapshot is made under a
# fixed-offset zone (Etc/GMT-2 is UTC+2) equal to the bucket zone's offset at
# that instant; that is also how the two 02:15 of 2025-10-26 in Berlin (CEST,
# then CET) are told apart. `forget` then runs under TZ=<zone>, so keep_within
# counts calendar months and days in that zone.
#
# The oldest snapshot sits alone in its hour, day, ISO week, month and year:
# restic 0.17 added "keep the oldest snapshot while a bucket has counts left",
# and with a lone oldest snapshot restic 0.14 (Debian 12) and newer agree.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$here/fixtures/retention/restic-forget.json}"
# Only this script needs restic: the tests read its output.
for tool in restic jq; do
    if ! command -v "$tool" >/dev/null; then
        if [ "$(id -u)" = 0 ]; then
            apt-get install -y "$tool" >/dev/null
        else
            echo "$tool is not installed: apt-get install -y $tool" >&2
            exit 1
        fi
    fi
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export RESTIC_PASSWORD=fixture
mkdir -p "$work/data"
echo "a small directory to back up" >"$work/data/file"

# Local times in Europe/Berlin; an explicit offset where the time is
# ambiguous (the autumn change) or to state it.
timeline() {
    echo "2023-12-31 12:00:00"
    for year in 2024 2025; do
        for month in 01 02 03 04 05 06 07 08 09 10 11; do
            echo "$year-$month-08 03:00:00"
            echo "$year-$month-22 03:00:00"
        done
    done
    echo "2024-12-08 03:00:00"
    echo "2024-12-22 03:00:00"
    # ISO week 2024-52 ends on Sunday 29th; Monday 30th is week 2025-01.
    echo "2024-12-29 10:00:00"
    echo "2024-12-30 10:00:00"
    # New year in Berlin, still 2024 in UTC.
    echo "2024-12-31 23:30:00"
    echo "2025-01-01 00:30:00"
    # Spring change: 02:00 CET jumps to 03:00 CEST.
    echo "2025-03-29 23:30:00"
    echo "2025-03-30 01:30:00 +0100"
    echo "2025-03-30 03:30:00 +0200"
    # June in Berlin, still May in UTC.
    echo "2025-05-31 23:30:00"
    echo "2025-06-01 01:00:00"
    # Around keep_within's edge (2m6d3h before the newest snapshot).
    echo "2025-10-25 18:30:00"
    echo "2025-10-25 19:30:00"
    # Autumn change: 03:00 CEST falls back to 02:00 CET; 02:15 happens twice.
    echo "2025-10-26 01:30:00 +0200"
    echo "2025-10-26 02:15:00 +0200"
    echo "2025-10-26 02:15:00 +0100"
    echo "2025-10-26 02:45:00 +0100"
    echo "2025-10-26 03:30:00 +0100"
    echo "2025-12-08 03:00:00"
    for day in 20 21 22 23 24 25 26 27 28 29 30; do
        echo "2025-12-$day 03:00:00"
    done
    echo "2025-12-27 15:00:00"
    for at in 18:00 19:00 19:30 20:00 21:00 21:45 22:00; do
        echo "2025-12-31 $at:00"
    done
}

# Prints "<offset> <local time>" for a timeline line.
with_offset() {
    local line="$1"
    if [[ "$line" =~ ^(.{19})\ ([+-][0-9]{4})$ ]]; then
        echo "${BASH_REMATCH[2]} ${BASH_REMATCH[1]}"
    else
        echo "$(TZ=Europe/Berlin date -d "$line" +%z) $line"
    fi
}

# policy name | restic flags | the same policy as tusk's retention keys (JSON)
policies() {
    cat <<'POLICIES'
issue-example|--keep-last 3 --keep-daily 7 --keep-weekly 4 --keep-monthly 6|{"keep_last":3,"keep_daily":7,"keep_weekly":4,"keep_monthly":6}
every-hour|--keep-hourly 1000|{"keep_hourly":1000}
every-day|--keep-daily 1000|{"keep_daily":1000}
every-week-and-year|--keep-weekly 1000 --keep-yearly 1000|{"keep_weekly":1000,"keep_yearly":1000}
every-month|--keep-monthly 1000|{"keep_monthly":1000}
within|--keep-within 2m6d3h|{"keep_within":"2m6d3h"}
everything-short|--keep-last 2 --keep-hourly 4 --keep-daily 5 --keep-weekly 6 --keep-monthly 9 --keep-yearly 2 --keep-within 10d|{"keep_last":2,"keep_hourly":4,"keep_daily":5,"keep_weekly":6,"keep_monthly":9,"keep_yearly":2,"keep_within":"10d"}
POLICIES
}

cases=()
for zone in Europe/Berlin UTC; do
    repo="$work/repo-${zone//\//-}"
    restic init --repo "$repo" --quiet
    while read -r line; do
        read -r offset local_time <<<"$(with_offset "$line")"
        if [ "$zone" = UTC ]; then
            # The same instant, written in UTC.
            local_time="$(TZ=UTC date -d "$local_time $offset" '+%Y-%m-%d %H:%M:%S')"
            fixed=UTC
        else
            hours=$((10#${offset:1:2}))
            [ "${offset:0:1}" = "+" ] && fixed="Etc/GMT-$hours" || fixed="Etc/GMT+$hours"
        fi
        TZ="$fixed" restic --repo "$repo" backup --quiet --host h --tag t \
            --time "$local_time" "$work/data" >/dev/null
    done < <(timeline)
    while IFS='|' read -r name flags policy; do
        # shellcheck disable=SC2086
        TZ="$zone" restic --repo "$repo" forget --dry-run --json $flags >"$work/forget.json"
        cases+=("$(jq --arg name "$name" --arg zone "$zone" --argjson policy "$policy" '
            .[0] as $g | {
              name: $name, time_zone: $zone, policy: $policy,
              keep: [$g.reasons[] | {time: .snapshot.time, matches: .matches}],
              remove: [($g.remove // [])[] | .time]
            }' "$work/forget.json")")
    done < <(policies)
done

snapshots="$(timeline | while read -r line; do
    read -r offset local_time <<<"$(with_offset "$line")"
    TZ=UTC date -d "$local_time $offset" '+%Y-%m-%dT%H:%M:%SZ'
done | jq -R . | jq -s .)"
printf '%s\n' "${cases[@]}" | jq -s --arg version "$(restic version | head -1)" --argjson snapshots "$snapshots" '
    {generated_by: "scripts/retention-fixture.sh", restic: $version, snapshots: $snapshots, cases: .}' >"$out"
echo "wrote $out"
