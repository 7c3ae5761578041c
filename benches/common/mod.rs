//! Test services for the benchmarks, started through the same scripts a person uses.
#![allow(dead_code)] // each benchmark uses its own subset

use std::process::Command;

/// The integration tests' helpers (services, Kafka topics, producing and reading records).
#[path = "../../tests/common/mod.rs"]
pub mod shared;
use shared::services::start;

/// The median (the mean of the middle two for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Where results go: `WEIR_BENCH_OUT`, default `target/bench-results` (created).
pub fn out_dir() -> String {
    let out = std::env::var("WEIR_BENCH_OUT")
        .unwrap_or_else(|_| format!("{}/target/bench-results", env!("CARGO_MANIFEST_DIR")));
    std::fs::create_dir_all(&out).expect("create the results directory");
    out
}

/// S3 options for a MinIO on loopback, with `bucket` created.
pub fn minio(bucket: &str) -> weir_storage::s3::S3Options {
    let env = start("minio.sh");
    let var = |k: &str| {
        env.iter()
            .find(|(n, _)| n == k)
            .unwrap_or_else(|| panic!("{k} from minio.sh"))
            .1
            .clone()
    };
    let (endpoint, key, secret) = (
        var("AWS_ENDPOINT_URL"),
        var("AWS_ACCESS_KEY_ID"),
        var("AWS_SECRET_ACCESS_KEY"),
    );
    let made = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "--aws-sigv4",
            "aws:amz:us-east-1:s3",
        ])
        .arg("--user")
        .arg(format!("{key}:{secret}"))
        .args(["-X", "PUT", &format!("{endpoint}/{bucket}")])
        .status()
        .unwrap();
    assert!(made.success(), "create bucket {bucket}");
    weir_storage::s3::S3Options {
        endpoint: Some(endpoint),
        access_key_id: Some(key),
        secret_access_key: Some(secret),
        ..weir_storage::s3::S3Options::default()
    }
}

/// The URL of an HDFS MiniDFSCluster on loopback.
pub fn hdfs() -> String {
    start("hdfs.sh")
        .into_iter()
        .find(|(k, _)| k == "HDFS_URL")
        .expect("HDFS_URL from hdfs.sh")
        .1
}
