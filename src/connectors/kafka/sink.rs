//! Kafka sink: at-least-once (flush at every barrier) or exactly-once (one Kafka transaction
//! per subtask per checkpoint, committed only after the checkpoint completed).
//!
//! The worker encodes records into batches and hands them to an I/O thread per subtask
//! (`weir-kafka-sink-<s>`) over a bounded channel; a full channel blocks the sink
//! (backpressure). The I/O thread owns the librdkafka producers and does every blocking call.
//!
//! Exactly-once, per subtask `s`:
//! - The records between barrier `n - 1` and barrier `n` go into a transaction with
//!   transactional id `<prefix>-<s>-<n>`, produced by a producer of its own, opened when the
//!   first such record arrives (`init_transactions`, `begin_transaction`).
//! - At barrier `n` (pre-commit) the producer is flushed (every record acknowledged), and
//!   the transaction's producer id and epoch are read from its coordinator
//!   (`DescribeTransactions`, which must say `Ongoing`). The checkpoint stores every
//!   transaction pre-committed and not yet committed: `{checkpoint, transactional id,
//!   producer id, epoch}`.
//! - When checkpoint `n` completed, every transaction of a checkpoint `<= n` is committed
//!   (`commit_transaction`) and its producer dropped.
//! - On restore from checkpoint `n` (before anything else): every transaction the checkpoint
//!   stores is committed with `EndTxn(commit)` by id, producer id and epoch (a transaction
//!   already committed answers success, so this is idempotent); then every transaction still
//!   open under this subtask's ids is aborted (`init_transactions` on its id fences it): it
//!   holds output written after the checkpoint, which the restored job writes again. A fresh
//!   start aborts the same way (lingering transactions of an earlier run).
//!
//! A transaction that timed out on the broker before it could be committed is lost output:
//! the commit then fails with `PRODUCER_FENCED`/`INVALID_PRODUCER_EPOCH` and the job fails
//! loudly instead of continuing. The start-up check on `transaction.timeout.ms` keeps that
//! from happening in normal operation.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use serde::{Deserialize, Serialize};
use weir_runtime::{BoxError, PreCommit, SinkWriter, TaskInfo, Waker};

use super::protocol::{ProtoError, TxnClient};
use super::{JsonRecord, KafkaSinkConfig, Semantics};
use crate::connectors::handoff::Handoff;

/// Records per batch handed to the I/O thread.
const BATCH_RECORDS: usize = 1024;
/// Batches in flight between worker and I/O thread.
const BATCHES_IN_FLIGHT: usize = 4;
/// Longest blocking librdkafka call of the normal path (init, commit), and of one
/// recovery request.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a sink thread stopped waiting for the broker: its writer was dropped.
const ABANDONED: &str = "the Kafka sink was abandoned (the job failed or was cancelled)";
/// Environment variable of the fault-injection test: the process aborts right before it
/// commits the transaction of the first checkpoint with an id at least this value (the
/// checkpoint is complete; its output is pre-committed but not yet visible).
pub const FAULT_KILL_BEFORE_COMMIT: &str = "WEIR_FAULT_KILL_BEFORE_KAFKA_COMMIT";

/// Records encoded by the worker: keys and values back to back in one buffer.
#[derive(Default)]
struct Batch {
    buf: Vec<u8>,
    /// Per record: key length (`u32::MAX`: no key) and value length.
    spans: Vec<(u32, u32)>,
}

impl Batch {
    fn len(&self) -> usize {
        self.spans.len()
    }
}

enum Cmd {
    Write(Batch),
    /// Flush everything written so far and answer with the sink's checkpoint state.
    PreCommit {
        id: u64,
        ack: Sender<Result<Vec<u8>, String>>,
    },
    /// Checkpoint `upto` completed: commit every pre-committed transaction up to it.
    Commit {
        upto: u64,
    },
    Close,
}

/// A transaction pre-committed in a checkpoint, as stored in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PendingTxn {
    checkpoint: u64,
    transactional_id: String,
    producer_id: i64,
    epoch: i16,
    /// When the transaction was opened (this run only; not stored).
    #[serde(skip)]
    opened: Option<Instant>,
}

/// The sink's checkpoint state (JSON): the transactions pre-committed and not known to be
/// committed when the barrier passed.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SinkState {
    /// Format version (1).
    version: u32,
    /// Kafka transaction protocol version the ids and epochs follow (1: librdkafka's).
    transaction_version: u32,
    transactions: Vec<PendingTxn>,
}

fn decode_state(b: &[u8]) -> Result<SinkState, String> {
    let s: SinkState = serde_json::from_slice(b).map_err(|e| {
        format!(
            "damaged Kafka sink state in the checkpoint: {e}; expected the JSON the sink stores"
        )
    })?;
    if s.version != 1 || s.transaction_version != 1 {
        return Err(format!(
            "Kafka sink state of version {} (transaction version {}) in the checkpoint; this Weir reads version 1 (transaction version 1)",
            s.version, s.transaction_version
        ));
    }
    Ok(s)
}

/// Counts deliveries and keeps the first delivery error of a producer.
#[derive(Clone, Default)]
struct Deliveries {
    failed: Arc<Mutex<Option<String>>>,
}

impl ClientContext for Deliveries {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        super::librdkafka_log(level, fac, message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        super::librdkafka_error(&error, reason);
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        if let Err((e, m)) = r {
            use rdkafka::Message;
            let mut f = self.failed.lock().unwrap_or_else(|p| p.into_inner());
            if f.is_none() {
                *f = Some(format!(
                    "delivery to topic `{}` partition {} failed: {e}",
                    m.topic(),
                    m.partition()
                ));
            }
        }
    }
}

impl Deliveries {
    fn check(&self) -> Result<(), String> {
        match &*self.failed.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}

/// A producer with its delivery tracking.
struct Prod {
    p: BaseProducer<Deliveries>,
    deliveries: Deliveries,
}

impl Prod {
    fn create(cfg: &ClientConfig, what: &str) -> Result<Prod, String> {
        let deliveries = Deliveries::default();
        let p = cfg
            .create_with_context(deliveries.clone())
            .map_err(|e| format!("cannot create the Kafka producer for {what}: {e}"))?;
        Ok(Prod { p, deliveries })
    }

    /// Produces one record, waiting (serving delivery reports) while the local queue is full,
    /// unless the sink is `abandoned` meanwhile (a broker away must not hold up a failed job).
    fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
        abandoned: &AtomicBool,
    ) -> Result<(), String> {
        let mut rec = BaseRecord::<[u8], [u8]>::to(topic).payload(value);
        if let Some(k) = key {
            rec = rec.key(k);
        }
        loop {
            match self.p.send(rec) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    if abandoned.load(Ordering::SeqCst) {
                        return Err(ABANDONED.into());
                    }
                    rec = r;
                    self.p.poll(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(format!("cannot produce to topic `{topic}`: {e}")),
            }
        }
    }

    /// Waits until every record produced so far is acknowledged (or failed), up to `timeout`,
    /// in slices of a second so that an `abandoned` sink stops waiting.
    fn flush(&self, timeout: Duration, abandoned: &AtomicBool) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.p.flush(left.min(Duration::from_secs(1))) {
                Ok(()) => break,
                Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)) if !left.is_zero() => {
                    if abandoned.load(Ordering::SeqCst) {
                        return Err(ABANDONED.into());
                    }
                }
                Err(e) => return Err(format!("flushing the Kafka producer failed: {e}")),
            }
        }
        self.deliveries.check()
    }
}

/// An open transaction: its checkpoint, id and producer.
struct Txn {
    checkpoint: u64,
    id: String,
    prod: Prod,
    records: u64,
    opened: Instant,
}

/// Configuration of one subtask's I/O thread.
struct Io {
    cfg: Arc<KafkaSinkConfig>,
    subtask: usize,
    parallelism: usize,
    prefix: String,
    /// Producer settings shared by every producer (without `transactional.id`).
    base: ClientConfig,
    exactly_once: bool,
    /// Checkpoint id of the next barrier (names the next transaction).
    next_checkpoint: u64,
    restored: Vec<PendingTxn>,
    /// Set when the worker dropped its writer (the job failed or was cancelled; a restart
    /// may already run): open nothing new, abort nothing, and stop.
    abandoned: Arc<AtomicBool>,
}

/// Kafka sink of JSON records (job files) or any records with an encoder (Rust API).
#[derive(Clone)]
pub struct KafkaSink {
    cfg: Arc<KafkaSinkConfig>,
}

impl KafkaSink {
    pub fn new(cfg: KafkaSinkConfig) -> KafkaSink {
        KafkaSink { cfg: Arc::new(cfg) }
    }

    /// The configuration.
    pub fn config(&self) -> &KafkaSinkConfig {
        &self.cfg
    }

    /// A writer of JSON records: the value is the record as JSON, the key the `key_field`
    /// (a string as its text, any other value as its JSON; records without it have no key).
    pub fn json_writer(&self, info: &TaskInfo) -> Result<KafkaWriter<JsonRecord>, BoxError> {
        let key_field = self.cfg.key_field.clone();
        self.writer(
            info,
            Box::new(move |r: &JsonRecord, out: &mut Vec<u8>| {
                match key_field.as_deref().and_then(|f| r.get(f)) {
                    Some(serde_json::Value::String(s)) => out.extend_from_slice(s.as_bytes()),
                    Some(v) => serde_json::to_writer(&mut *out, v)?,
                    None => return Ok(false),
                }
                Ok(true)
            }),
            Box::new(|r: &JsonRecord, out: &mut Vec<u8>| {
                serde_json::to_writer(out, r)?;
                Ok(())
            }),
        )
    }

    /// A writer with its own encoding: `key` appends the record's key and returns true, or
    /// returns false for no key; `value` appends the value.
    pub fn writer<T>(
        &self,
        info: &TaskInfo,
        key: KeyEncoder<T>,
        value: ValueEncoder<T>,
    ) -> Result<KafkaWriter<T>, BoxError> {
        let exactly_once = self.cfg.semantics == Semantics::ExactlyOnce;
        if exactly_once && !info.checkpointing() {
            return Err(
                "the Kafka sink is exactly-once (semantics = \"exactly-once\") but the job takes no checkpoints; enable checkpointing ([checkpoint]) or use semantics = \"at-least-once\""
                    .into(),
            );
        }
        // Whatever the semantics now: a checkpoint taken exactly-once lists transactions it
        // pre-committed, whose output exists nowhere else (an at-least-once sink stores
        // nothing).
        let restored = match info.restored_state() {
            Some(b) => decode_state(b)?.transactions,
            None => Vec::new(),
        };
        let prefix = self
            .cfg
            .transactional_id_prefix
            .clone()
            .unwrap_or_else(|| format!("weir-{}", info.job));
        let mut base = ClientConfig::new();
        base.set("bootstrap.servers", &self.cfg.brokers)
            .set(
                "client.id",
                format!("weir-{}-sink-{}", info.job, info.subtask),
            )
            .set("enable.idempotence", "true")
            .set("linger.ms", "5");
        if exactly_once {
            base.set(
                "transaction.timeout.ms",
                self.cfg.transaction_timeout.as_millis().to_string(),
            );
        }
        for (k, v) in &self.cfg.properties {
            base.set(k, v);
        }
        let abandoned = Arc::new(AtomicBool::new(false));
        let io = Io {
            cfg: self.cfg.clone(),
            subtask: info.subtask,
            parallelism: info.parallelism,
            prefix,
            base,
            exactly_once,
            next_checkpoint: info.first_checkpoint(),
            restored,
            abandoned: abandoned.clone(),
        };
        let topic = self.cfg.topic.clone();
        let io = Handoff::spawn(
            format!("weir-kafka-sink-{}", info.subtask),
            "the Kafka sink thread",
            BATCHES_IN_FLIGHT,
            info,
            true,
            move |rx, waker| {
                let r = io.run(&topic, &rx, waker);
                if let Err(e) = &r {
                    tracing::error!(error = %e, "Kafka sink failed");
                }
                r
            },
        )?;
        Ok(KafkaWriter {
            io,
            abandoned,
            closed: false,
            batch: Batch::default(),
            key,
            value,
            exactly_once,
            checkpointing: info.checkpointing(),
        })
    }
}

/// Appends a record's Kafka key to the buffer and returns true, or returns false: no key.
pub type KeyEncoder<T> = Box<dyn Fn(&T, &mut Vec<u8>) -> Result<bool, BoxError>>;
/// Appends a record's Kafka value to the buffer.
pub type ValueEncoder<T> = Box<dyn Fn(&T, &mut Vec<u8>) -> Result<(), BoxError>>;

/// Worker side of one sink subtask.
pub struct KafkaWriter<T> {
    io: Handoff<Cmd>,
    abandoned: Arc<AtomicBool>,
    closed: bool,
    batch: Batch,
    key: KeyEncoder<T>,
    value: ValueEncoder<T>,
    exactly_once: bool,
    checkpointing: bool,
}

impl<T> KafkaWriter<T> {
    fn seal(&mut self) -> Result<(), BoxError> {
        if self.batch.len() > 0 {
            let b = std::mem::take(&mut self.batch);
            return self.io.push(Cmd::Write(b));
        }
        Ok(())
    }

    fn command(&mut self, cmd: Cmd) -> Result<(), BoxError> {
        self.seal()?;
        self.io.push(cmd)
    }
}

impl<T> Drop for KafkaWriter<T> {
    fn drop(&mut self) {
        // After a clean end the thread is gone already; otherwise it must not open or abort
        // transactions that a restarted job may be using.
        self.abandoned.store(true, Ordering::SeqCst);
    }
}

impl<T> SinkWriter<T> for KafkaWriter<T> {
    fn write(&mut self, batch: &mut Vec<(i64, T)>) -> Result<(), BoxError> {
        for (_, r) in batch.drain(..) {
            let b = &mut self.batch;
            let start = b.buf.len();
            let key_len = if (self.key)(&r, &mut b.buf)? {
                (b.buf.len() - start) as u32
            } else {
                u32::MAX
            };
            let vstart = b.buf.len();
            (self.value)(&r, &mut b.buf)?;
            let value_len =
                u32::try_from(b.buf.len() - vstart).map_err(|_| "a record is larger than 4 GiB")?;
            b.spans.push((key_len, value_len));
            if b.len() >= BATCH_RECORDS {
                self.seal()?;
            }
        }
        self.io.send_pending().map(|_| ())
    }
    fn finish(&mut self) -> Result<(), BoxError> {
        self.command(Cmd::Close)?;
        self.closed = true;
        Ok(())
    }
    fn blocked(&self) -> bool {
        self.io.blocked()
    }
    fn try_flush(&mut self) -> Result<bool, BoxError> {
        self.io.send_pending()
    }
    fn done(&self) -> bool {
        self.closed && self.io.finished()
    }
    fn pre_commit(&mut self, checkpoint: u64) -> Result<PreCommit, BoxError> {
        let (ack, ack_rx) = crossbeam_channel::bounded(1);
        self.command(Cmd::PreCommit {
            id: checkpoint,
            ack,
        })?;
        let wait = move || -> Result<Vec<u8>, BoxError> {
            match ack_rx.recv() {
                Ok(r) => r.map_err(|e| e.into()),
                Err(_) => Err("the Kafka sink stopped before its pre-commit was durable".into()),
            }
        };
        if self.exactly_once {
            Ok(PreCommit {
                durable_state: Some(Box::new(wait)),
                ..PreCommit::default()
            })
        } else {
            Ok(PreCommit {
                durable: Some(Box::new(move || wait().map(|_| ()))),
                ..PreCommit::default()
            })
        }
    }
    fn commit(&mut self, checkpoint: u64) -> Result<(), BoxError> {
        if self.exactly_once && self.checkpointing {
            self.command(Cmd::Commit { upto: checkpoint })?;
        }
        Ok(())
    }
}

/// True for broker answers that mean a stored transaction can no longer be committed.
fn is_lost(e: &ProtoError) -> bool {
    use kafka_protocol::error::ResponseError as R;
    matches!(
        e.code(),
        Some(
            R::ProducerFenced
                | R::InvalidProducerEpoch
                | R::InvalidTxnState
                | R::InvalidProducerIdMapping
                | R::TransactionalIdNotFound
        )
    )
}

impl Io {
    fn run(mut self, topic: &str, rx: &Receiver<Cmd>, waker: &Waker) -> Result<(), String> {
        if self.exactly_once || !self.restored.is_empty() {
            self.recover()?;
        }
        let mut plain: Option<Prod> = None;
        let mut current: Option<Txn> = None;
        let mut prepared: BTreeMap<u64, Txn> = BTreeMap::new();
        let mut pending: Vec<PendingTxn> = Vec::new();
        let mut spare = SpareSlot(None);
        let mut committer: Option<Committer> = self.exactly_once.then(Committer::spawn);
        let mut client = TxnClient::new(&self.cfg.brokers, Duration::from_secs(10));
        loop {
            if self.abandoned.load(Ordering::SeqCst) {
                // Pre-committed transactions of completed checkpoints still get committed by
                // the committer (the restore commits them anyway); nothing else happens.
                return Ok(());
            }
            if let Some(c) = &committer {
                c.drain(&mut pending)?;
            }
            let cmd = match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(c) => c,
                Err(RecvTimeoutError::Timeout) => {
                    // Serve delivery reports while idle.
                    if let Some(p) = &plain {
                        p.p.poll(Duration::ZERO);
                        p.deliveries.check()?;
                    }
                    if let Some(t) = &current {
                        t.prod.p.poll(Duration::ZERO);
                        t.prod.deliveries.check()?;
                    }
                    continue;
                }
                // The worker went away without closing (job cancelled or failed): open
                // transactions are aborted by the next run's recovery, or time out.
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            };
            waker.wake();
            match cmd {
                Cmd::Write(b) => {
                    let prod = if self.exactly_once {
                        if current.is_none() {
                            current = Some(self.begin(&mut spare.0)?);
                        }
                        let t = current.as_mut().expect("opened above");
                        t.records += b.len() as u64;
                        &t.prod
                    } else {
                        if plain.is_none() {
                            plain = Some(Prod::create(&self.base, "at-least-once output")?);
                        }
                        plain.as_ref().expect("created above")
                    };
                    let mut at = 0usize;
                    for &(klen, vlen) in &b.spans {
                        let key = (klen != u32::MAX).then(|| {
                            let k = &b.buf[at..at + klen as usize];
                            at += klen as usize;
                            k
                        });
                        let value = &b.buf[at..at + vlen as usize];
                        at += vlen as usize;
                        prod.send(topic, key, value, &self.abandoned)?;
                    }
                    prod.p.poll(Duration::ZERO);
                    prod.deliveries.check()?;
                }
                Cmd::PreCommit { id, ack } => {
                    let r = if self.exactly_once {
                        self.pre_commit_txn(
                            id,
                            &mut current,
                            &mut prepared,
                            &mut pending,
                            &mut client,
                        )
                    } else {
                        match &plain {
                            Some(p) => p.flush(CALL_TIMEOUT, &self.abandoned).map(|_| Vec::new()),
                            None => Ok(Vec::new()),
                        }
                    };
                    self.next_checkpoint = id + 1;
                    let failed = r.as_ref().err().cloned();
                    let _ = ack.send(r);
                    if let Some(e) = failed {
                        return Err(e);
                    }
                }
                Cmd::Commit { upto } => {
                    let c = committer.as_ref().expect("exactly-once has a committer");
                    while let Some(entry) = prepared.first_entry() {
                        if *entry.key() > upto {
                            break;
                        }
                        c.commit(entry.remove())?;
                    }
                }
                Cmd::Close => {
                    if let Some(p) = &plain {
                        p.flush(CALL_TIMEOUT, &self.abandoned)?;
                    }
                    if let Some(t) = &current {
                        // With checkpointing the final barrier pre-committed everything, so
                        // nothing can be left here.
                        return Err(format!(
                            "internal error: {} records in transaction `{}` after the final checkpoint",
                            t.records, t.id
                        ));
                    }
                    if !prepared.is_empty() {
                        return Err(format!(
                            "internal error: transactions of checkpoints {:?} were never committed",
                            prepared.keys().collect::<Vec<_>>()
                        ));
                    }
                    // The final checkpoint's commits must be done before the job ends.
                    if let Some(c) = committer.take() {
                        c.finish(&mut pending)?;
                    }
                    return Ok(());
                }
            }
        }
    }

    /// The producer of the transaction of the next checkpoint, in a transaction: the spare
    /// initialised in the background when it is for that checkpoint, else a new one. Then
    /// starts initialising the spare for the checkpoint after.
    fn begin(&self, spare: &mut Option<Spare>) -> Result<Txn, String> {
        let checkpoint = self.next_checkpoint;
        let prod = match spare.take() {
            Some(s) if s.checkpoint == checkpoint => s
                .handle
                .join()
                .map_err(|_| "the Kafka producer initialisation thread panicked".to_string())??,
            // A spare for a checkpoint that passed without records: never in a transaction,
            // so it leaves nothing open; waited for, so that no `init_transactions` of this
            // run can happen after it ended.
            stale => {
                drop(SpareSlot(stale));
                self.init(checkpoint)?
            }
        };
        let id = self.txn_id(checkpoint);
        prod.p
            .begin_transaction()
            .map_err(|e| format!("cannot begin Kafka transaction `{id}`: {e}"))?;
        tracing::debug!(transactional_id = %id, "opened Kafka transaction");
        let next = checkpoint + 1;
        let (cfg, next_id) = self.txn_config(next);
        let topic = self.cfg.topic.clone();
        let abandoned = self.abandoned.clone();
        *spare = Some(Spare {
            checkpoint: next,
            handle: std::thread::Builder::new()
                .name(format!("weir-kafka-init-{}", self.subtask))
                .spawn(move || {
                    if abandoned.load(Ordering::SeqCst) {
                        return Err("the sink was abandoned".to_string());
                    }
                    init_producer(&cfg, &next_id, &topic)
                })
                .map_err(|e| format!("cannot start a Kafka producer initialisation thread: {e}"))?,
        });
        Ok(Txn {
            checkpoint,
            id,
            prod,
            records: 0,
            opened: Instant::now(),
        })
    }

    fn txn_id(&self, checkpoint: u64) -> String {
        format!("{}-{}-{checkpoint}", self.prefix, self.subtask)
    }

    fn txn_config(&self, checkpoint: u64) -> (ClientConfig, String) {
        let id = self.txn_id(checkpoint);
        let mut cfg = self.base.clone();
        cfg.set("transactional.id", &id);
        (cfg, id)
    }

    /// A producer for the transaction of `checkpoint`, initialised (not yet in a transaction).
    fn init(&self, checkpoint: u64) -> Result<Prod, String> {
        let (cfg, id) = self.txn_config(checkpoint);
        init_producer(&cfg, &id, &self.cfg.topic)
    }

    fn pre_commit_txn(
        &self,
        id: u64,
        current: &mut Option<Txn>,
        prepared: &mut BTreeMap<u64, Txn>,
        pending: &mut Vec<PendingTxn>,
        client: &mut TxnClient,
    ) -> Result<Vec<u8>, String> {
        if let Some(mut t) = current.take() {
            if t.checkpoint != id {
                // Barrier ids are contiguous and the sink sees every barrier, so the name
                // predicted when the transaction opened is this barrier's.
                return Err(format!(
                    "internal error: transaction `{}` was opened for checkpoint {} but barrier {id} arrived",
                    t.id, t.checkpoint
                ));
            }
            t.prod
                .flush(self.cfg.transaction_timeout, &self.abandoned)?;
            let d = client
                .describe(&t.id, Instant::now() + CALL_TIMEOUT)
                .map_err(|e| format!("cannot describe Kafka transaction `{}`: {e}", t.id))?;
            if d.state != "Ongoing" {
                return Err(format!(
                    "Kafka transaction `{}` is in state {} after its records were flushed; expected Ongoing",
                    t.id, d.state
                ));
            }
            pending.push(PendingTxn {
                checkpoint: id,
                transactional_id: t.id.clone(),
                producer_id: d.producer_id,
                epoch: d.epoch,
                opened: Some(t.opened),
            });
            t.checkpoint = id;
            prepared.insert(id, t);
        }
        // Every transaction this checkpoint lists is committed only once it completed, up to
        // a checkpoint timeout from now. One that could time out on the broker before then
        // must not be in a checkpoint: failing makes the job restart from the previous one,
        // which aborts it and writes its records again.
        // A crash right after the checkpoint completed leaves the commit to the restored job,
        // up to a restart later.
        let limit = self.cfg.transaction_timeout;
        let wait = self.cfg.checkpoint_timeout + self.cfg.restart_delay + RESTART_ALLOWANCE;
        if let Some((p, age)) = too_old(pending, wait, limit) {
            return Err(format!(
                    "Kafka transaction `{}` has been open for {:.0} s; with up to a checkpoint timeout and a restart ({:.0} s) before checkpoint {id} or the restored job commits it, it could time out on the broker (transaction timeout {:.0} s) and its output would be lost. Failing instead: the job restarts from its previous checkpoint and writes that output again. Checkpoints are failing or slow; raise `transaction_timeout` or look at why",
                    p.transactional_id,
                    age.as_secs_f64(),
                    wait.as_secs_f64(),
                    limit.as_secs_f64()
                ));
        }
        serde_json::to_vec(&SinkState {
            version: 1,
            transaction_version: 1,
            transactions: pending.clone(),
        })
        .map_err(|e| format!("cannot encode the Kafka sink state: {e}"))
    }

    /// Commits the transactions the restored checkpoint stores, then aborts every other
    /// transaction still open under this subtask's ids.
    fn recover(&mut self) -> Result<(), String> {
        let mut client = TxnClient::new(&self.cfg.brokers, Duration::from_secs(10));
        let deadline = Instant::now() + CALL_TIMEOUT;
        for t in &self.restored {
            match client.end_txn(&t.transactional_id, t.producer_id, t.epoch, true, deadline) {
                Ok(()) => tracing::info!(
                    transactional_id = %t.transactional_id,
                    checkpoint = t.checkpoint,
                    "committed the Kafka transaction the restored checkpoint pre-committed"
                ),
                Err(e) if is_lost(&e) => {
                    return Err(format!(
                        "the output of checkpoint {} in Kafka transaction `{}` (producer id {}, epoch {}) can no longer be committed: {e}. The transaction most likely timed out on the broker (transaction.timeout.ms, now {} ms) before the job was restored, and that output is lost; raise `transaction_timeout` or restore sooner",
                        t.checkpoint,
                        t.transactional_id,
                        t.producer_id,
                        t.epoch,
                        self.cfg.transaction_timeout.as_millis()
                    ))
                }
                Err(e) => {
                    return Err(format!(
                        "cannot commit Kafka transaction `{}` of the restored checkpoint {}: {e}",
                        t.transactional_id, t.checkpoint
                    ))
                }
            }
        }
        // Lingering transactions: listed by every broker, filtered to this subtask's ids
        // (subtask 0 also takes ids of subtasks beyond the current parallelism).
        let meta_prod = Prod::create(&self.base, "metadata")?;
        let md = meta_prod
            .p
            .client()
            .fetch_metadata(None, CALL_TIMEOUT)
            .map_err(|e| {
                format!(
                    "cannot read Kafka cluster metadata from `{}`: {e}",
                    self.cfg.brokers
                )
            })?;
        let brokers: Vec<String> = md
            .brokers()
            .iter()
            .map(|b| format!("{}:{}", b.host(), b.port()))
            .collect();
        drop(meta_prod);
        let open = client
            .list_ongoing(&brokers, Instant::now() + CALL_TIMEOUT)
            .map_err(|e| format!("cannot list open Kafka transactions: {e}"))?;
        let keep: std::collections::HashSet<&str> = self
            .restored
            .iter()
            .map(|t| t.transactional_id.as_str())
            .collect();
        // This run's prefix, and the one the restored checkpoint's transactions were opened
        // under if `transactional_id_prefix` changed since: the old run's open transactions
        // would otherwise hold `read_committed` consumers back until they time out.
        let mut prefixes = vec![self.prefix.clone()];
        for t in &self.restored {
            if let Some(p) = id_prefix(&t.transactional_id) {
                if !prefixes.iter().any(|q| q == p) {
                    prefixes.push(p.to_string());
                }
            }
        }
        for t in open {
            let Some((s, _n)) = prefixes.iter().find_map(|p| parse_id(p, &t.id)) else {
                continue;
            };
            let mine = s == self.subtask || (self.subtask == 0 && s >= self.parallelism);
            if !mine || keep.contains(t.id.as_str()) {
                continue;
            }
            if self.abandoned.load(Ordering::SeqCst) {
                return Err("the job stopped during the Kafka sink's recovery".into());
            }
            let mut cfg = self.base.clone();
            cfg.set("transactional.id", &t.id);
            let p = Prod::create(&cfg, &format!("aborting `{}`", t.id))?;
            // init_transactions fences the old producer and aborts its open transaction.
            p.p.init_transactions(CALL_TIMEOUT).map_err(|e| {
                format!(
                    "cannot abort the lingering Kafka transaction `{}`: {e}",
                    t.id
                )
            })?;
            tracing::info!(transactional_id = %t.id, "aborted a Kafka transaction left open by an earlier run (output written after the checkpoint)");
        }
        Ok(())
    }
}

/// Creates a transactional producer and runs `init_transactions` (which registers the id with
/// its coordinator; no transaction is open yet).
fn init_producer(cfg: &ClientConfig, id: &str, topic: &str) -> Result<Prod, String> {
    let prod = Prod::create(cfg, &format!("transaction `{id}`"))?;
    prod.p.init_transactions(CALL_TIMEOUT).map_err(|e| {
        format!(
            "cannot initialise Kafka transactions for `{id}`: {e}{}",
            timeout_hint(&e)
        )
    })?;
    // Warm the producer's metadata of the topic (leaders, connections), so that its first
    // records do not wait for it; a failure here only means they will.
    let _ = prod.p.client().fetch_metadata(Some(topic), CALL_TIMEOUT);
    Ok(prod)
}

/// A producer being initialised in the background for the transaction of `checkpoint`, so
/// that records after a barrier need not wait for `init_transactions`.
struct Spare {
    checkpoint: u64,
    handle: std::thread::JoinHandle<Result<Prod, String>>,
}

/// The spare of a running sink thread. When the thread ends (abandoned after a failure, or
/// closed), a spare still initialising is waited for (bounded by its calls' timeouts), so that its
/// `init_transactions` cannot fence a transaction of the same id that a restarted job opened.
struct SpareSlot(Option<Spare>);

impl Drop for SpareSlot {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            let _ = s.handle.join();
        }
    }
}

/// Commits pre-committed transactions on a thread of its own (`weir-kafka-commit`), in
/// order, so that records of the next checkpoint keep flowing while a commit waits for its
/// markers. It confirms each commit; only confirmed transactions leave the sink's checkpoint
/// state (one still listed after its commit is harmless: committing it again succeeds).
struct Committer {
    tx: Option<Sender<Txn>>,
    confirmed: Receiver<Result<String, String>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Committer {
    fn spawn() -> Committer {
        let (tx, rx) = crossbeam_channel::bounded::<Txn>(16);
        let (ctx, confirmed) = crossbeam_channel::bounded(64);
        let fault = std::env::var(FAULT_KILL_BEFORE_COMMIT)
            .ok()
            .and_then(|v| v.parse::<u64>().ok());
        let handle = std::thread::Builder::new()
            .name("weir-kafka-commit".into())
            .spawn(move || {
                for t in rx {
                    if fault.is_some_and(|k| t.checkpoint >= k) {
                        tracing::error!(checkpoint = t.checkpoint, transactional_id = %t.id, "fault injection ({FAULT_KILL_BEFORE_COMMIT}): aborting the process before the commit");
                        std::process::abort();
                    }
                    let r = commit(&t).map(|_| t.id.clone());
                    let failed = r.is_err();
                    if ctx.send(r).is_err() || failed {
                        return;
                    }
                }
            })
            .ok();
        Committer {
            tx: handle.as_ref().map(|_| tx),
            confirmed,
            handle,
        }
    }

    fn commit(&self, t: Txn) -> Result<(), String> {
        self.tx
            .as_ref()
            .ok_or("cannot start the Kafka commit thread")?
            .send(t)
            .map_err(|_| "the Kafka commit thread stopped".to_string())
    }

    /// Takes confirmed commits out of `pending`; fails with a failed commit's error.
    fn drain(&self, pending: &mut Vec<PendingTxn>) -> Result<(), String> {
        while let Ok(r) = self.confirmed.try_recv() {
            let id = r?;
            pending.retain(|p| p.transactional_id != id);
        }
        Ok(())
    }

    /// Waits until every transaction handed over is committed.
    fn finish(mut self, pending: &mut Vec<PendingTxn>) -> Result<(), String> {
        drop(self.tx.take());
        if let Some(h) = self.handle.take() {
            h.join()
                .map_err(|_| "the Kafka commit thread panicked".to_string())?;
        }
        self.drain(pending)
    }
}

/// Commits a pre-committed transaction, retrying retriable failures.
fn commit(t: &Txn) -> Result<(), String> {
    let deadline = Instant::now() + CALL_TIMEOUT;
    loop {
        match t.prod.p.commit_transaction(CALL_TIMEOUT) {
            Ok(()) => {
                tracing::debug!(transactional_id = %t.id, records = t.records, "committed Kafka transaction");
                return Ok(());
            }
            Err(KafkaError::Transaction(e)) if e.is_retriable() && Instant::now() < deadline => {
                tracing::warn!(transactional_id = %t.id, error = %e, "retrying the commit of a Kafka transaction");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => {
                return Err(format!(
                    "cannot commit Kafka transaction `{}` of completed checkpoint {}: {e}",
                    t.id, t.checkpoint
                ))
            }
        }
    }
}

/// `(subtask, checkpoint)` of a transactional id `<prefix>-<subtask>-<checkpoint>`.
fn parse_id(prefix: &str, id: &str) -> Option<(usize, u64)> {
    let rest = id.strip_prefix(prefix)?.strip_prefix('-')?;
    let (s, n) = rest.split_once('-')?;
    let digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
    if !digits(s) || !digits(n) {
        return None;
    }
    Some((s.parse().ok()?, n.parse().ok()?))
}

/// The prefix of a transactional id `<prefix>-<subtask>-<checkpoint>`.
fn id_prefix(id: &str) -> Option<&str> {
    let (rest, _n) = id.rsplit_once('-')?;
    let (prefix, _s) = rest.rsplit_once('-')?;
    parse_id(prefix, id).map(|_| prefix)
}

fn timeout_hint(e: &KafkaError) -> &'static str {
    if e.rdkafka_error_code() == Some(RDKafkaErrorCode::InvalidTransactionTimeout) {
        " (the broker's transaction.max.timeout.ms is lower than the sink's transaction_timeout; lower `transaction_timeout` or raise the broker's limit)"
    } else {
        ""
    }
}

/// Checks that a transaction outlives what a checkpoint may take: a transaction opened
/// after barrier `n - 1` is committed after checkpoint `n` completes, which takes up to
/// `interval + timeout`, and after a crash only once the job was restarted. Returns the
/// error to show otherwise.
/// `interval`: the longest time between two barriers when checkpoints succeed, the
/// checkpoint interval or `min_pause`, whichever is longer.
pub fn check_transaction_timeout(
    transaction_timeout: Duration,
    interval: Duration,
    checkpoint_timeout: Duration,
    restart_delay: Duration,
) -> Result<(), String> {
    // The same budget as the check at each pre-commit, for a transaction one interval old.
    let need = interval + checkpoint_timeout + restart_delay + RESTART_ALLOWANCE + AGE_MARGIN;
    if transaction_timeout <= need {
        return Err(format!(
            "the Kafka sink's transaction timeout ({} s) must exceed checkpoint interval or min_pause, the longer ({} s) + checkpoint timeout ({} s) + restart delay ({} s) + {} s for a restart + {} s margin = {} s, or a transaction may time out on the broker before its checkpoint commits it and its output is lost; raise `transaction_timeout` (at most the broker's transaction.max.timeout.ms, 15 min by default) or lower the checkpoint timeout",
            transaction_timeout.as_secs_f64(),
            interval.as_secs_f64(),
            checkpoint_timeout.as_secs_f64(),
            restart_delay.as_secs_f64(),
            RESTART_ALLOWANCE.as_secs(),
            AGE_MARGIN.as_secs(),
            need.as_secs_f64()
        ));
    }
    Ok(())
}

/// The first pending transaction (with its age) that could reach `transaction_timeout` on
/// the broker before it is committed, up to `wait` from now (a checkpoint timeout and a
/// restart).
fn too_old(
    pending: &[PendingTxn],
    wait: Duration,
    transaction_timeout: Duration,
) -> Option<(&PendingTxn, Duration)> {
    pending.iter().find_map(|p| {
        let age = p.opened.map_or(Duration::ZERO, |o| o.elapsed());
        (age + wait + AGE_MARGIN >= transaction_timeout).then_some((p, age))
    })
}

/// Slack in the age check of pre-committed transactions (clock reading, commit round trip).
const AGE_MARGIN: Duration = Duration::from_secs(10);

/// Time allowed for a job to come back up after a failure (restore, recovery).
const RESTART_ALLOWANCE: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_only_for_their_prefix() {
        assert_eq!(parse_id("weir-a", "weir-a-3-17"), Some((3, 17)));
        assert_eq!(parse_id("weir-a", "weir-a-b-3-17"), None);
        assert_eq!(parse_id("weir-a", "weir-ab-3-17"), None);
        assert_eq!(parse_id("weir-a", "weir-a-3-"), None);
        assert_eq!(parse_id("weir-a", "weir-a-3-1x"), None);
        assert_eq!(parse_id("weir-a-1", "weir-a-1-2-3"), Some((2, 3)));
        assert_eq!(id_prefix("weir-a-1-2-3"), Some("weir-a-1"));
        assert_eq!(id_prefix("old-0-17"), Some("old"));
        assert_eq!(id_prefix("old-x-17"), None);
        assert_eq!(id_prefix("17"), None);
    }

    #[test]
    fn state_round_trips_and_rejects_damage() {
        let s = SinkState {
            version: 1,
            transaction_version: 1,
            transactions: vec![PendingTxn {
                checkpoint: 4,
                transactional_id: "weir-j-0-4".into(),
                producer_id: 7,
                epoch: 0,
                opened: None,
            }],
        };
        let b = serde_json::to_vec(&s).unwrap();
        assert_eq!(decode_state(&b).unwrap().transactions, s.transactions);
        assert!(decode_state(b"{").unwrap_err().contains("damaged"));
        let v2 = br#"{"version":2,"transaction_version":1,"transactions":[]}"#;
        assert!(decode_state(v2).unwrap_err().contains("version 2"));
    }

    #[test]
    fn pre_committed_transactions_that_could_time_out_are_refused() {
        let s = Duration::from_secs;
        let txn = |age: u64| PendingTxn {
            checkpoint: 1,
            transactional_id: format!("t-{age}"),
            producer_id: 1,
            epoch: 0,
            opened: Instant::now().checked_sub(s(age)),
        };
        let pending = vec![txn(5), txn(400)];
        // 400 s old + 600 s checkpoint timeout + margin >= 900 s: refused.
        let (p, age) = too_old(&pending, s(600), s(900)).unwrap();
        assert_eq!(p.transactional_id, "t-400");
        assert!(age >= s(400));
        assert!(too_old(&pending, s(600), s(1100)).is_none());
        // The pre-commit also budgets a restart: 250 s old passes a checkpoint timeout alone
        // (250 + 600 + 10 < 900) but not one and a restart (250 + 600 + 1 + 60 + 10 >= 900).
        let pending = vec![txn(250)];
        assert!(too_old(&pending, s(600), s(900)).is_none());
        assert!(too_old(&pending, s(600) + s(1) + RESTART_ALLOWANCE, s(900)).is_some());
        // Restored entries have no opening time: never refused here.
        let restored = vec![PendingTxn {
            opened: None,
            ..txn(0)
        }];
        assert!(too_old(&restored, s(600), s(700)).is_none());
    }

    #[test]
    fn transaction_timeout_must_cover_a_checkpoint_and_a_restart() {
        let s = Duration::from_secs;
        assert!(check_transaction_timeout(s(900), s(1), s(600), s(1)).is_ok());
        let e = check_transaction_timeout(s(60), s(1), s(600), s(1)).unwrap_err();
        assert!(
            e.contains("transaction timeout (60 s)") && e.contains("672 s"),
            "{e}"
        );
    }
}
