#!/usr/bin/env bash
# Runs the Nexmark suite (benches/nexmark.rs): every query with checkpoints off, every 1 s and
# every 10 s, state size over time, recovery after kill -9. Results: docs/benchmarks/nexmark/
# (nexmark.json, nexmark.md, *.svg). Settings through the environment, e.g.
#   WEIR_NEXMARK_EVENTS=20000000 WEIR_NEXMARK_QUERIES=q0,q9 scripts/nexmark.sh
# Run it on an otherwise idle machine: the figures are per CPU second and ratios of runs.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --bench nexmark "$@"
