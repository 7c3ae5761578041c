#!/usr/bin/env bash
# Longer SIGKILL crash loops of the `weir` binary (a running sum and sliding windows: the
# exactly-once file output must survive every kill). Usage: scripts/soak-crash.sh [kills]
# [records] (defaults 500 and 2000000: a release build runs fast, so the input is larger than
# in the test suite to keep kills mid-run).
set -euo pipefail
cd "$(dirname "$0")/.."
WEIR_CRASH_KILLS="${1:-500}" WEIR_CRASH_RECORDS="${2:-2000000}" cargo test --release --test crash_loop -- --nocapture
