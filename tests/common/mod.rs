//! Helpers shared by the integration tests that run the `weir` binary on bounded file jobs.
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

pub mod kafka;
pub mod services;

pub fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

/// A spawned `weir` that is killed if the test panics before it waited for it (a job left
/// running would load the machine for every later test and benchmark).
pub struct Spawned(Option<std::process::Child>);

impl Spawned {
    pub fn new(cmd: &mut Command) -> Spawned {
        Spawned(Some(cmd.spawn().expect("spawn weir")))
    }
    /// Waits for the exit and collects the output (the guard's job is done).
    pub fn wait_with_output(mut self) -> std::io::Result<std::process::Output> {
        self.0.take().unwrap().wait_with_output()
    }
}

impl std::ops::Deref for Spawned {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        self.0.as_ref().unwrap()
    }
}

impl std::ops::DerefMut for Spawned {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        self.0.as_mut().unwrap()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A job file: a generator of `rate` records/s per subtask over `keys` keys -> key_by ->
/// running sum -> blackhole, parallelism 2, checkpoints every 200 ms to `storage` (local
/// copies in `local`), with `checkpoint_extra` lines added to its `[checkpoint]` table.
pub fn generator_sum_job(
    name: &str,
    keys: u64,
    rate: u64,
    storage: &str,
    checkpoint_extra: &str,
) -> String {
    format!(
        r#"
name = "{name}"
parallelism = 2
[source]
type = "generator"
keys = {keys}
rate = {rate}
[[transform]]
type = "key_by"
field = "key"
[[transform]]
type = "sum"
field = "value"
[sink]
type = "blackhole"
[checkpoint]
interval = "200ms"
storage = "{storage}"
local_dir = "local"
{checkpoint_extra}
"#
    )
}

/// xorshift: the test's own deterministic randomness.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

pub fn write_input(dir: &Path, n: u64, files: u64) -> HashMap<u64, (String, u64)> {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut texts = vec![String::new(); files as usize];
    let mut all = HashMap::new();
    for id in 0..n {
        let key = format!("k{}", rng.next() % 101);
        let value = 1 + rng.next() % 1000; // > 0: running sums strictly increase per key
        texts[(id % files) as usize].push_str(&format!(
            "{{\"id\":{id},\"key\":\"{key}\",\"value\":{value}}}\n"
        ));
        all.insert(id, (key, value));
    }
    for (i, t) in texts.iter().enumerate() {
        std::fs::write(dir.join(format!("in-{i:02}.jsonl")), t).unwrap();
    }
    all
}

/// Writes `<dir>/job.toml`: the crash tests' job (JSON-lines files in `in/` -> key_by key ->
/// running sum of value -> exactly-once file sink in `out/`, 150 ms checkpoints to `storage`,
/// local copies in `local/`).
pub fn sum_job(dir: &Path, name: &str, storage: &str) -> std::path::PathBuf {
    let job = dir.join("job.toml");
    std::fs::write(
        &job,
        format!(
            r#"
name = "{name}"
parallelism = 2
batch_size = 256
[source]
type = "file"
path = "in"
[[transform]]
type = "key_by"
field = "key"
[[transform]]
type = "sum"
field = "value"
[sink]
type = "file"
path = "out"
[checkpoint]
interval = "150ms"
storage = "{storage}"
local_dir = "local"
"#
        ),
    )
    .unwrap();
    job
}

/// Runs `job` with `--restore latest` `rounds` times, each killed with SIGKILL after
/// `min_ms` plus a random part of `spread_ms`, with the local directory `local` deleted before
/// each start (so every restore reads from the store); `env` applies to the process. A run
/// that ends before its kill must have succeeded.
pub fn kill_rounds(
    job: &Path,
    rounds: u64,
    (min_ms, spread_ms): (u64, u64),
    local: &Path,
    env: &[(String, String)],
) {
    let mut rng = Rng(rounds * 7 + min_ms);
    for i in 0..rounds {
        let _ = std::fs::remove_dir_all(local);
        let mut child = weir()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .args([
                "run",
                job.to_str().unwrap(),
                "--quiet",
                "--restore",
                "latest",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(
            min_ms + rng.next() % spread_ms,
        ));
        let _ = child.kill();
        let o = child.wait_with_output().unwrap();
        assert!(
            o.status.code().is_none() || o.status.success(),
            "round {i}: the job failed on its own: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(local);
}

/// Runs the job with `--restore latest` until it ends; it must succeed.
pub fn run_to_completion(job: &Path) {
    let o = weir()
        .arg("run")
        .arg(job)
        .args(["--quiet", "--restore", "latest"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

pub fn read_visible(dir: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        for line in std::fs::read_to_string(e.path()).unwrap().lines() {
            out.push(
                serde_json::from_str(line)
                    .unwrap_or_else(|err| panic!("{name}: bad line {line:?}: {err}")),
            );
        }
    }
    out
}

/// Exactly-once check against the input.
pub fn check_exactly_once(out: &[Value], input: &HashMap<u64, (String, u64)>) {
    let mut seen: HashMap<u64, u64> = HashMap::new();
    let mut per_key: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
    for r in out {
        let id = r["id"].as_u64().expect("id");
        let sum = r["value"].as_u64().expect("value");
        if let Some(prev) = seen.insert(id, sum) {
            panic!("record {id} appears twice in the output (sums {prev} and {sum})");
        }
        per_key
            .entry(r["key"].as_str().unwrap().to_string())
            .or_default()
            .push((sum, id));
    }
    let missing: Vec<u64> = input
        .keys()
        .filter(|id| !seen.contains_key(id))
        .copied()
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "{} input records missing from the output, e.g. {missing:?}",
        input.len() - seen.len()
    );
    assert_eq!(seen.len(), input.len());
    for (key, mut sums) in per_key {
        sums.sort_unstable();
        let mut prev = 0;
        for (sum, id) in sums {
            let (k, v) = &input[&id];
            assert_eq!(k, &key, "record {id} under the wrong key");
            assert_eq!(sum - prev, *v, "key {key}: running sum of record {id} is {sum}, previous {prev}, but its value is {v}");
            prev = sum;
        }
    }
}

pub type FileSet = std::collections::BTreeSet<(u64, String)>;

/// The snapshot files in `chk-*` directories under `job_dir`, as (checkpoint, name).
pub fn files_in(job_dir: &Path) -> FileSet {
    let mut out = FileSet::new();
    let Ok(entries) = std::fs::read_dir(job_dir) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().into_string().unwrap();
        if name == "spare" {
            // A local directory's spare files: retired copies, named by no checkpoint.
            continue;
        }
        let id: u64 = name.strip_prefix("chk-").unwrap().parse().unwrap();
        for f in std::fs::read_dir(e.path()).unwrap().flatten() {
            let f = f.file_name().into_string().unwrap();
            if f != "_metadata" {
                out.insert((id, f));
            }
        }
    }
    out
}

/// The files the complete checkpoints under `job_dir` list in their metadata.
pub fn listed_files(job_dir: &Path) -> FileSet {
    let mut out = FileSet::new();
    for e in std::fs::read_dir(job_dir).unwrap().flatten() {
        let Ok(bytes) = std::fs::read(e.path().join("_metadata")) else {
            continue;
        };
        for f in weir_storage::decode_metadata(&bytes).unwrap().files {
            out.insert((f.checkpoint, f.name));
        }
    }
    out
}

/// A MinIO server on loopback, started (or found running) by `scripts/services/minio.sh`, the
/// same script a person uses (the first start builds MinIO, which takes minutes).
pub struct Minio {
    pub env: Vec<(String, String)>,
}

pub fn minio() -> Minio {
    let env: Vec<(String, String)> = services::start("minio.sh")
        .into_iter()
        .filter(|(k, _)| k.starts_with("AWS_"))
        .collect();
    assert!(
        env.len() >= 3,
        "no AWS_* lines from minio.sh start: {env:?}"
    );
    Minio { env }
}

impl Minio {
    fn var(&self, k: &str) -> &str {
        &self.env.iter().find(|(n, _)| n == k).expect(k).1
    }

    /// `curl` signing with the server's credentials.
    fn curl(&self) -> Command {
        let mut c = Command::new("curl");
        c.args([
            "-sS",
            "--noproxy",
            "*",
            "--aws-sigv4",
            "aws:amz:us-east-1:s3",
            "--user",
        ])
        .arg(format!(
            "{}:{}",
            self.var("AWS_ACCESS_KEY_ID"),
            self.var("AWS_SECRET_ACCESS_KEY")
        ));
        c
    }

    /// Creates a bucket (named after the test, so tests do not share one).
    pub fn bucket(&self, name: &str) -> String {
        let name = format!("weir-{name}-{}", std::process::id());
        let o = self
            .curl()
            .args(["-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT"])
            .arg(format!("{}/{name}", self.var("AWS_ENDPOINT_URL")))
            .output()
            .unwrap();
        let code = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            code == "200" || code == "409",
            "create bucket {name}: HTTP {code}"
        );
        name
    }

    fn get(&self, bucket: &str, query: &str) -> String {
        let o = self
            .curl()
            .arg(format!("{}/{bucket}?{query}", self.var("AWS_ENDPOINT_URL")))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let body = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(!body.contains("<Error>"), "GET {bucket}?{query}: {body}");
        body
    }

    /// Keys of all objects under `prefix` (at most 1000: test buckets are small).
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        // (`/` encoded: curl signs the query as written.)
        let xml = self.get(
            bucket,
            &format!("list-type=2&prefix={}", prefix.replace('/', "%2F")),
        );
        assert!(!xml.contains("<IsTruncated>true"), "more than 1000 objects");
        xml.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }

    /// Number of multipart uploads in progress in the bucket.
    pub fn uploads(&self, bucket: &str) -> usize {
        self.get(bucket, "uploads=").matches("<Upload>").count()
    }

    /// The snapshot files (as (checkpoint, name)) in the bucket under `<prefix>/<job>/` and the
    /// ones complete checkpoints list there; they must be equal (no orphans, nothing missing).
    pub fn assert_no_orphans(&self, bucket: &str, job_prefix: &str, local: &Path) {
        let mut present = FileSet::new();
        let mut listed = FileSet::new();
        for key in self.keys(bucket, job_prefix) {
            let rest = key.strip_prefix(job_prefix).unwrap();
            let (dir, name) = rest.split_once('/').expect("chk-<id>/<name>");
            let id: u64 = dir.strip_prefix("chk-").unwrap().parse().unwrap();
            if name == "_metadata" {
                let o = self
                    .curl()
                    .arg(format!("{}/{bucket}/{key}", self.var("AWS_ENDPOINT_URL")))
                    .output()
                    .unwrap();
                for f in weir_storage::decode_metadata(&o.stdout).unwrap().files {
                    listed.insert((f.checkpoint, f.name));
                }
            } else {
                present.insert((id, name.to_string()));
            }
        }
        assert_listing("objects in the bucket", &present, &listed, local);
    }

    /// Applies the server's AWS_* variables to a command.
    pub fn apply<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

/// An HDFS MiniDFSCluster on loopback, started (or found running) by
/// `scripts/services/hdfs.sh` (the first start resolves Hadoop's jars with Maven).
pub fn hdfs() -> String {
    services::start("hdfs.sh")
        .into_iter()
        .find_map(|(k, v)| (k == "HDFS_URL").then_some(v))
        .expect("HDFS_URL= from hdfs.sh start")
}

/// The files of the checkpoints under `root` (an HDFS directory, `<path>/<job>`) against the
/// files their metadata lists: equal means no orphans and nothing missing.
pub fn assert_no_hdfs_orphans(url: &str, root: &str, local: &Path) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = hdfs_native::ClientBuilder::new()
        .with_url(url)
        .with_io_runtime(rt.handle().clone())
        .build()
        .unwrap();
    let mut present = FileSet::new();
    let mut listed = FileSet::new();
    rt.block_on(async {
        for s in client.list_status(root, true).await.unwrap() {
            if s.isdir {
                continue;
            }
            let rest = s.path.strip_prefix(root).unwrap().trim_start_matches('/');
            let (dir, name) = rest.split_once('/').expect("chk-<id>/<name>");
            let id: u64 = dir.strip_prefix("chk-").unwrap().parse().unwrap();
            if name == "_metadata" {
                let r = client.read(&s.path).await.unwrap();
                let bytes = r.read_range(0, r.file_length()).await.unwrap();
                for f in weir_storage::decode_metadata(&bytes).unwrap().files {
                    listed.insert((f.checkpoint, f.name));
                }
            } else {
                present.insert((id, name.to_string()));
            }
        }
    });
    assert_listing("files in HDFS", &present, &listed, local);
}

/// A remote store holds exactly the files its complete checkpoints list (`present` vs
/// `listed`), and the local directory `local` nothing else.
pub fn assert_listing(what: &str, present: &FileSet, listed: &FileSet, local: &Path) {
    assert_eq!(present, listed, "{what} vs files the checkpoints list");
    let local = files_in(local);
    assert!(
        local.is_subset(listed),
        "local orphans: {:?}",
        local.difference(listed)
    );
}

/// A file of `len` bytes of a fixed pattern.
pub fn file(dir: &Path, name: &str, len: usize) -> std::path::PathBuf {
    let p = dir.join(name);
    let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Uploads `file` as checkpoint 7's `worker-0.snap`, aborts checkpoint 7 `after` into the
/// upload, and checks that the upload stops with `Aborted`.
pub fn abort_mid_upload(
    s: std::sync::Arc<dyn weir_storage::CheckpointStore>,
    file: std::path::PathBuf,
    after: std::time::Duration,
) {
    let up = {
        let s = s.clone();
        std::thread::spawn(move || s.put_file(7, "worker-0.snap", &file))
    };
    std::thread::sleep(after);
    s.abort(7);
    let r = up.join().unwrap();
    assert!(
        matches!(r, Err(weir_storage::StorageError::Aborted { id: 7, .. })),
        "{r:?}"
    );
}
