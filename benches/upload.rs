//! Upload throughput of a large snapshot, Weir's store against a hand-written reference client
//! doing the same transfer, alternating, in the same run (target: Weir / reference >= 0.8):
//! - S3 (a MinIO on loopback, started by scripts/services/minio.sh): `S3Store::put_file`
//!   (multipart, parts streamed from the local file, `concurrency` in flight) against the same
//!   multipart upload written directly with the AWS SDK (parts read into memory);
//! - HDFS (a MiniDFSCluster, scripts/services/hdfs.sh): `HdfsStore::put_file` (temp file
//!   written in 8 MiB calls, close, rename) against a plain hdfs-native create/write/close of
//!   the same bytes in 4 MiB calls; four rounds, alternating which goes first.
//!
//! `cargo bench --bench upload` (env: WEIR_BENCH_UPLOAD_MB, default 1024; WEIR_BENCH_QUICK=1
//! for 64 MB; WEIR_BENCH_OUT for the results directory). Results: `upload.json`, `upload.md`.

mod common;

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Instant;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use weir_storage::hdfs::HdfsStore;
use weir_storage::s3::S3Store;
use weir_storage::CheckpointStore;

/// The reference: a plain multipart upload with the SDK, parts read into memory.
async fn reference(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    path: &std::path::Path,
    part: u64,
    concurrency: usize,
) {
    let len = std::fs::metadata(path).unwrap().len();
    let up = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    let id = up.upload_id().unwrap().to_string();
    let file = Arc::new(std::fs::File::open(path).unwrap());
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..len.div_ceil(part) {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let size = part.min(len - n * part) as usize;
        let mut buf = vec![0u8; size];
        file.read_exact_at(&mut buf, n * part).unwrap();
        let req = client
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(&id)
            .part_number(n as i32 + 1)
            .body(ByteStream::from(buf));
        tasks.spawn(async move {
            let o = req.send().await.unwrap();
            drop(permit);
            CompletedPart::builder()
                .part_number(n as i32 + 1)
                .set_e_tag(o.e_tag().map(str::to_string))
                .build()
        });
    }
    let mut parts = tasks.join_all().await;
    parts.sort_by_key(|p| p.part_number());
    client
        .complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .unwrap();
}

fn main() {
    let quick = std::env::var("WEIR_BENCH_QUICK").is_ok();
    let mb: u64 = std::env::var("WEIR_BENCH_UPLOAD_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 64 } else { 1024 });
    let bucket = "weir-bench-upload";
    let opts = common::minio(bucket);
    let (endpoint, key, secret) = (
        opts.endpoint.clone().unwrap(),
        opts.access_key_id.clone().unwrap(),
        opts.secret_access_key.clone().unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snapshot");
    let bytes: Vec<u8> = (0..(mb << 20)).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(&path, &bytes).unwrap();
    drop(bytes);
    let store = S3Store::open(&format!("s3://{bucket}/weir"), "bench", &opts).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(async {
        let conf = aws_config::defaults(BehaviorVersion::latest())
            .endpoint_url(&endpoint)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new(&key, &secret, None, None, "bench"))
            .load()
            .await;
        aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&conf)
                .force_path_style(true)
                .request_checksum_calculation(
                    aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
                )
                .response_checksum_validation(
                    aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
                )
                .build(),
        )
    });
    let total = (mb << 20) as f64;
    let (mut weir, mut refr) = (Vec::new(), Vec::new());
    for round in 0..3 {
        let t = Instant::now();
        store.put_file(round, "worker-0.snap", &path).unwrap();
        weir.push(total / t.elapsed().as_secs_f64());
        let t = Instant::now();
        rt.block_on(reference(
            &client,
            bucket,
            &format!("reference/{round}"),
            &path,
            opts.part_size,
            opts.concurrency,
        ));
        refr.push(total / t.elapsed().as_secs_f64());
        store.delete(round, &[]).unwrap();
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let (w, r) = (median(weir.clone()), median(refr.clone()));

    // HDFS.
    let hdfs_url = common::hdfs();
    let hstore = HdfsStore::open(&format!("{hdfs_url}/weir-bench-upload"), "bench").unwrap();
    let hclient = hdfs_native::ClientBuilder::new()
        .with_url(&hdfs_url)
        .with_io_runtime(rt.handle().clone())
        .build()
        .unwrap();
    let (mut hweir, mut href) = (Vec::new(), Vec::new());
    let reference_path = |round: u64| format!("/weir-bench-reference/{round}");
    let hdfs_reference = |round: u64| {
        rt.block_on(async {
            let mut w = hclient
                .create(
                    &reference_path(round),
                    hdfs_native::WriteOptions::default()
                        .overwrite(true)
                        .create_parent(true),
                )
                .await
                .unwrap();
            let file = std::fs::File::open(&path).unwrap();
            let mut offset = 0u64;
            let len = file.metadata().unwrap().len();
            while offset < len {
                let mut buf = vec![0u8; (4u64 << 20).min(len - offset) as usize];
                file.read_exact_at(&mut buf, offset).unwrap();
                offset += buf.len() as u64;
                w.write_bytes(buf.into()).await.unwrap();
            }
            w.close().await.unwrap();
        })
    };
    // Alternating which goes first, deletes outside the timings.
    for round in 0..4u64 {
        for weir_turn in [round % 2 == 0, round % 2 == 1] {
            let t = Instant::now();
            if weir_turn {
                hstore.put_file(round, "worker-0.snap", &path).unwrap();
                hweir.push(total / t.elapsed().as_secs_f64());
            } else {
                hdfs_reference(round);
                href.push(total / t.elapsed().as_secs_f64());
            }
        }
        hstore.delete(round, &[]).unwrap();
        rt.block_on(hclient.delete(&reference_path(round), false))
            .unwrap();
    }
    let (hw, hr) = (median(hweir.clone()), median(href.clone()));
    println!(
        "write of {mb} MB to HDFS: Weir {:.0} MB/s, reference {:.0} MB/s, ratio {:.2}",
        hw / 1e6,
        hr / 1e6,
        hw / hr
    );
    println!(
        "upload of {mb} MB to MinIO: Weir {:.0} MB/s, reference {:.0} MB/s, ratio {:.2} (runs: {:?} / {:?})",
        w / 1e6,
        r / 1e6,
        w / r,
        weir.iter().map(|x| (x / 1e6).round()).collect::<Vec<_>>(),
        refr.iter().map(|x| (x / 1e6).round()).collect::<Vec<_>>()
    );
    let out = common::out_dir();
    let json = serde_json::json!({
        "quick": quick, "megabytes": mb, "part_size": opts.part_size, "concurrency": opts.concurrency,
        "weir_bytes_per_s": w, "reference_bytes_per_s": r, "ratio": w / r,
        "weir_runs": weir, "reference_runs": refr, "target": ">= 0.8",
        "hdfs": {"weir_bytes_per_s": hw, "reference_bytes_per_s": hr, "ratio": hw / hr,
                 "weir_runs": hweir, "reference_runs": href},
    });
    std::fs::write(
        format!("{out}/upload.json"),
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .unwrap();
    std::fs::write(
        format!("{out}/upload.md"),
        format!(
            "| metric | value | target |\n|---|---|---|\n| upload {mb} MB to MinIO, Weir / reference multipart | {:.2} ({:.0} / {:.0} MB/s) | >= 0.8 |\n| write {mb} MB to HDFS, Weir / reference client | {:.2} ({:.0} / {:.0} MB/s) | >= 0.8 |\n",
            w / r,
            w / 1e6,
            r / 1e6,
            hw / hr,
            hw / 1e6,
            hr / 1e6
        ),
    )
    .unwrap();
}
