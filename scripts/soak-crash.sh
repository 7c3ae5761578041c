#!/usr/bin/env bash
# Longer SIGKILL crash loop of the `weir` binary (exactly-once file output must survive every
# kill). Usage: scripts/soak-crash.sh [kills] (default 500).
set -euo pipefail
cd "$(dirname "$0")/.."
WEIR_CRASH_KILLS="${1:-500}" cargo test --release --test crash_loop -- --nocapture
