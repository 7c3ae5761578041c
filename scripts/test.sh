#!/usr/bin/env bash
# The whole test suite: formatting, lints, every crate's tests (unit, property, end-to-end,
# doc tests, examples built), and a quick run of the benchmarks so they cannot rot.
# Needs only a Rust toolchain (rustfmt, clippy); everything else comes from crates.io.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --workspace
echo "== benchmarks (quick mode: checks they run; the numbers come from 'cargo bench')"
WEIR_BENCH_QUICK=1 WEIR_BENCH_OUT=target/bench-results/quick cargo bench --bench throughput
WEIR_BENCH_QUICK=1 WEIR_BENCH_OUT=target/bench-results/quick cargo bench --bench checkpoint
echo "== example job"
cargo run --release --quiet -- run examples/sums.toml --quiet
test -s out/sums/part-0-0.jsonl
echo "all tests passed"
