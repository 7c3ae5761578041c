#!/usr/bin/env bash
# Longer backpressure/deadlock soak: p=4 on 2 workers, skewed keys, two-way exchanges, slow
# sink, watchdog. Usage: scripts/soak.sh [seconds] (default 300).
set -euo pipefail
cd "$(dirname "$0")/.."
WEIR_SOAK_SECS="${1:-300}" cargo test --release -p weir-runtime --test backpressure -- --nocapture
