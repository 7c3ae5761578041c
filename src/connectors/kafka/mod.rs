//! Kafka connectors (librdkafka through `rdkafka`): a source whose offsets live in checkpoint
//! state, and a sink that is at-least-once or exactly-once (Kafka transactions committed in two
//! phases with the checkpoints). Design, guarantees and settings: `docs/kafka.md`.

mod protocol;
mod sink;
mod source;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;

pub use sink::{
    check_transaction_timeout, KafkaSink, KafkaWriter, KeyEncoder, ValueEncoder,
    FAULT_KILL_BEFORE_COMMIT,
};
pub use source::{Decoder, KafkaMessage, KafkaReader, KafkaSource};

use super::JsonRecord;

/// Where a Kafka source starts reading a partition that the restored checkpoint (if any)
/// does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The oldest retained record.
    Earliest,
    /// The end of the partition when the job starts: only records produced afterwards.
    Latest,
    /// The consumer group's committed offset (`group`), or the earliest where it has none.
    Committed,
    /// The first record with a timestamp at or after this instant (milliseconds since the
    /// Unix epoch); the end of the partition when there is none.
    Timestamp(i64),
}

/// Settings of a Kafka source (job file `[source]` with `type = "kafka"`).
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaSourceConfig {
    /// Bootstrap servers, `host:port[,host:port..]`.
    pub brokers: String,
    /// One or more topics; their partitions are assigned to subtasks explicitly.
    pub topics: Vec<String>,
    /// Consumer group: offsets of completed checkpoints are committed to it (for monitoring
    /// only; restores use the checkpoint). Default `weir-<job>`.
    pub group: Option<String>,
    pub start: StartFrom,
    /// Bounded mode: stop at the end offsets seen when the job first started.
    pub stop_at_latest: bool,
    /// Event-time watermark lag behind the largest timestamp of a partition.
    pub watermark_delay: Duration,
    /// A partition without records for this long no longer holds the watermark back.
    pub idle_timeout: Option<Duration>,
    /// How often to look for new partitions of the topics (`None`: never). Not in bounded mode.
    pub partition_discovery: Option<Duration>,
    /// Extra librdkafka consumer properties (`properties = { "fetch.min.bytes" = "1" }`).
    pub properties: Vec<(String, String)>,
}

impl KafkaSourceConfig {
    /// A source of `topic` on `brokers` with the defaults.
    pub fn new(brokers: &str, topic: &str) -> Self {
        KafkaSourceConfig {
            brokers: brokers.to_string(),
            topics: vec![topic.to_string()],
            group: None,
            start: StartFrom::Earliest,
            stop_at_latest: false,
            watermark_delay: Duration::ZERO,
            idle_timeout: None,
            partition_discovery: Some(Duration::from_secs(30)),
            properties: Vec::new(),
        }
    }
}

/// Delivery guarantee of the Kafka sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Semantics {
    /// Flush at every barrier: nothing is lost; records written after the last completed
    /// checkpoint are written again after a restore.
    AtLeastOnce,
    /// One Kafka transaction per subtask per checkpoint, committed once the checkpoint
    /// completed: `read_committed` consumers see every record exactly once.
    ExactlyOnce,
}

/// Settings of a Kafka sink (job file `[sink]` with `type = "kafka"`).
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaSinkConfig {
    pub brokers: String,
    pub topic: String,
    /// Record field whose value becomes the Kafka key (a string as its text, other values as
    /// JSON); `None`: no key.
    pub key_field: Option<String>,
    pub semantics: Semantics,
    /// Transactional ids are `<prefix>-<subtask>-<checkpoint>`; default `weir-<job>`. Must
    /// be unique per job writing to a cluster.
    pub transactional_id_prefix: Option<String>,
    /// `transaction.timeout.ms` of the transactions (default 15 min, the broker's default
    /// maximum).
    pub transaction_timeout: Duration,
    /// The job's checkpoint timeout (default 10 min, as `CheckpointConfig`'s): how long after
    /// its barrier a pre-committed transaction may wait for its checkpoint to complete. A
    /// transaction that could time out on the broker within it fails the pre-commit.
    pub checkpoint_timeout: Duration,
    /// The longest delay of the job's restart strategy (default 1 s, as `RestartStrategy`'s):
    /// a pre-committed transaction must also outlive a restart (this + 60 s) after its
    /// checkpoint completed, since a crash before the commit leaves it to the restored job.
    pub restart_delay: Duration,
    /// Extra librdkafka producer properties.
    pub properties: Vec<(String, String)>,
}

impl KafkaSinkConfig {
    /// An exactly-once sink to `topic` on `brokers` with the defaults.
    pub fn new(brokers: &str, topic: &str) -> Self {
        KafkaSinkConfig {
            brokers: brokers.to_string(),
            topic: topic.to_string(),
            key_field: None,
            semantics: Semantics::ExactlyOnce,
            transactional_id_prefix: None,
            transaction_timeout: Duration::from_secs(15 * 60),
            checkpoint_timeout: Duration::from_secs(10 * 60),
            restart_delay: Duration::from_secs(1),
            properties: Vec::new(),
        }
    }
}

/// librdkafka's own log lines and global errors, sent to `tracing` at most once per
/// [`REPEAT_EVERY`] per distinct message: while a broker is down every client (one producer
/// per open transaction, each consumer) reports the same thing many times a second.
pub(crate) fn librdkafka_log(level: RDKafkaLogLevel, fac: &str, message: &str) {
    if !first_in_a_while(message) {
        return;
    }
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error
        | RDKafkaLogLevel::Warning => {
            tracing::warn!(target: "librdkafka", facility = fac, "{message}")
        }
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", facility = fac, "{message}")
        }
        RDKafkaLogLevel::Debug => {
            tracing::debug!(target: "librdkafka", facility = fac, "{message}")
        }
    }
}

/// See [`librdkafka_log`]. Global errors are ones librdkafka retries itself (brokers down,
/// timeouts); what the job cannot survive reaches it through the failing call instead.
pub(crate) fn librdkafka_error(error: &KafkaError, reason: &str) {
    let message = format!("{error}: {reason}");
    if first_in_a_while(&message) {
        tracing::warn!(target: "librdkafka", "{message} (librdkafka retries)");
    }
}

const REPEAT_EVERY: Duration = Duration::from_secs(30);

fn first_in_a_while(message: &str) -> bool {
    static SEEN: Mutex<Option<HashMap<String, Instant>>> = Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    let seen = seen.get_or_insert_with(HashMap::new);
    let now = Instant::now();
    if seen.len() > 1024 {
        seen.retain(|_, at| now.duration_since(*at) < REPEAT_EVERY);
    }
    match seen.get(message) {
        Some(at) if now.duration_since(*at) < REPEAT_EVERY => false,
        _ => {
            seen.insert(message.to_string(), now);
            true
        }
    }
}
