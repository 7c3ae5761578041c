#!/usr/bin/env bash
# The whole test suite: formatting, lints, every crate's tests (unit, property, end-to-end,
# doc tests, examples built), and a quick run of the benchmarks so they cannot rot.
# Needs a Rust toolchain (rustfmt, clippy), a C toolchain (librdkafka is built from source by
# rdkafka-sys) and, for the Kafka, S3 and HDFS tests, Go, Java 17 with Maven, and curl: they
# start a real Apache Kafka broker, a MinIO and an HDFS MiniDFSCluster on loopback through
# scripts/services/ (built the first time, a few minutes, then cached in ~/.cache/weir-services).
# The dashboard test needs Debian's chromium, installed here with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

cleanup() {
    scripts/services/minio.sh stop >/dev/null 2>&1 || true
    scripts/services/hdfs.sh stop >/dev/null 2>&1 || true
    scripts/services/kafka.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT
echo "== test services (Kafka, MinIO and HDFS; built the first time)"
scripts/services/kafka.sh start >/dev/null
scripts/services/minio.sh start >/dev/null
scripts/services/hdfs.sh start >/dev/null

if [ ! -x /usr/bin/chromium ]; then
    # The dashboard test loads the page in headless Chromium (Debian's package).
    echo "== installing Debian's chromium (for the dashboard test)"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get install -y -q chromium >/dev/null 2>&1 ||
        { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q chromium >/dev/null; }
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --workspace
echo "== disk-full test of the snapshot writer (a 1 MiB tmpfs)"
if [ "$(id -u)" = 0 ]; then
    small=$(mktemp -d)
    mount -t tmpfs -o size=1m tmpfs "$small"
    trap 'umount "$small" 2>/dev/null || true; rmdir "$small" 2>/dev/null || true; cleanup' EXIT
    WEIR_TEST_SMALL_FS="$small" cargo test -p weir-storage -- --ignored full_disk
else
    echo "not root: cannot mount a small tmpfs here; CI (root) runs this test"
fi
echo "== benchmarks (quick mode: checks they run; the numbers come from 'cargo bench')"
WEIR_BENCH_QUICK=1 WEIR_BENCH_OUT=target/bench-results/quick cargo bench --bench throughput
WEIR_BENCH_QUICK=1 WEIR_BENCH_OUT=target/bench-results/quick cargo bench --bench checkpoint
WEIR_BENCH_QUICK=1 WEIR_BENCH_OUT=target/bench-results/quick cargo bench --bench upload
WEIR_BENCH_QUICK=1 WEIR_BENCH_OUT=target/bench-results/quick cargo bench --bench kafka
WEIR_BENCH_QUICK=1 WEIR_BENCH_OUT=target/bench-results/quick/nexmark cargo bench --bench nexmark
echo "== example job"
cargo run --release --quiet -- run examples/sums.toml --quiet
test -s out/sums/part-0-0.jsonl
echo "all tests passed"
