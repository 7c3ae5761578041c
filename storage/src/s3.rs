//! The S3 checkpoint store (aws-sdk-s3), for AWS S3 and S3-compatible servers (MinIO, Ceph...).
//!
//! Layout as for every store: `s3://<bucket>/<prefix>/<job>/chk-<id>/<file>`, `_metadata` last.
//! Requests run on this store's own small tokio runtime (never on a worker thread); the
//! synchronous [`CheckpointStore`] methods block the calling thread (a snapshot writer or the
//! coordinator) until the request is durable:
//!
//! - a file up to `part_size` is one `PutObject`; a larger one a multipart upload with
//!   `concurrency` parts in flight, streamed from the local file, completed with
//!   `CompleteMultipartUpload` and aborted on any failure or when its checkpoint is aborted;
//! - the metadata is a `PutObject` with `If-None-Match: *`, so a checkpoint can never be
//!   completed twice (HTTP 412 means it already is);
//! - transient errors (throttling, 5xx, timeouts, dropped connections) are retried by the SDK's
//!   standard retry strategy: exponential backoff with jitter, `max_attempts` attempts.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use aws_sdk_s3::Client;

use crate::error::StorageError;
use crate::store::{Aborts, CheckpointStore, PutStats, MAX_METADATA_BYTES, METADATA_FILE};

/// When the client computes and checks checksums of request and response bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Checksums {
    /// Whenever the service supports it (the SDK's default; right for AWS S3).
    WhenSupported,
    /// Only when an operation requires it (for S3-compatible servers that mishandle the SDK's
    /// default CRC checksums). Weir checks every file's own CRC-32 after download either way.
    WhenRequired,
}

/// Settings of the S3 store. Unset fields come from the standard AWS configuration:
/// environment (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_PROFILE`), profile files, web identity,
/// container and instance credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Options {
    /// Endpoint URL, e.g. `http://127.0.0.1:9100` for a local MinIO.
    pub endpoint: Option<String>,
    /// Region; default from the environment or profile, else `us-east-1`.
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`). Default: on with a custom endpoint, off
    /// for AWS (virtual-hosted style).
    pub path_style: Option<bool>,
    /// Static credentials (both or neither).
    pub access_key_id: Option<String>,
    /// See `access_key_id`.
    pub secret_access_key: Option<String>,
    /// Default: `WhenRequired` with a custom endpoint, `WhenSupported` for AWS.
    pub checksums: Option<S3Checksums>,
    /// Files larger than this are uploaded in parts of this size. Default 16 MiB; at least
    /// 5 MiB (S3's minimum part size).
    pub part_size: u64,
    /// Parts of one file in flight at once. Default 4.
    pub concurrency: usize,
    /// Attempts per request, the first included. Default 5.
    pub max_attempts: u32,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            endpoint: None,
            region: None,
            path_style: None,
            access_key_id: None,
            secret_access_key: None,
            checksums: None,
            part_size: 16 << 20,
            concurrency: 4,
            max_attempts: 5,
        }
    }
}

/// S3's smallest part size (but for the last part).
pub const MIN_PART_SIZE: u64 = 5 << 20;

/// A checkpoint store in an S3 bucket.
pub struct S3Store {
    rt: tokio::runtime::Runtime,
    client: Client,
    bucket: String,
    /// `<prefix>/<job>/`, without a leading slash.
    prefix: String,
    opts: S3Options,
    aborts: Aborts,
}

/// Splits `s3://bucket/prefix` into (bucket, prefix without slashes at its ends).
fn parse_uri(uri: &str) -> Result<(String, String), StorageError> {
    let bad = |reason: &str| StorageError::UnsupportedUri {
        uri: uri.to_owned(),
        reason: format!("{reason}; expected s3://bucket or s3://bucket/prefix"),
    };
    let rest = uri
        .strip_prefix("s3://")
        .ok_or_else(|| bad("not an s3:// URI"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let valid = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !valid {
        return Err(bad(&format!(
            "`{bucket}` is not a valid bucket name (3 to 63 lowercase letters, digits, `-`, `.`)"
        )));
    }
    let prefix = prefix.trim_end_matches('/');
    if !prefix.is_empty() && prefix.split('/').any(str::is_empty) {
        return Err(bad("the prefix has an empty path component (`//`)"));
    }
    Ok((bucket.to_owned(), prefix.to_owned()))
}

/// Checks that `uri` is a usable `s3://bucket[/prefix]` URI (without contacting anything).
pub fn check_uri(uri: &str) -> Result<(), StorageError> {
    parse_uri(uri).map(drop)
}

/// One line naming what failed: the service's code and message, or the transport error.
fn describe<E: ProvideErrorMetadata + std::error::Error + 'static>(e: &SdkError<E>) -> String {
    match e {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let err = se.err();
            let code = err.code().unwrap_or("no error code");
            let hint = match (status, code) {
                (403, _) | (_, "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch") => {
                    " (check the credentials: checkpoint.s3.access_key_id/secret_access_key, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_PROFILE)"
                }
                (_, "NoSuchBucket") | (404, "NotFound") => " (the bucket does not exist; create it first)",
                (301, _) | (_, "PermanentRedirect" | "AuthorizationHeaderMalformed") => {
                    " (the bucket is in another region: set checkpoint.s3.region or AWS_REGION)"
                }
                _ => "",
            };
            match err.message() {
                Some(m) => format!("HTTP {status} {code}: {m}{hint}"),
                None => format!("HTTP {status} {code}{hint}"),
            }
        }
        SdkError::DispatchFailure(_) => format!(
            "cannot reach the endpoint: {} (is the server up? check checkpoint.s3.endpoint or AWS_ENDPOINT_URL)",
            chain(e)
        ),
        SdkError::TimeoutError(_) => "timed out".to_string(),
        _ => chain(e),
    }
}

/// An error and its sources, each as its `Display`, joined (no debug dumps).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        next = s.source();
    }
    out
}

fn remote<E: ProvideErrorMetadata + std::error::Error + 'static>(
    op: &'static str,
    location: String,
) -> impl FnOnce(SdkError<E>) -> StorageError {
    move |e| StorageError::Remote {
        op,
        location,
        message: describe(&e),
    }
}

fn status<E>(e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

impl S3Store {
    /// Opens `s3://bucket/prefix` for `job`: resolves the configuration and credentials (an
    /// error names what is missing); [`CheckpointStore::probe`] then checks the bucket exists
    /// and may be written, so that a wrong bucket, endpoint or credentials fail before a job
    /// starts.
    pub fn open(uri: &str, job: &str, opts: &S3Options) -> Result<S3Store, StorageError> {
        let (bucket, prefix) = parse_uri(uri)?;
        if opts.part_size < MIN_PART_SIZE {
            return Err(StorageError::UnsupportedUri {
                uri: uri.to_owned(),
                reason: format!(
                    "upload part size {} is below S3's minimum of 5 MiB",
                    opts.part_size
                ),
            });
        }
        if opts.access_key_id.is_some() != opts.secret_access_key.is_some() {
            return Err(StorageError::UnsupportedUri {
                uri: uri.to_owned(),
                reason: "set both access_key_id and secret_access_key, or neither".into(),
            });
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("weir-s3-io")
            .enable_all()
            .build()
            .map_err(|e| StorageError::Io {
                op: "start the S3 I/O threads",
                path: uri.into(),
                source: e,
            })?;
        let client = rt
            .block_on(client(opts))
            .map_err(|message| StorageError::Remote {
                op: "connect to",
                location: uri.to_owned(),
                message,
            })?;
        let prefix = if prefix.is_empty() {
            format!("{job}/")
        } else {
            format!("{prefix}/{job}/")
        };
        Ok(S3Store {
            rt,
            client,
            bucket,
            prefix,
            opts: opts.clone(),
            aborts: Aborts::default(),
        })
    }

    fn key(&self, id: u64, name: &str) -> String {
        format!("{}chk-{id}/{name}", self.prefix)
    }

    fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    async fn put_multipart(
        &self,
        id: u64,
        key: &str,
        local: &Path,
        len: u64,
    ) -> Result<PutStats, StorageError> {
        let url = self.url(key);
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(remote("start multipart upload of", url.clone()))?;
        let upload_id = created.upload_id().unwrap_or_default().to_string();
        let result = tokio::select! {
            r = self.upload_parts(key, local, len, &upload_id) => r,
            () = self.aborts.wait(id) => Err(StorageError::Aborted { id, location: url }),
        };
        if result.is_err() {
            // Best effort (the parts uploaded so far cost storage until this succeeds); an
            // upload a crash left behind is aborted when its checkpoint is deleted, or by the
            // bucket's lifecycle rule.
            let cleanup = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send();
            // Bounded: with the store away this would retry for long.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), cleanup).await;
        }
        result
    }

    async fn upload_parts(
        &self,
        key: &str,
        local: &Path,
        len: u64,
        upload_id: &str,
    ) -> Result<PutStats, StorageError> {
        let url = self.url(key);
        let part_size = self.opts.part_size;
        let count = len.div_ceil(part_size);
        let sem = Arc::new(tokio::sync::Semaphore::new(self.opts.concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        let mut parts = Vec::with_capacity(count as usize);
        for n in 0..count {
            let permit = sem
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let offset = n * part_size;
            let size = part_size.min(len - offset);
            let body = ByteStream::read_from()
                .path(local)
                .offset(offset)
                .length(Length::Exact(size))
                .build()
                .await
                .map_err(|e| StorageError::Remote {
                    op: "read part of",
                    location: local.display().to_string(),
                    message: e.to_string(),
                })?;
            let req = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(n as i32 + 1)
                .content_length(size as i64)
                .body(body);
            let part_url = url.clone();
            tasks.spawn(async move {
                let out = req.send().await.map_err(remote("upload part of", part_url));
                drop(permit);
                out.map(|o| {
                    CompletedPart::builder()
                        .part_number(n as i32 + 1)
                        .set_e_tag(o.e_tag().map(str::to_string))
                        .build()
                })
            });
            // Collect finished parts as we go: a failed one stops the upload early.
            while let Some(done) = tasks.try_join_next() {
                parts.push(done.map_err(|e| join_err(&url, e))??);
            }
        }
        while let Some(done) = tasks.join_next().await {
            parts.push(done.map_err(|e| join_err(&url, e))??);
        }
        parts.sort_by_key(|p| p.part_number());
        if parts.len() as u64 != count {
            return Err(StorageError::Remote {
                op: "upload",
                location: url,
                message: format!("{} of {count} parts uploaded", parts.len()),
            });
        }
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(remote("complete multipart upload of", url))?;
        Ok(PutStats {
            bytes: len,
            requests: count + 2,
        })
    }

    /// Keys of the objects under `prefix`.
    async fn keys_under(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token)
                .send()
                .await
                .map_err(remote("list", self.url(prefix)))?;
            out.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => return Ok(out),
            }
        }
    }
}

fn join_err(url: &str, e: tokio::task::JoinError) -> StorageError {
    StorageError::Remote {
        op: "upload part of",
        location: url.to_string(),
        message: format!("upload task failed: {e}"),
    }
}

/// The SDK client for `opts` on top of the standard AWS configuration chain; an error names
/// what is missing (credentials).
async fn client(opts: &S3Options) -> Result<Client, String> {
    use aws_config::meta::region::RegionProviderChain;
    use aws_sdk_s3::config::ProvideCredentials;
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(e) = &opts.endpoint {
        loader = loader.endpoint_url(e);
    }
    // Region: the option, else environment and profile, else us-east-1 (S3-compatible servers
    // mostly ignore it); instance metadata is not asked, it is slow to fail off EC2.
    let region = match &opts.region {
        Some(r) => RegionProviderChain::first_try(Region::new(r.clone())),
        None => RegionProviderChain::first_try(
            aws_config::environment::EnvironmentVariableRegionProvider::new(),
        )
        .or_else(aws_config::profile::ProfileFileRegionProvider::new()),
    }
    .or_else(Region::new("us-east-1"));
    loader = loader.region(region);
    if let (Some(id), Some(secret)) = (&opts.access_key_id, &opts.secret_access_key) {
        loader =
            loader.credentials_provider(Credentials::new(id, secret, None, None, "weir-job-file"));
    }
    let sdk = loader.load().await;
    // Resolve credentials once now: without any, every request would fail later, each after
    // trying every source of the chain.
    match sdk.credentials_provider() {
        Some(p) => {
            p.provide_credentials().await.map_err(|e| {
                format!(
                    "no usable AWS credentials ({}); set checkpoint.s3.access_key_id and secret_access_key, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE",
                    chain(&e)
                )
            })?;
        }
        None => return Err("no AWS credentials provider is configured".into()),
    }
    let custom_endpoint = sdk.endpoint_url().is_some();
    let mut b = aws_sdk_s3::config::Builder::from(&sdk)
        .force_path_style(opts.path_style.unwrap_or(custom_endpoint))
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(opts.max_attempts.max(1))
                .with_initial_backoff(Duration::from_millis(200)),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(Duration::from_secs(120))
                .build(),
        );
    let checksums = opts.checksums.unwrap_or(if custom_endpoint {
        S3Checksums::WhenRequired
    } else {
        S3Checksums::WhenSupported
    });
    if checksums == S3Checksums::WhenRequired {
        b = b
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    }
    Ok(Client::from_conf(b.build()))
}

impl CheckpointStore for S3Store {
    fn location(&self, id: u64) -> String {
        self.url(&format!("{}chk-{id}", self.prefix))
    }

    fn probe(&self) -> Result<(), StorageError> {
        let root = self.url(&self.prefix);
        self.rt.block_on(async {
            self.client
                .head_bucket()
                .bucket(&self.bucket)
                .send()
                .await
                .map_err(remote("open bucket of", root.clone()))?;
            // Writing needs more than reading: put and delete a probe object.
            let key = format!("{}.weir-probe-{}", self.prefix, std::process::id());
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&key)
                .body(ByteStream::from_static(b"probe"))
                .send()
                .await
                .map_err(remote("write to", root.clone()))?;
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(&key)
                .send()
                .await
                .map_err(remote("delete in", root))?;
            Ok(())
        })
    }

    fn put_file(&self, id: u64, name: &str, local: &Path) -> Result<PutStats, StorageError> {
        crate::store::check_component("checkpoint file name", name)?;
        let len = std::fs::metadata(local)
            .map_err(crate::error::io_err("read checkpoint file", local))?
            .len();
        let key = self.key(id, name);
        let url = self.url(&key);
        self.rt.block_on(async {
            if len > self.opts.part_size {
                return self.put_multipart(id, &key, local, len).await;
            }
            let upload = async {
                {
                    let body =
                        ByteStream::from_path(local)
                            .await
                            .map_err(|e| StorageError::Remote {
                                op: "read",
                                location: local.display().to_string(),
                                message: e.to_string(),
                            })?;
                    self.client
                        .put_object()
                        .bucket(&self.bucket)
                        .key(&key)
                        .content_length(len as i64)
                        .body(body)
                        .send()
                        .await
                        .map_err(remote("upload", url.clone()))?;
                    Ok(PutStats {
                        bytes: len,
                        requests: 1,
                    })
                }
            };
            tokio::select! {
                r = upload => r,
                () = self.aborts.wait(id) => Err(StorageError::Aborted { id, location: url.clone() }),
            }
        })
    }

    fn abort(&self, id: u64) {
        self.aborts.abort(id);
    }

    fn put_metadata(&self, id: u64, bytes: &[u8], within: Duration) -> Result<(), StorageError> {
        let key = self.key(id, METADATA_FILE);
        let url = self.url(&key);
        let put = async {
            let sent = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(&key)
                .if_none_match("*")
                .body(ByteStream::from(bytes.to_vec()))
                .send()
                .await;
            match sent {
                Ok(_) => Ok(()),
                Err(e) if status(&e) == Some(412) => Err(StorageError::AlreadyComplete {
                    id,
                    path: url.clone().into(),
                }),
                Err(e) => Err(remote("write checkpoint metadata", url.clone())(e)),
            }
        };
        // The SDK's retries could outlast the checkpoint: its timeout bounds the whole write.
        self.rt.block_on(crate::store::bounded(
            within,
            "write checkpoint metadata",
            &url,
            "is the endpoint reachable?",
            put,
        ))
    }

    fn get_metadata(&self, id: u64) -> Result<Option<Vec<u8>>, StorageError> {
        let key = self.key(id, METADATA_FILE);
        let url = self.url(&key);
        self.rt.block_on(async {
            let got = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(&key)
                .send()
                .await;
            let out = match got {
                Ok(o) => o,
                Err(e) if status(&e) == Some(404) => return Ok(None),
                Err(e) => return Err(remote("read checkpoint metadata", url)(e)),
            };
            let len = out.content_length().unwrap_or(0).max(0) as u64;
            if len > MAX_METADATA_BYTES {
                return Err(StorageError::TooLarge {
                    what: "checkpoint metadata",
                    path: url.into(),
                    len,
                    limit: MAX_METADATA_BYTES,
                });
            }
            let bytes = out.body.collect().await.map_err(|e| StorageError::Remote {
                op: "read checkpoint metadata",
                location: url.clone(),
                message: e.to_string(),
            })?;
            Ok(Some(bytes.to_vec()))
        })
    }

    fn get_file(&self, id: u64, name: &str, dest: &Path) -> Result<(), StorageError> {
        crate::store::check_component("checkpoint file name", name)?;
        let key = self.key(id, name);
        let url = self.url(&key);
        crate::store::download(dest, name, &url, |d| {
            self.rt.block_on(async {
                let got = self
                    .client
                    .get_object()
                    .bucket(&self.bucket)
                    .key(&key)
                    .send()
                    .await;
                let mut out = match got {
                    Err(e)
                        if e.code() == Some("NoSuchKey")
                            || (status(&e) == Some(404) && e.code() != Some("NoSuchBucket")) =>
                    {
                        return Err(StorageError::NotFound {
                            location: url.clone(),
                        })
                    }
                    r => r.map_err(remote("download", url.clone()))?,
                };
                d.total = out.content_length().unwrap_or(0).max(0) as u64;
                while let Some(chunk) = out.body.next().await {
                    d.write(&chunk.map_err(|e| StorageError::Remote {
                        op: "download",
                        location: url.clone(),
                        message: e.to_string(),
                    })?)?;
                }
                Ok(())
            })
        })
    }

    fn list(&self) -> Result<Vec<u64>, StorageError> {
        self.rt.block_on(async {
            let mut ids = Vec::new();
            let mut token = None;
            loop {
                let page = self
                    .client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .prefix(&self.prefix)
                    .delimiter("/")
                    .set_continuation_token(token)
                    .send()
                    .await
                    .map_err(remote("list checkpoints in", self.url(&self.prefix)))?;
                for p in page.common_prefixes() {
                    let id = p
                        .prefix()
                        .and_then(|p| p.strip_prefix(self.prefix.as_str()))
                        .and_then(|p| p.strip_suffix('/'))
                        .and_then(|p| p.strip_prefix("chk-"))
                        .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                        .and_then(|d| d.parse::<u64>().ok());
                    ids.extend(id);
                }
                match page.next_continuation_token() {
                    Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                    _ => break,
                }
            }
            ids.sort_unstable();
            ids.dedup();
            Ok(ids)
        })
    }

    fn delete(&self, id: u64, keep: &[&str]) -> Result<(), StorageError> {
        let dir = self.key(id, "");
        self.rt.block_on(async {
            let meta = self.key(id, METADATA_FILE);
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(&meta)
                .send()
                .await
                .map_err(remote("delete checkpoint metadata", self.url(&meta)))?;
            let doomed: Vec<String> = self
                .keys_under(&dir)
                .await?
                .into_iter()
                .filter(|k| !keep.iter().any(|n| k.strip_prefix(dir.as_str()) == Some(n)))
                .collect();
            for batch in doomed.chunks(1000) {
                let objects = batch
                    .iter()
                    .map(|k| ObjectIdentifier::builder().key(k).build())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| StorageError::Remote {
                        op: "delete",
                        location: self.url(&dir),
                        message: e.to_string(),
                    })?;
                let delete = Delete::builder()
                    .set_objects(Some(objects))
                    .quiet(true)
                    .build()
                    .map_err(|e| StorageError::Remote {
                        op: "delete",
                        location: self.url(&dir),
                        message: e.to_string(),
                    })?;
                let out = self
                    .client
                    .delete_objects()
                    .bucket(&self.bucket)
                    .delete(delete)
                    .send()
                    .await
                    .map_err(remote("delete files of", self.url(&dir)))?;
                if let Some(e) = out.errors().first() {
                    return Err(StorageError::Remote {
                        op: "delete files of",
                        location: self.url(&dir),
                        message: format!(
                            "{} of {} objects not deleted, e.g. `{}`: {}",
                            out.errors().len(),
                            batch.len(),
                            e.key().unwrap_or("?"),
                            e.message().unwrap_or("no message")
                        ),
                    });
                }
            }
            // Multipart uploads a crash left behind (they are invisible but cost storage).
            let uploads = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(&dir)
                .send()
                .await
                .map_err(remote("list uploads of", self.url(&dir)))?;
            for u in uploads.uploads() {
                if let (Some(k), Some(up)) = (u.key(), u.upload_id()) {
                    let _ = self
                        .client
                        .abort_multipart_upload()
                        .bucket(&self.bucket)
                        .key(k)
                        .upload_id(up)
                        .send()
                        .await;
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse() {
        assert_eq!(parse_uri("s3://bkt").unwrap(), ("bkt".into(), "".into()));
        assert_eq!(
            parse_uri("s3://my-bucket/a/b/").unwrap(),
            ("my-bucket".into(), "a/b".into())
        );
        for bad in [
            "s3://",
            "s3://A_B/x",
            "s3://ab",
            "s3://bkt/a//b",
            "file:///x",
        ] {
            assert!(parse_uri(bad).is_err(), "{bad}");
        }
        let e = parse_uri("s3://Bad/x").unwrap_err().to_string();
        assert!(
            e.contains("not a valid bucket name") && e.contains("s3://bucket/prefix"),
            "{e}"
        );
    }
}
