//! Kafka helpers for the tests: the real broker started by `scripts/services/kafka.sh`,
//! topics, producing input, and reading output as a `read_committed` consumer.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::Value;

/// The broker address (`127.0.0.1:19092`), starting it once per test binary.
pub fn broker() -> String {
    static B: OnceLock<String> = OnceLock::new();
    B.get_or_init(|| {
        super::services::start("kafka.sh")
            .into_iter()
            .find(|(k, _)| k == "KAFKA_BROKERS")
            .map(|(_, v)| v)
            .expect("kafka.sh printed no KAFKA_BROKERS")
    })
    .clone()
}

/// A topic name no earlier run used.
pub fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}-{}-{nanos}", std::process::id())
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

pub fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let r = block_on(admin.create_topics(&[t], &AdminOptions::new())).unwrap();
    for x in r {
        x.unwrap_or_else(|(t, e)| panic!("cannot create topic {t}: {e}"));
    }
    // Wait until the metadata shows every partition with a leader.
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(md) = c.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            if md.topics().iter().any(|t| {
                t.name() == topic
                    && t.error().is_none()
                    && t.partitions().len() == partitions as usize
                    && t.partitions().iter().all(|p| p.leader() >= 0)
            }) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "topic {topic} never became ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn add_partitions(brokers: &str, topic: &str, total: usize) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let p = rdkafka::admin::NewPartitions::new(topic, total);
    let r = block_on(admin.create_partitions(&[p], &AdminOptions::new())).unwrap();
    for x in r {
        x.unwrap_or_else(|(t, e)| panic!("cannot add partitions to {t}: {e}"));
    }
}

/// Produces `records` (JSON) keyed by their `key` field; `partition_of` picks a partition
/// (or `None` for the default partitioner); `timestamp` of each record when given.
pub fn produce(
    brokers: &str,
    topic: &str,
    records: &[Value],
    partition_of: impl Fn(&Value) -> Option<i32>,
    timestamp: impl Fn(&Value) -> Option<i64>,
) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    for r in records {
        let value = serde_json::to_vec(r).unwrap();
        let key = r["key"].as_str().map(|s| s.as_bytes().to_vec());
        let mut rec = BaseRecord::<Vec<u8>, Vec<u8>>::to(topic).payload(&value);
        if let Some(k) = &key {
            rec = rec.key(k);
        }
        if let Some(part) = partition_of(r) {
            rec = rec.partition(part);
        }
        if let Some(ts) = timestamp(r) {
            rec = rec.timestamp(ts);
        }
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(_), back)) => {
                    rec = back;
                    p.poll(Duration::from_millis(10));
                }
                Err((e, _)) => panic!("produce: {e}"),
            }
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

/// The `{id, key, value}` input of the sum tests: `n` records over 101 keys, values > 0.
pub fn sum_input(n: u64) -> (Vec<Value>, HashMap<u64, (String, u64)>) {
    let mut rng = super::Rng(0x9e37_79b9_7f4a_7c15);
    let mut recs = Vec::new();
    let mut all = HashMap::new();
    for id in 0..n {
        let key = format!("k{}", rng.next() % 101);
        let value = 1 + rng.next() % 1000;
        recs.push(serde_json::json!({"id": id, "key": key, "value": value}));
        all.insert(id, (key, value));
    }
    (recs, all)
}

/// Every record of `topic` a consumer with `isolation` (`read_committed` or
/// `read_uncommitted`) sees, read to the end of every partition.
pub fn read_all(brokers: &str, topic: &str, isolation: &str) -> Vec<Value> {
    read_raw(brokers, topic, isolation)
        .into_iter()
        .map(|(_, v)| serde_json::from_slice(&v).unwrap())
        .collect()
}

/// Like [`read_all`], with each record's key, value bytes undecoded.
pub fn read_raw(brokers: &str, topic: &str, isolation: &str) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "weir-tests-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", isolation)
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let parts: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut eof: std::collections::HashSet<i32> = Default::default();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while eof.len() < parts.len() {
        assert!(Instant::now() < deadline, "reading {topic} took too long");
        match c.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                eof.remove(&m.partition());
                out.push((
                    m.key().map(<[u8]>::to_vec),
                    m.payload().unwrap_or_default().to_vec(),
                ));
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                eof.insert(p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    out
}

/// Job-file text of the Kafka sum job: Kafka `input` (bounded) -> key_by key -> running sum
/// of value -> Kafka `output` keyed by `key`, with `semantics` and checkpoints every
/// `interval` into `checkpoints/` (local copies in `local/`). `top` goes among the top-level
/// keys; `checkpoint_extra` at the end, so it may add `[checkpoint]` keys and then tables.
pub fn sum_job_toml(
    name: &str,
    top: &str,
    input: &str,
    output: &str,
    semantics: &str,
    interval: &str,
    checkpoint_extra: &str,
) -> String {
    let b = broker();
    format!(
        r#"
name = "{name}"
parallelism = 2
{top}
[source]
type = "kafka"
brokers = "{b}"
topic = "{input}"
stop_at = "latest"
[[transform]]
type = "key_by"
field = "key"
[[transform]]
type = "sum"
field = "value"
[sink]
type = "kafka"
brokers = "{b}"
topic = "{output}"
key_field = "key"
semantics = "{semantics}"
[checkpoint]
interval = "{interval}"
storage = "checkpoints"
local_dir = "local"
{checkpoint_extra}
"#
    )
}
