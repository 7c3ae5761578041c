//! Test services for the benchmarks, started through the same scripts a person uses.
#![allow(dead_code)] // each benchmark uses its own subset

use std::process::Command;

#[path = "../../tests/common/services.rs"]
mod services;
use services::start;

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
