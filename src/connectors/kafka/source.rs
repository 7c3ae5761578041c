//! Kafka source: partitions assigned explicitly to subtasks (no consumer-group rebalancing),
//! offsets in checkpoint state, per-partition watermarks.
//!
//! Partition `p` of topic `t` belongs to subtask `(hash(t) + p) % parallelism` (Flink's
//! assignment: stable when partitions are added). Each subtask resolves its start offsets
//! when its reader is built (checkpoint positions, else the `start` setting, resolved to
//! concrete offsets so that a checkpoint taken before the first record still pins the
//! position), assigns them to a librdkafka consumer, and hands it to an I/O thread
//! (`weir-kafka-source-<s>`) that polls it and passes chunks of raw records over a bounded
//! channel; the worker decodes them. A full channel stops the I/O thread (backpressure).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender, TryRecvError};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use weir_runtime::{BoxError, SourcePoll, SourceReader, TaskInfo, Timestamp, NO_TIMESTAMP};

use super::{JsonRecord, KafkaSourceConfig, StartFrom};

/// Records per chunk handed from the I/O thread to the worker.
const CHUNK_RECORDS: usize = 1024;
/// Chunks in flight between I/O thread and worker.
const CHUNKS_IN_FLIGHT: usize = 4;
/// Longest blocking metadata or offset request while building a reader.
const META_TIMEOUT: Duration = Duration::from_secs(30);
/// Checkpoint positions kept for committing them to the group when the checkpoint completes.
const SNAPSHOTS_KEPT: usize = 32;

/// The consumer's librdkafka context: its logs and global errors, rate-limited.
pub(crate) struct Quiet;

impl rdkafka::ClientContext for Quiet {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        super::librdkafka_log(level, fac, message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        super::librdkafka_error(&error, reason);
    }
}

impl rdkafka::consumer::ConsumerContext for Quiet {}

type QuietConsumer = BaseConsumer<Quiet>;

/// One Kafka record as the decoder sees it.
#[derive(Debug, Clone, Copy)]
pub struct KafkaMessage<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// Record timestamp (ms since the Unix epoch), when it has one.
    pub timestamp: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
}

/// Raw records of one chunk: keys and values back to back in `buf`.
#[derive(Default)]
struct Chunk {
    buf: Vec<u8>,
    recs: Vec<RawRec>,
}

struct RawRec {
    part: u32,
    offset: i64,
    ts: i64,
    /// `u32::MAX`: no key.
    key_len: u32,
    value_len: u32,
}

enum Msg {
    Chunk(Chunk),
    /// A partition found by discovery, reading from `start`; precedes its records.
    Assigned {
        topic: Arc<str>,
        partition: i32,
        start: i64,
    },
    /// Bounded mode: partition `part` reached its end offset; `position` is past it.
    PartitionDone {
        part: u32,
        position: i64,
    },
    /// Bounded mode: every partition reached its end.
    Done,
    Failed(String),
}

enum Cmd {
    /// Commit these positions to the consumer group (monitoring).
    Commit(Offsets),
}

/// Position of one partition in checkpoint state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SavedPartition {
    topic: String,
    partition: i32,
    /// Offset of the next record not yet returned.
    next: i64,
    /// Bounded mode: the end offset seen when the job first started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    end: Option<i64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct SavedState {
    version: u32,
    partitions: Vec<SavedPartition>,
}

/// Worker-side state of one assigned partition.
struct Part {
    topic: Arc<str>,
    partition: i32,
    next: i64,
    end: Option<i64>,
    done: bool,
    max_ts: Option<i64>,
    last_seen: Instant,
}

/// Subtask owning partition `partition` of `topic` among `parallelism` (stable when
/// partitions are added: consecutive partitions go to consecutive subtasks from a start
/// that depends on the topic name).
pub(crate) fn owner(topic: &str, partition: i32, parallelism: usize) -> usize {
    // FNV-1a: fixed, so that every run assigns alike.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in topic.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    ((h % parallelism as u64) as usize + partition.max(0) as usize) % parallelism
}

/// Kafka source (JSON records for job files, any type through a decoder in Rust).
#[derive(Clone)]
pub struct KafkaSource {
    cfg: Arc<KafkaSourceConfig>,
}

impl KafkaSource {
    pub fn new(cfg: KafkaSourceConfig) -> KafkaSource {
        KafkaSource { cfg: Arc::new(cfg) }
    }

    pub fn config(&self) -> &KafkaSourceConfig {
        &self.cfg
    }

    /// A reader of JSON objects (the record value); event time is the record timestamp.
    pub fn json_reader(&self, info: &TaskInfo) -> Result<KafkaReader<JsonRecord>, BoxError> {
        self.reader(
            info,
            Box::new(|m: &KafkaMessage<'_>| {
                serde_json::from_slice::<JsonRecord>(m.value)
                    .map(Some)
                    .map_err(|e| {
                        format!(
                            "topic `{}` partition {} offset {}: the value is not a JSON object ({e}); expected one JSON object per record",
                            m.topic, m.partition, m.offset
                        )
                        .into()
                    })
            }),
        )
    }

    /// A reader with its own decoder (`Ok(None)` skips a record). Event time is the record
    /// timestamp ([`NO_TIMESTAMP`] when it has none).
    pub fn reader<T>(
        &self,
        info: &TaskInfo,
        decode: Decoder<T>,
    ) -> Result<KafkaReader<T>, BoxError> {
        let cfg = &self.cfg;
        let group = cfg
            .group
            .clone()
            .unwrap_or_else(|| format!("weir-{}", info.job));
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &cfg.brokers)
            .set("group.id", &group)
            .set(
                "client.id",
                format!("weir-{}-source-{}", info.job, info.subtask),
            )
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed")
            // A checkpointed offset that retention already deleted: continue at the oldest.
            .set("auto.offset.reset", "earliest");
        for (k, v) in &cfg.properties {
            cc.set(k, v);
        }
        let consumer: QuietConsumer = cc
            .create_with_context(Quiet)
            .map_err(|e| format!("cannot create the Kafka consumer: {e}"))?;

        // Partitions of this subtask.
        let mut owned: Vec<(Arc<str>, i32)> = Vec::new();
        for topic in &cfg.topics {
            for p in partitions_of(&consumer, topic, &cfg.brokers)? {
                if owner(topic, p, info.parallelism) == info.subtask {
                    owned.push((Arc::from(topic.as_str()), p));
                }
            }
        }
        let saved: HashMap<(String, i32), SavedPartition> = match info.restored_state() {
            Some(b) => {
                let s: SavedState = serde_json::from_slice(b)
                    .map_err(|e| format!("damaged Kafka source position in the checkpoint: {e}"))?;
                if s.version != 1 {
                    return Err(format!(
                        "Kafka source position of version {} in the checkpoint; this Weir reads version 1",
                        s.version
                    )
                    .into());
                }
                s.partitions
                    .into_iter()
                    .map(|p| ((p.topic.clone(), p.partition), p))
                    .collect()
            }
            None => HashMap::new(),
        };
        let restoring = info.restored_checkpoint().is_some();
        let now = Instant::now();
        let mut parts = Vec::with_capacity(owned.len());
        for (topic, p) in owned {
            let s = saved.get(&(topic.to_string(), p));
            let next = match s {
                Some(s) => s.next,
                // A partition the restored checkpoint does not know is new: from its start.
                None if restoring => low_watermark(&consumer, &topic, p)?,
                None => start_offset(&consumer, cfg.start, &topic, p)?,
            };
            let end = if cfg.stop_at_latest {
                match s.and_then(|s| s.end) {
                    Some(e) => Some(e),
                    None => Some(watermarks(&consumer, &topic, p)?.1),
                }
            } else {
                None
            };
            parts.push(Part {
                done: end.is_some_and(|e| next >= e),
                topic,
                partition: p,
                next,
                end,
                max_ts: None,
                last_seen: now,
            });
        }
        let mut tpl = TopicPartitionList::new();
        for part in parts.iter().filter(|p| !p.done) {
            tpl.add_partition_offset(&part.topic, part.partition, Offset::Offset(part.next))
                .map_err(|e| {
                    format!(
                        "cannot assign `{}` partition {}: {e}",
                        part.topic, part.partition
                    )
                })?;
        }
        consumer
            .assign(&tpl)
            .map_err(|e| format!("cannot assign Kafka partitions: {e}"))?;
        tracing::info!(
            subtask = info.subtask,
            partitions = %parts.iter().map(|p| format!("{}/{}@{}", p.topic, p.partition, p.next)).collect::<Vec<_>>().join(","),
            "Kafka source assigned"
        );

        let (tx, rx) = crossbeam_channel::bounded(CHUNKS_IN_FLIGHT);
        let (cmd_tx, cmd_rx) = crossbeam_channel::bounded(16);
        let io = IoLoop {
            consumer,
            topics: cfg.topics.clone(),
            subtask: info.subtask,
            parallelism: info.parallelism,
            brokers: cfg.brokers.clone(),
            parts: parts
                .iter()
                .map(|p| IoPart {
                    topic: p.topic.clone(),
                    partition: p.partition,
                    end: p.end,
                    done: p.done,
                })
                .collect(),
            discovery: if cfg.stop_at_latest {
                None
            } else {
                cfg.partition_discovery
            },
            bounded: cfg.stop_at_latest,
        };
        let waker = info.waker();
        let (exited_tx, exited) = crossbeam_channel::bounded::<()>(1);
        std::thread::Builder::new()
            .name(format!("weir-kafka-source-{}", info.subtask))
            .spawn(move || {
                io.run(&tx, &cmd_rx, &waker);
                let _ = exited_tx.send(());
            })
            .map_err(|e| format!("cannot start the Kafka source thread: {e}"))?;
        Ok(KafkaReader {
            parts,
            rx,
            cmd_tx,
            exited,
            current: None,
            exhausted: false,
            snapshots: VecDeque::new(),
            decode,
            watermark_delay: cfg.watermark_delay.as_millis() as i64,
            idle_timeout: cfg.idle_timeout,
            _t: std::marker::PhantomData,
        })
    }
}

fn partitions_of(c: &QuietConsumer, topic: &str, brokers: &str) -> Result<Vec<i32>, String> {
    let md = c.fetch_metadata(Some(topic), META_TIMEOUT).map_err(|e| {
        format!("cannot read the metadata of Kafka topic `{topic}` from `{brokers}`: {e}")
    })?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| {
            format!("Kafka topic `{topic}` is missing from the metadata of `{brokers}`")
        })?;
    if let Some(e) = t.error() {
        return Err(format!(
            "Kafka topic `{topic}` on `{brokers}`: {}; expected an existing topic",
            rdkafka::error::RDKafkaErrorCode::from(e)
        ));
    }
    let mut ps: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    ps.sort_unstable();
    if ps.is_empty() {
        return Err(format!(
            "Kafka topic `{topic}` on `{brokers}` has no partitions"
        ));
    }
    Ok(ps)
}

fn watermarks(c: &QuietConsumer, topic: &str, p: i32) -> Result<(i64, i64), String> {
    c.fetch_watermarks(topic, p, META_TIMEOUT)
        .map_err(|e| format!("cannot read the offsets of Kafka topic `{topic}` partition {p}: {e}"))
}

fn low_watermark(c: &QuietConsumer, topic: &str, p: i32) -> Result<i64, String> {
    Ok(watermarks(c, topic, p)?.0)
}

/// The concrete offset `start` means for a partition now.
fn start_offset(c: &QuietConsumer, start: StartFrom, topic: &str, p: i32) -> Result<i64, String> {
    let (low, high) = watermarks(c, topic, p)?;
    match start {
        StartFrom::Earliest => Ok(low),
        StartFrom::Latest => Ok(high),
        StartFrom::Committed => {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(topic, p);
            let r = c.committed_offsets(tpl, META_TIMEOUT).map_err(|e| {
                format!(
                    "cannot read the committed offset of Kafka topic `{topic}` partition {p}: {e}"
                )
            })?;
            let o = r.find_partition(topic, p).map(|e| e.offset());
            Ok(match o {
                Some(Offset::Offset(o)) => o.clamp(low, high),
                _ => low,
            })
        }
        StartFrom::Timestamp(ts) => {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, p, Offset::Offset(ts))
                .map_err(|e| e.to_string())?;
            let r = c.offsets_for_times(tpl, META_TIMEOUT).map_err(|e| {
                format!("cannot look up timestamp {ts} in Kafka topic `{topic}` partition {p}: {e}")
            })?;
            Ok(match r.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                // No record at or after the timestamp.
                _ => high,
            })
        }
    }
}

/// Consumer errors that retrying cannot cure.
fn is_fatal(e: &KafkaError) -> bool {
    use rdkafka::error::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::Fatal
                | C::TopicAuthorizationFailed
                | C::GroupAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::SaslAuthenticationFailed
        )
    )
}

struct IoPart {
    topic: Arc<str>,
    partition: i32,
    end: Option<i64>,
    done: bool,
}

struct IoLoop {
    consumer: QuietConsumer,
    topics: Vec<String>,
    subtask: usize,
    parallelism: usize,
    brokers: String,
    parts: Vec<IoPart>,
    discovery: Option<Duration>,
    bounded: bool,
}

impl IoLoop {
    /// Sends `m` to the worker, carrying out group commits while the channel is full; false
    /// when the worker is gone (then the commits it asked for are done first).
    fn send(
        &self,
        tx: &Sender<Msg>,
        cmds: &Receiver<Cmd>,
        waker: &weir_runtime::Waker,
        mut m: Msg,
    ) -> bool {
        loop {
            match tx.send_timeout(m, Duration::from_millis(100)) {
                Ok(()) => {
                    waker.wake();
                    return true;
                }
                Err(SendTimeoutError::Timeout(back)) => {
                    m = back;
                    while let Ok(Cmd::Commit(offsets)) = cmds.try_recv() {
                        self.commit(&offsets);
                    }
                }
                Err(SendTimeoutError::Disconnected(_)) => {
                    while let Ok(Cmd::Commit(offsets)) = cmds.try_recv() {
                        self.commit(&offsets);
                    }
                    return false;
                }
            }
        }
    }

    fn run(mut self, tx: &Sender<Msg>, cmds: &Receiver<Cmd>, waker: &weir_runtime::Waker) {
        let send = |io: &Self, m: Msg| io.send(tx, cmds, waker, m);
        let mut index: HashMap<(Arc<str>, i32), u32> = self
            .parts
            .iter()
            .enumerate()
            .map(|(i, p)| ((p.topic.clone(), p.partition), i as u32))
            .collect();
        let bounded = self.bounded;
        let mut finished = bounded && self.parts.iter().all(|p| p.done);
        if finished && !send(&self, Msg::Done) {
            return;
        }
        let mut chunk = Chunk::default();
        let mut chunk_started = Instant::now();
        let mut next_discovery = self.discovery.map(|d| Instant::now() + d);
        let mut last_error: Option<(String, Instant)> = None;
        loop {
            // Commands (group commits for monitoring).
            loop {
                match cmds.try_recv() {
                    Ok(Cmd::Commit(offsets)) => self.commit(&offsets),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            if finished {
                // Only commits remain; wait for them (or for the worker to go away).
                match cmds.recv_timeout(Duration::from_millis(500)) {
                    Ok(Cmd::Commit(offsets)) => self.commit(&offsets),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                continue;
            }
            let mut flush = false;
            let mut done_parts: Vec<u32> = Vec::new();
            match self
                .consumer
                .poll(Duration::from_millis(if chunk.recs.is_empty() {
                    100
                } else {
                    1
                })) {
                Some(Ok(m)) => {
                    let Some(&i) = index.get(&(Arc::from(m.topic()), m.partition())) else {
                        continue;
                    };
                    let part = &mut self.parts[i as usize];
                    if part.done {
                        continue;
                    }
                    if let Some(end) = part.end {
                        if m.offset() >= end {
                            done_parts.push(i);
                        }
                    }
                    if !done_parts.contains(&i) {
                        if chunk.recs.is_empty() {
                            chunk_started = Instant::now();
                        }
                        let key = m.key();
                        let value = m.payload().unwrap_or_default();
                        if let Some(k) = key {
                            chunk.buf.extend_from_slice(k);
                        }
                        chunk.buf.extend_from_slice(value);
                        chunk.recs.push(RawRec {
                            part: i,
                            offset: m.offset(),
                            ts: m.timestamp().to_millis().unwrap_or(NO_TIMESTAMP),
                            key_len: key.map_or(u32::MAX, |k| k.len() as u32),
                            value_len: value.len() as u32,
                        });
                        if part.end.is_some_and(|e| m.offset() + 1 >= e) {
                            done_parts.push(i);
                        }
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    flush = true;
                    if bounded {
                        // Control records (transaction markers) may sit at the end: the
                        // consumer's position, not the last record, tells if the end is reached.
                        if let Ok(pos) = self.consumer.position() {
                            for (i, part) in self.parts.iter().enumerate() {
                                if part.done || part.partition != p {
                                    continue;
                                }
                                let at =
                                    pos.find_partition(&part.topic, part.partition)
                                        .and_then(|e| match e.offset() {
                                            Offset::Offset(o) => Some(o),
                                            _ => None,
                                        });
                                if let (Some(at), Some(end)) = (at, part.end) {
                                    if at >= end {
                                        done_parts.push(i as u32);
                                    }
                                }
                            }
                        }
                    }
                }
                Some(Err(e)) if is_fatal(&e) => {
                    let _ = send(
                        &self,
                        Msg::Failed(format!("Kafka consumer of subtask {}: {e}", self.subtask)),
                    );
                    return;
                }
                Some(Err(e)) => {
                    // librdkafka retries transport trouble itself; say so once a minute.
                    let msg = e.to_string();
                    let quiet = last_error
                        .as_ref()
                        .is_some_and(|(m, at)| *m == msg && at.elapsed() < Duration::from_secs(60));
                    if !quiet {
                        tracing::warn!(subtask = self.subtask, error = %msg, "Kafka consumer error (retrying)");
                        last_error = Some((msg, Instant::now()));
                    }
                    flush = true;
                }
                None => flush = true,
            }
            if !chunk.recs.is_empty()
                && (flush
                    || !done_parts.is_empty()
                    || chunk.recs.len() >= CHUNK_RECORDS
                    || chunk_started.elapsed() >= Duration::from_millis(5))
                && !send(&self, Msg::Chunk(std::mem::take(&mut chunk)))
            {
                return;
            }
            for i in done_parts {
                let part = &mut self.parts[i as usize];
                if part.done {
                    continue;
                }
                part.done = true;
                let position = part.end.unwrap_or_default();
                tracing::debug!(subtask = self.subtask, topic = %part.topic, partition = part.partition, end = position, "Kafka partition reached its end offset");
                let mut tpl = TopicPartitionList::new();
                let _ = tpl.add_partition(&part.topic, part.partition);
                let _ = self.consumer.incremental_unassign(&tpl);
                if !send(&self, Msg::PartitionDone { part: i, position }) {
                    return;
                }
            }
            if bounded && !finished && self.parts.iter().all(|p| p.done) {
                tracing::debug!(
                    subtask = self.subtask,
                    "every Kafka partition of the subtask reached its end"
                );
                finished = true;
                if !send(&self, Msg::Done) {
                    return;
                }
            }
            if next_discovery.is_some_and(|t| Instant::now() >= t) {
                next_discovery = self.discovery.map(|d| Instant::now() + d);
                let (new, r) = self.discover(&mut index);
                for m in new {
                    if !self.send(tx, cmds, waker, m) {
                        return;
                    }
                }
                if let Err(e) = r {
                    tracing::warn!(subtask = self.subtask, error = %e, "Kafka partition discovery failed (will retry)")
                }
            }
        }
    }

    fn commit(&self, offsets: &Offsets) {
        let mut tpl = TopicPartitionList::new();
        for (t, p, o) in offsets {
            if tpl.add_partition_offset(t, *p, Offset::Offset(*o)).is_err() {
                return;
            }
        }
        if tpl.count() == 0 {
            return;
        }
        // Synchronous: on this thread it delays only polling, and the commit of the final
        // checkpoint is done before the job ends.
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Sync) {
            tracing::debug!(error = %e, "committing source offsets to the consumer group failed (monitoring only)");
        }
    }

    /// New partitions of the topics owned by this subtask, assigned from their start: the
    /// `Assigned` messages of every partition assigned, also when a later step failed (the
    /// worker must learn of each partition the consumer reads, in order).
    fn discover(
        &mut self,
        index: &mut HashMap<(Arc<str>, i32), u32>,
    ) -> (Vec<Msg>, Result<(), String>) {
        let mut out = Vec::new();
        let r = self.discover_into(index, &mut out);
        (out, r)
    }

    fn discover_into(
        &mut self,
        index: &mut HashMap<(Arc<str>, i32), u32>,
        out: &mut Vec<Msg>,
    ) -> Result<(), String> {
        for topic in self.topics.clone() {
            for p in partitions_of(&self.consumer, &topic, &self.brokers)? {
                let key: (Arc<str>, i32) = (Arc::from(topic.as_str()), p);
                if owner(&topic, p, self.parallelism) != self.subtask || index.contains_key(&key) {
                    continue;
                }
                let start = low_watermark(&self.consumer, &topic, p)?;
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition_offset(&topic, p, Offset::Offset(start))
                    .map_err(|e| e.to_string())?;
                self.consumer
                    .incremental_assign(&tpl)
                    .map_err(|e| format!("cannot assign new partition {p} of `{topic}`: {e}"))?;
                tracing::info!(subtask = self.subtask, topic = %topic, partition = p, offset = start, "Kafka source picked up a new partition");
                index.insert(key.clone(), self.parts.len() as u32);
                self.parts.push(IoPart {
                    topic: key.0.clone(),
                    partition: p,
                    end: None,
                    done: false,
                });
                out.push(Msg::Assigned {
                    topic: key.0,
                    partition: p,
                    start,
                });
            }
        }
        Ok(())
    }
}

/// Turns a Kafka record into a record of the job (`Ok(None)`: skip it).
pub type Decoder<T> = Box<dyn Fn(&KafkaMessage<'_>) -> Result<Option<T>, BoxError>>;

/// Positions `(topic, partition, next offset)` recorded by a checkpoint.
type Offsets = Vec<(Arc<str>, i32, i64)>;

/// Worker side of one source subtask.
pub struct KafkaReader<T> {
    parts: Vec<Part>,
    rx: Receiver<Msg>,
    cmd_tx: Sender<Cmd>,
    /// Closed when the I/O thread ended.
    exited: Receiver<()>,
    /// A chunk being returned, with the index of its next record and byte offset.
    current: Option<(Chunk, usize, usize)>,
    exhausted: bool,
    snapshots: VecDeque<(u64, Offsets)>,
    decode: Decoder<T>,
    watermark_delay: i64,
    idle_timeout: Option<Duration>,
    _t: std::marker::PhantomData<fn() -> T>,
}

impl<T> KafkaReader<T> {
    /// Returns records of the current chunk into `out` (up to `max`); true if it is used up.
    fn drain_chunk(&mut self, out: &mut Vec<(Timestamp, T)>, max: usize) -> Result<bool, BoxError> {
        let Some((chunk, at, pos)) = self.current.as_mut() else {
            return Ok(true);
        };
        let now = Instant::now();
        while *at < chunk.recs.len() && out.len() < max {
            let r = &chunk.recs[*at];
            let key = (r.key_len != u32::MAX).then(|| {
                let k = &chunk.buf[*pos..*pos + r.key_len as usize];
                *pos += r.key_len as usize;
                k
            });
            let value = &chunk.buf[*pos..*pos + r.value_len as usize];
            *pos += r.value_len as usize;
            *at += 1;
            let part = &mut self.parts[r.part as usize];
            let msg = KafkaMessage {
                topic: &part.topic,
                partition: part.partition,
                offset: r.offset,
                timestamp: (r.ts != NO_TIMESTAMP).then_some(r.ts),
                key,
                value,
            };
            let rec = (self.decode)(&msg)?;
            part.next = r.offset + 1;
            part.last_seen = now;
            if r.ts != NO_TIMESTAMP {
                part.max_ts = Some(part.max_ts.map_or(r.ts, |m| m.max(r.ts)));
            }
            if let Some(v) = rec {
                out.push((r.ts, v));
            }
        }
        let used = *at >= chunk.recs.len();
        if used {
            self.current = None;
        }
        Ok(used)
    }

    fn next_idle_deadline(&self) -> Option<Instant> {
        let t = self.idle_timeout?;
        self.parts
            .iter()
            .filter(|p| !p.done)
            .map(|p| p.last_seen + t)
            .filter(|d| *d > Instant::now())
            .min()
    }
}

impl<T> Drop for KafkaReader<T> {
    /// Lets the I/O thread finish its last group commit (bounded: the job's end is not held
    /// up by an unreachable broker for more than a few seconds).
    fn drop(&mut self) {
        self.cmd_tx = crossbeam_channel::bounded(1).0;
        self.rx = crossbeam_channel::never();
        let _ = self.exited.recv_timeout(Duration::from_secs(5));
    }
}

impl<T> SourceReader<T> for KafkaReader<T> {
    fn poll(&mut self, out: &mut Vec<(Timestamp, T)>, max: usize) -> Result<SourcePoll, BoxError> {
        loop {
            if !self.drain_chunk(out, max)? || out.len() >= max {
                return Ok(SourcePoll::Ready);
            }
            match self.rx.try_recv() {
                Ok(Msg::Chunk(c)) => self.current = Some((c, 0, 0)),
                Ok(Msg::Assigned {
                    topic,
                    partition,
                    start,
                }) => self.parts.push(Part {
                    topic,
                    partition,
                    next: start,
                    end: None,
                    done: false,
                    max_ts: None,
                    last_seen: Instant::now(),
                }),
                Ok(Msg::PartitionDone { part, position }) => {
                    let p = &mut self.parts[part as usize];
                    p.next = p.next.max(position);
                    p.done = true;
                }
                Ok(Msg::Done) => self.exhausted = true,
                Ok(Msg::Failed(e)) => return Err(e.into()),
                Err(TryRecvError::Empty) => {
                    return Ok(if !out.is_empty() {
                        SourcePoll::Ready
                    } else if self.exhausted {
                        SourcePoll::Exhausted
                    } else {
                        SourcePoll::Idle(self.next_idle_deadline())
                    });
                }
                Err(TryRecvError::Disconnected) => {
                    if self.exhausted {
                        return Ok(if out.is_empty() {
                            SourcePoll::Exhausted
                        } else {
                            SourcePoll::Ready
                        });
                    }
                    return Err("the Kafka source thread stopped".into());
                }
            }
            if self.exhausted && self.current.is_none() && self.rx.is_empty() {
                return Ok(if out.is_empty() {
                    SourcePoll::Exhausted
                } else {
                    SourcePoll::Ready
                });
            }
        }
    }

    fn snapshot(&mut self, checkpoint: u64) -> Result<Vec<u8>, BoxError> {
        let state = SavedState {
            version: 1,
            partitions: self
                .parts
                .iter()
                .map(|p| SavedPartition {
                    topic: p.topic.to_string(),
                    partition: p.partition,
                    next: p.next,
                    end: p.end,
                })
                .collect(),
        };
        if self.snapshots.len() >= SNAPSHOTS_KEPT {
            self.snapshots.pop_front();
        }
        self.snapshots.push_back((
            checkpoint,
            self.parts
                .iter()
                .map(|p| (p.topic.clone(), p.partition, p.next))
                .collect(),
        ));
        Ok(serde_json::to_vec(&state)?)
    }

    fn watermark(&mut self) -> Option<Timestamp> {
        let now = Instant::now();
        let of = |p: &Part| {
            p.max_ts
                .map(|m| m.saturating_sub(self.watermark_delay).saturating_sub(1))
        };
        let idle = |p: &Part| {
            self.idle_timeout
                .is_some_and(|t| now.duration_since(p.last_seen) >= t)
        };
        // The minimum over active partitions; an active one without a record yet holds the
        // watermark back.
        let mut min: Option<i64> = None;
        let mut any_active = false;
        for p in self.parts.iter().filter(|p| !p.done && !idle(p)) {
            any_active = true;
            let wm = of(p)?;
            min = Some(min.map_or(wm, |m| m.min(wm)));
        }
        if any_active {
            return min;
        }
        // Every partition is idle (or finished): the minimum over those that have had records.
        // Without this, a partition whose records all came before the others went idle, and
        // that went idle itself before the source was polled again, would never count.
        self.parts.iter().filter(|p| !p.done).filter_map(of).min()
    }

    /// Idle when it reads no partition (more subtasks than partitions: it would hold event
    /// time back forever) or, with `idle_timeout`, when every partition it reads has been idle
    /// that long.
    fn idle(&self) -> bool {
        let now = Instant::now();
        let mut open = self.parts.iter().filter(|p| !p.done).peekable();
        if open.peek().is_none() {
            return true;
        }
        self.idle_timeout
            .is_some_and(|t| open.all(|p| now.duration_since(p.last_seen) >= t))
    }

    fn checkpoint_complete(&mut self, checkpoint: u64) -> Result<(), BoxError> {
        while self
            .snapshots
            .front()
            .is_some_and(|(id, _)| *id < checkpoint)
        {
            self.snapshots.pop_front();
        }
        if let Some((id, offsets)) = self.snapshots.front() {
            if *id == checkpoint {
                // Monitoring only: a full queue skips this commit, a later one catches up.
                let _ = self.cmd_tx.try_send(Cmd::Commit(offsets.clone()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(max_ts: Option<i64>, quiet_for: Duration) -> Part {
        Part {
            topic: Arc::from("t"),
            partition: 0,
            next: 0,
            end: None,
            done: false,
            max_ts,
            last_seen: Instant::now().checked_sub(quiet_for).unwrap(),
        }
    }

    fn reader(parts: Vec<Part>, idle: Option<Duration>) -> KafkaReader<()> {
        let (_tx, rx) = crossbeam_channel::bounded(1);
        let (cmd_tx, _cmds) = crossbeam_channel::bounded(1);
        let (_exit, exited) = crossbeam_channel::bounded(1);
        KafkaReader {
            parts,
            rx,
            cmd_tx,
            exited,
            current: None,
            exhausted: false,
            snapshots: VecDeque::new(),
            decode: Box::new(|_| Ok(None)),
            watermark_delay: 0,
            idle_timeout: idle,
            _t: std::marker::PhantomData,
        }
    }

    #[test]
    fn watermarks_skip_idle_partitions_without_forgetting_the_ones_that_went_quiet() {
        let ms = Duration::from_millis;
        let idle = Some(ms(300));
        // Without idleness, a partition without records holds the watermark back.
        let mut r = reader(vec![part(Some(5000), ms(0)), part(None, ms(1000))], None);
        assert_eq!(r.watermark(), None);
        // With it, the empty partition stops counting once idle.
        let mut r = reader(vec![part(Some(5000), ms(0)), part(None, ms(1000))], idle);
        assert_eq!(r.watermark(), Some(4999));
        // ... also when the partition with records went idle too before the next poll.
        let mut r = reader(vec![part(Some(5000), ms(1000)), part(None, ms(1000))], idle);
        assert_eq!(r.watermark(), Some(4999));
        // An idle partition behind does not hold an active one back.
        let mut r = reader(
            vec![part(Some(1000), ms(1000)), part(Some(9000), ms(0))],
            idle,
        );
        assert_eq!(r.watermark(), Some(8999));
        // All idle: the minimum of what they had (never ahead of any of them).
        let mut r = reader(
            vec![part(Some(1000), ms(1000)), part(Some(9000), ms(1000))],
            idle,
        );
        assert_eq!(r.watermark(), Some(999));
    }

    #[test]
    fn idle_when_it_reads_nothing_or_every_partition_is_quiet() {
        let ms = Duration::from_millis;
        assert!(reader(vec![], None).idle());
        assert!(reader(vec![], Some(ms(300))).idle());
        // Without idle_timeout a partition never counts as idle.
        assert!(!reader(vec![part(None, ms(1000))], None).idle());
        let idle = Some(ms(300));
        assert!(!reader(vec![part(Some(5), ms(0)), part(None, ms(1000))], idle).idle());
        assert!(reader(vec![part(Some(5), ms(1000)), part(None, ms(1000))], idle).idle());
        // Finished partitions (bounded mode) do not keep it active.
        let mut done = part(Some(5), ms(0));
        done.done = true;
        assert!(reader(vec![done, part(None, ms(1000))], idle).idle());
    }

    #[test]
    fn partitions_spread_over_subtasks_and_stay_put_when_added() {
        for par in 1..6 {
            let mut count = vec![0; par];
            for p in 0..(4 * par as i32) {
                count[owner("clicks", p, par)] += 1;
            }
            assert!(count.iter().all(|c| *c == 4), "{count:?}");
        }
        // The owner of a partition depends only on the topic, the partition and the
        // parallelism (not on how many partitions exist).
        assert_eq!(owner("clicks", 3, 4), owner("clicks", 3, 4));
        assert_eq!(owner("a", 0, 1), 0);
    }
}
