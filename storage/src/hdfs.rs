//! The HDFS checkpoint store (hdfs-native), for `hdfs://namenode:port/path`.
//!
//! Layout as for every store: `<path>/<job>/chk-<id>/<file>`, `_metadata` last. Requests run on
//! this store's own small tokio runtime (never on a worker thread); the synchronous
//! [`CheckpointStore`] methods block the calling thread until the request is done.
//!
//! - A file is written to a hidden temp name (`.<name>.inprogress`), closed (HDFS's durability
//!   point: the NameNode completed the file, every block acknowledged by its DataNode
//!   pipeline), then renamed into place.
//! - The metadata is renamed without overwriting: the NameNode refuses the rename if
//!   `_metadata` exists, so a checkpoint can never be completed twice.
//! - An aborted checkpoint stops its uploads and removes their temp files.

use std::path::Path;
use std::time::Duration;

use hdfs_native::{Client, ClientBuilder, HdfsError, WriteOptions};

use crate::error::StorageError;
use crate::store::{Aborts, CheckpointStore, PutStats, MAX_METADATA_BYTES, METADATA_FILE};

/// A checkpoint store in HDFS.
pub struct HdfsStore {
    rt: tokio::runtime::Runtime,
    client: Client,
    /// `hdfs://namenode:port`.
    url: String,
    /// `/<path>/<job>`, absolute, without a trailing slash.
    root: String,
    aborts: Aborts,
}

/// How long cleaning up after a failed or aborted upload may take.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Attempts per file upload, the first included.
const MAX_ATTEMPTS: u64 = 5;

/// Exponential backoff with jitter: a random delay between half and all of 200 ms x 2^(n-1)
/// (capped at 12.8 s) before attempt `n + 1`.
fn backoff(attempt: u64) -> Duration {
    let cap = 200u64 << (attempt - 1).min(6);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    // A cheap mix of the clock; good enough to spread retries.
    let r = nanos.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11;
    Duration::from_millis(cap / 2 + r % (cap / 2 + 1))
}

/// What to check when the NameNode does not answer.
const NAMENODE_HINT: &str = "is the NameNode up and out of safe mode?";

/// How long a request of the retention or of a restore (list, read or delete metadata) may
/// take: the client keeps retrying a NameNode it cannot reach, and a job must not hang on it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How long checking the store before a job starts may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// Bytes read from the local file and written per call.
const CHUNK: usize = 8 << 20;

/// Splits `hdfs://host:port/path` into (`hdfs://host:port`, `/path`). Without a host
/// (`hdfs:///path`, as Flink users write it) the NameNode is `fs.defaultFS` from the Hadoop
/// configuration (`HADOOP_CONF_DIR` or `HADOOP_HOME`).
fn parse_uri(uri: &str) -> Result<(String, String), StorageError> {
    let bad = |reason: &str| StorageError::UnsupportedUri {
        uri: uri.to_owned(),
        reason: format!("{reason}; expected hdfs://namenode:port/path"),
    };
    let rest = uri
        .strip_prefix("hdfs://")
        .ok_or_else(|| bad("not an hdfs:// URI"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let path = path.trim_end_matches('/');
    if !path.is_empty() && path[1..].split('/').any(str::is_empty) {
        return Err(bad("the path has an empty component (`//`)"));
    }
    Ok((format!("hdfs://{authority}"), path.to_owned()))
}

/// Checks that `uri` is a usable `hdfs://` URI (without contacting anything).
pub fn check_uri(uri: &str) -> Result<(), StorageError> {
    parse_uri(uri).map(drop)
}

fn remote<'a>(op: &'static str, location: &'a str) -> impl FnOnce(HdfsError) -> StorageError + 'a {
    move |e| {
        let hint = match &e {
            HdfsError::IOError(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                " (is the NameNode up? check the host and port of checkpoint.storage)"
            }
            _ => "",
        };
        StorageError::Remote {
            op,
            location: location.to_owned(),
            message: format!("{e}{hint}"),
        }
    }
}

fn not_found(e: &HdfsError) -> bool {
    match e {
        HdfsError::FileNotFound(_) => true,
        HdfsError::RPCError(class, _) => class.ends_with("FileNotFoundException"),
        _ => false,
    }
}

fn already_exists(e: &HdfsError) -> bool {
    match e {
        HdfsError::AlreadyExists(_) => true,
        HdfsError::RPCError(class, _) => class.ends_with("FileAlreadyExistsException"),
        _ => false,
    }
}

impl HdfsStore {
    /// Opens `hdfs://namenode:port/path` for `job` (no request is made; see
    /// [`CheckpointStore::probe`]).
    pub fn open(uri: &str, job: &str) -> Result<HdfsStore, StorageError> {
        let (url, path) = parse_uri(uri)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("weir-hdfs-io")
            .enable_all()
            .build()
            .map_err(|e| StorageError::Io {
                op: "start the HDFS I/O threads",
                path: uri.into(),
                source: e,
            })?;
        let mut builder = ClientBuilder::new().with_io_runtime(rt.handle().clone());
        if url != "hdfs://" {
            builder = builder.with_url(&url);
        }
        let client = builder.build().map_err(remote("connect to", uri))?;
        Ok(HdfsStore {
            rt,
            client,
            url,
            root: format!("{path}/{job}"),
            aborts: Aborts::default(),
        })
    }

    fn dir(&self, id: u64) -> String {
        format!("{}/chk-{id}", self.root)
    }

    fn path(&self, id: u64, name: &str) -> String {
        format!("{}/{name}", self.dir(id))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Writes `local` to `tmp` and closes it (durable); returns the bytes written. The local
    /// file is read with plain reads on the calling thread (a snapshot writer: `block_on` runs
    /// this future there), the client's own tasks run on the store's I/O threads.
    async fn write(&self, tmp: &str, local: &Path) -> Result<u64, StorageError> {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::open(local)
            .map_err(crate::error::io_err("read checkpoint file", local))?;
        let len = file
            .metadata()
            .map_err(crate::error::io_err("read checkpoint file", local))?
            .len();
        let mut writer = self
            .client
            .create(
                tmp,
                WriteOptions::default().overwrite(true).create_parent(true),
            )
            .await
            .map_err(remote("create", &self.url(tmp)))?;
        let mut offset = 0u64;
        while offset < len {
            let mut buf = vec![0u8; (CHUNK as u64).min(len - offset) as usize];
            file.read_exact_at(&mut buf, offset)
                .map_err(crate::error::io_err("read checkpoint file", local))?;
            offset += buf.len() as u64;
            writer
                .write_bytes(buf.into())
                .await
                .map_err(remote("write", &self.url(tmp)))?;
        }
        writer
            .close()
            .await
            .map_err(remote("close", &self.url(tmp)))?;
        Ok(len)
    }

    fn temp(&self, id: u64, name: &str) -> String {
        self.path(id, &format!(".{name}.{}.inprogress", std::process::id()))
    }
}

impl CheckpointStore for HdfsStore {
    fn location(&self, id: u64) -> String {
        self.url(&self.dir(id))
    }

    fn probe(&self) -> Result<(), StorageError> {
        let root = self.url(&self.root);
        // The client keeps retrying a NameNode it cannot reach; a job should not wait minutes
        // to learn that.
        let probe = async {
            self.client
                .mkdirs(&self.root, 0o755, true)
                .await
                .map_err(remote("create directory", &root))?;
            let probe = format!("{}/.weir-probe-{}", self.root, std::process::id());
            self.client
                .create(&probe, WriteOptions::default().overwrite(true))
                .await
                .map_err(remote("write to", &root))?
                .close()
                .await
                .map_err(remote("write to", &root))?;
            self.client
                .delete(&probe, false)
                .await
                .map_err(remote("delete in", &root))?;
            Ok(())
        };
        self.rt.block_on(crate::store::bounded(
            PROBE_TIMEOUT,
            "reach",
            &root,
            "is the NameNode up? check the host and port of checkpoint.storage",
            probe,
        ))
    }

    fn put_file(&self, id: u64, name: &str, local: &Path) -> Result<PutStats, StorageError> {
        crate::store::check_component("checkpoint file name", name)?;
        let tmp = self.temp(id, name);
        let dst = self.path(id, name);
        let blocks_hint = std::fs::metadata(local).map(|m| m.len()).unwrap_or(0) >> 27;
        self.rt.block_on(async {
            let attempt = || async {
                let bytes = self.write(&tmp, local).await?;
                self.client
                    .rename(&tmp, &dst, true)
                    .await
                    .map_err(remote("rename into place", &self.url(&dst)))?;
                Ok::<_, StorageError>(bytes)
            };
            // Transient failures (a DataNode or the NameNode briefly away) are retried with
            // exponential backoff and jitter; the checkpoint's timeout bounds it all.
            let upload = async {
                let mut attempts = 0u64;
                loop {
                    attempts += 1;
                    match attempt().await {
                        Ok(bytes) => {
                            // per attempt: create, a block allocation per 128 MiB, complete,
                            // rename
                            return Ok(PutStats {
                                bytes,
                                requests: attempts * (3 + blocks_hint.max(1)),
                            });
                        }
                        Err(e @ StorageError::Remote { .. }) if attempts < MAX_ATTEMPTS => {
                            let delay = backoff(attempts);
                            tracing::debug!(file = %self.url(&dst), error = %e, ?delay, "retrying upload");
                            tokio::time::sleep(delay).await;
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            let result = tokio::select! {
                r = upload => r,
                () = self.aborts.wait(id) => Err(StorageError::Aborted { id, location: self.url(&dst) }),
            };
            if result.is_err() {
                // Best effort and bounded: with the NameNode away this would wait for it; a
                // temp file left behind goes with its checkpoint directory.
                let _ = tokio::time::timeout(CLEANUP_TIMEOUT, self.client.delete(&tmp, false)).await;
            }
            result
        })
    }

    fn abort(&self, id: u64) {
        self.aborts.abort(id);
    }

    fn put_metadata(&self, id: u64, bytes: &[u8], within: Duration) -> Result<(), StorageError> {
        let tmp = self.temp(id, METADATA_FILE);
        let dst = self.path(id, METADATA_FILE);
        let url = self.url(&dst);
        let write = async {
            let mut w = self
                .client
                .create(
                    &tmp,
                    WriteOptions::default().overwrite(true).create_parent(true),
                )
                .await
                .map_err(remote("create", &self.url(&tmp)))?;
            w.write_bytes(bytes.to_vec().into())
                .await
                .map_err(remote("write", &self.url(&tmp)))?;
            w.close().await.map_err(remote("close", &self.url(&tmp)))?;
            // Without overwrite: refused if the checkpoint is already complete.
            match self.client.rename(&tmp, &dst, false).await {
                Ok(()) => Ok(()),
                Err(e) => {
                    let _ = self.client.delete(&tmp, false).await;
                    if already_exists(&e) {
                        Err(StorageError::AlreadyComplete {
                            id,
                            path: self.url(&dst).into(),
                        })
                    } else {
                        Err(remote("publish checkpoint metadata", &self.url(&dst))(e))
                    }
                }
            }
        };
        // The client retries a NameNode it cannot reach for minutes: the checkpoint's
        // timeout bounds the wait (dropping the future stops the requests).
        self.rt.block_on(crate::store::bounded(
            within,
            "write checkpoint metadata",
            &url,
            NAMENODE_HINT,
            write,
        ))
    }

    fn get_metadata(&self, id: u64) -> Result<Option<Vec<u8>>, StorageError> {
        let path = self.path(id, METADATA_FILE);
        let url = self.url(&path);
        self.rt.block_on(crate::store::bounded(
            REQUEST_TIMEOUT,
            "read checkpoint metadata",
            &url,
            NAMENODE_HINT,
            async {
                let reader = match self.client.read(&path).await {
                    Ok(r) => r,
                    Err(e) if not_found(&e) => return Ok(None),
                    Err(e) => return Err(remote("read checkpoint metadata", &url)(e)),
                };
                let len = reader.file_length() as u64;
                if len > MAX_METADATA_BYTES {
                    return Err(StorageError::TooLarge {
                        what: "checkpoint metadata",
                        path: url.clone().into(),
                        len,
                        limit: MAX_METADATA_BYTES,
                    });
                }
                let bytes = reader
                    .read_range(0, len as usize)
                    .await
                    .map_err(remote("read checkpoint metadata", &url))?;
                Ok(Some(bytes.to_vec()))
            },
        ))
    }

    fn get_file(&self, id: u64, name: &str, dest: &Path) -> Result<(), StorageError> {
        crate::store::check_component("checkpoint file name", name)?;
        let path = self.path(id, name);
        let url = self.url(&path);
        crate::store::download(dest, name, &url, |d| {
            self.rt.block_on(async {
                let mut reader = match self.client.read(&path).await {
                    Err(e) if not_found(&e) => {
                        return Err(StorageError::NotFound {
                            location: url.clone(),
                        })
                    }
                    r => r.map_err(remote("download", &url))?,
                };
                let total = reader.file_length();
                d.total = total as u64;
                let mut done = 0;
                while done < total {
                    let chunk = reader
                        .read_bytes(CHUNK.min(total - done))
                        .await
                        .map_err(remote("download", &url))?;
                    if chunk.is_empty() {
                        return Err(StorageError::Remote {
                            op: "download",
                            location: url.clone(),
                            message: format!("the file ended after {done} of {total} bytes"),
                        });
                    }
                    done += chunk.len();
                    d.write(&chunk)?;
                }
                Ok(())
            })
        })
    }

    fn list(&self) -> Result<Vec<u64>, StorageError> {
        self.rt.block_on(crate::store::bounded(
            REQUEST_TIMEOUT,
            "list checkpoints in",
            &self.url(&self.root),
            NAMENODE_HINT,
            async {
                let entries = match self.client.list_status(&self.root, false).await {
                    Ok(e) => e,
                    Err(e) if not_found(&e) => return Ok(Vec::new()),
                    Err(e) => return Err(remote("list checkpoints in", &self.url(&self.root))(e)),
                };
                let mut ids: Vec<u64> = entries
                    .iter()
                    .filter(|s| s.isdir)
                    .filter_map(|s| {
                        s.path
                            .rsplit('/')
                            .next()?
                            .strip_prefix("chk-")
                            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))?
                            .parse()
                            .ok()
                    })
                    .collect();
                ids.sort_unstable();
                ids.dedup();
                Ok(ids)
            },
        ))
    }

    fn delete(&self, id: u64, keep: &[&str]) -> Result<(), StorageError> {
        let dir = self.dir(id);
        self.rt.block_on(crate::store::bounded(
            REQUEST_TIMEOUT,
            "delete checkpoint",
            &self.url(&dir),
            NAMENODE_HINT,
            async {
                let meta = self.path(id, METADATA_FILE);
                match self.client.delete(&meta, false).await {
                    Ok(_) => {}
                    Err(e) if not_found(&e) => {}
                    Err(e) => {
                        return Err(remote("delete checkpoint metadata", &self.url(&meta))(e))
                    }
                }
                if keep.is_empty() {
                    return match self.client.delete(&dir, true).await {
                        Ok(_) => Ok(()),
                        Err(e) if not_found(&e) => Ok(()),
                        Err(e) => Err(remote("delete checkpoint directory", &self.url(&dir))(e)),
                    };
                }
                let entries = match self.client.list_status(&dir, false).await {
                    Ok(e) => e,
                    Err(e) if not_found(&e) => return Ok(()),
                    Err(e) => return Err(remote("list", &self.url(&dir))(e)),
                };
                for s in entries {
                    let name = s.path.rsplit('/').next().unwrap_or_default();
                    if keep.contains(&name) {
                        continue;
                    }
                    match self.client.delete(&s.path, true).await {
                        Ok(_) => {}
                        Err(e) if not_found(&e) => {}
                        Err(e) => return Err(remote("delete", &self.url(&s.path))(e)),
                    }
                }
                Ok(())
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_a_cap() {
        for n in 1..12 {
            let d = backoff(n).as_millis() as u64;
            let cap = 200u64 << (n - 1).min(6);
            assert!(d >= cap / 2 && d <= cap, "attempt {n}: {d} ms");
        }
    }

    #[test]
    fn uris_parse() {
        assert_eq!(
            parse_uri("hdfs://nn:9000/a/b/").unwrap(),
            ("hdfs://nn:9000".into(), "/a/b".into())
        );
        assert_eq!(
            parse_uri("hdfs://nn:9000").unwrap(),
            ("hdfs://nn:9000".into(), "".into())
        );
        assert_eq!(
            parse_uri("hdfs:///flink/ck").unwrap(),
            ("hdfs://".into(), "/flink/ck".into())
        );
        for bad in ["hdfs://nn/a//b", "s3://x"] {
            assert!(parse_uri(bad).is_err(), "{bad}");
        }
    }
}
