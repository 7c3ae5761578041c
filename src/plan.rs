//! Turns a job file into a job graph of JSON-record operators.
//!
//! Everything that can be checked before the job starts is checked here (expressions, input
//! and output paths); errors name the job file, the key and what was expected.

use std::sync::Arc;

use serde_json::Value;
use weir_runtime::{
    AggregateFunction, BoxError, DataStream, RuntimeConfig, StreamEnv, WindowAssigner,
};

use crate::connectors::kafka::{check_transaction_timeout, KafkaSink, KafkaSource, Semantics};
use crate::connectors::{
    json_generator, list_input_files, prepare_output_dir, Blackhole, FileSink, FileSource,
    Generator, JsonRecord, StdoutSink,
};
use crate::expr::Expr;
use crate::job::{Aggregate, JobFile, JobFileError, SinkConfig, SourceConfig, TransformConfig};

/// Runtime settings of a job file, with `--parallelism` applied.
pub fn runtime_config(job: &JobFile, parallelism_override: Option<usize>) -> RuntimeConfig {
    let mut c = RuntimeConfig {
        io_cores: job.io_cores,
        ..RuntimeConfig::default()
    };
    match job.workers {
        Some(w) => c.workers = w,
        // One worker per core the snapshot writers leave free.
        None => c.workers = c.workers.saturating_sub(job.io_cores).max(1),
    }
    c.parallelism = parallelism_override
        .or(job.parallelism)
        .unwrap_or(c.workers);
    c.max_parallelism = job.max_parallelism;
    c.batch_size = job.batch_size;
    c.channel_capacity = job.channel_capacity;
    c
}

/// The longest delay of the job's restart strategy (zero without restarts).
fn restart_delay(job: &JobFile) -> std::time::Duration {
    if job.restart.attempts == 0 {
        std::time::Duration::ZERO
    } else if job.restart.exponential {
        job.restart.max_delay
    } else {
        job.restart.delay
    }
}

fn err(job: &JobFile, key: impl Into<String>, message: impl Into<String>) -> JobFileError {
    JobFileError {
        file: job.path.clone(),
        key: key.into(),
        message: message.into(),
    }
}

fn parse_expr(job: &JobFile, key: String, src: &str) -> Result<Expr, JobFileError> {
    Expr::parse(src).map_err(|e| err(job, key, format!("invalid expression: {e}")))
}

/// A short rendering of a record for error messages.
fn show(r: &JsonRecord) -> String {
    let s = serde_json::to_string(r).unwrap_or_default();
    if s.len() > 200 {
        let cut = (0..=200)
            .rev()
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(0);
        format!("{}…", &s[..cut])
    } else {
        s
    }
}

/// A number of a JSON record, kept integral while possible.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
enum Num {
    Int(i64),
    Float(f64),
}

impl Num {
    fn of(v: &Value) -> Option<Num> {
        match v {
            Value::Number(n) => n
                .as_i64()
                .map(Num::Int)
                .or_else(|| n.as_f64().map(Num::Float)),
            _ => None,
        }
    }
    fn f(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }
    /// Integer sums stay integers until they would overflow i64, then continue as floats.
    fn add(self, o: Num) -> Num {
        match (self, o) {
            (Num::Int(a), Num::Int(b)) => a
                .checked_add(b)
                .map_or(Num::Float(a as f64 + b as f64), Num::Int),
            _ => Num::Float(self.f() + o.f()),
        }
    }
    fn lt(self, o: Num) -> bool {
        match (self, o) {
            (Num::Int(a), Num::Int(b)) => a < b,
            _ => self.f() < o.f(),
        }
    }
    fn value(self) -> Value {
        match self {
            Num::Int(i) => Value::from(i),
            Num::Float(f) => Value::from(f),
        }
    }
}

/// Accumulator of one aggregate (running, or per window); kept in checkpoints.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
enum Acc {
    Sum(Num),
    Count(u64),
    Min(Num),
    Max(Num),
    Avg(f64, u64),
}

impl Acc {
    fn first(kind: Aggregate, n: Option<Num>) -> Acc {
        let n0 = n.unwrap_or(Num::Int(0));
        match kind {
            Aggregate::Sum => Acc::Sum(n0),
            Aggregate::Count => Acc::Count(1),
            Aggregate::Min => Acc::Min(n0),
            Aggregate::Max => Acc::Max(n0),
            Aggregate::Avg => Acc::Avg(n0.f(), 1),
        }
    }
    fn add(&mut self, n: Option<Num>) {
        let n0 = n.unwrap_or(Num::Int(0));
        match self {
            Acc::Sum(s) => *s = s.add(n0),
            Acc::Count(c) => *c += 1,
            Acc::Min(m) => {
                if n0.lt(*m) {
                    *m = n0
                }
            }
            Acc::Max(m) => {
                if m.lt(n0) {
                    *m = n0
                }
            }
            Acc::Avg(s, c) => {
                *s += n0.f();
                *c += 1;
            }
        }
    }
    /// Adds the records of `o`, an accumulator of the same aggregate (window slices).
    fn merge(&mut self, o: &Acc) -> Result<(), BoxError> {
        match (self, o) {
            (Acc::Sum(s), Acc::Sum(n)) => *s = s.add(*n),
            (Acc::Count(c), Acc::Count(n)) => *c += n,
            (Acc::Min(m), Acc::Min(n)) => {
                if n.lt(*m) {
                    *m = *n
                }
            }
            (Acc::Max(m), Acc::Max(n)) => {
                if m.lt(*n) {
                    *m = *n
                }
            }
            (Acc::Avg(s, c), Acc::Avg(s2, c2)) => {
                *s += s2;
                *c += c2;
            }
            (a, b) => {
                return Err(format!(
                    "cannot merge window accumulators of different aggregates: {a:?} and {b:?} \
                     (was the checkpoint taken with another aggregate?)"
                )
                .into())
            }
        }
        Ok(())
    }
    fn value(&self) -> Value {
        match *self {
            Acc::Sum(n) | Acc::Min(n) | Acc::Max(n) => n.value(),
            Acc::Count(c) => Value::from(c),
            Acc::Avg(s, c) => Value::from(s / c as f64),
        }
    }
}

/// Reads the number an aggregate needs from a record (`None` for count).
#[derive(Clone)]
struct NumField {
    kind: Aggregate,
    field: Option<String>,
    ctx: Arc<str>,
}

impl NumField {
    fn get(&self, r: &JsonRecord) -> Result<Option<Num>, BoxError> {
        let Some(f) = self
            .field
            .as_deref()
            .filter(|_| self.kind != Aggregate::Count)
        else {
            return Ok(None);
        };
        match r.get(f) {
            Some(v) => Num::of(v).map(Some).ok_or_else(|| {
                format!(
                    "{}: field `{f}` is {v}, expected a number; record: {}",
                    self.ctx,
                    show(r)
                )
                .into()
            }),
            None => Err(format!(
                "{}: record has no field `{f}`, expected a number; record: {}",
                self.ctx,
                show(r)
            )
            .into()),
        }
    }
}

#[derive(Clone)]
struct JsonWindowAgg(NumField);

impl AggregateFunction<JsonRecord> for JsonWindowAgg {
    type Acc = Option<Acc>;
    type Out = Value;
    fn create(&self) -> Option<Acc> {
        None
    }
    fn add(&self, acc: &mut Option<Acc>, r: &JsonRecord) -> Result<(), BoxError> {
        let n = self.0.get(r)?;
        match acc {
            Some(a) => a.add(n),
            None => *acc = Some(Acc::first(self.0.kind, n)),
        }
        Ok(())
    }
    fn result(&self, acc: Option<Acc>) -> Value {
        acc.map_or(Value::Null, |a| a.value())
    }
    fn mergeable(&self) -> bool {
        true
    }
    fn merge(&self, acc: &mut Option<Acc>, other: &Option<Acc>) -> Result<(), BoxError> {
        match (acc.as_mut(), other) {
            (Some(a), Some(o)) => a.merge(o)?,
            (None, Some(o)) => *acc = Some(o.clone()),
            (_, None) => {}
        }
        Ok(())
    }
}

/// The key of a record for the given fields: the JSON text of the value (one field) or of the
/// array of values (several), so that `"1"` and `1` are different keys.
fn key_of(r: &JsonRecord, fields: &[String]) -> String {
    if let [f] = fields {
        return r
            .get(f)
            .map_or_else(|| "null".to_string(), |v| v.to_string());
    }
    let vals: Vec<&Value> = fields
        .iter()
        .map(|f| r.get(f).unwrap_or(&Value::Null))
        .collect();
    serde_json::to_string(&vals).unwrap_or_default()
}

/// Fails on records that lack a key field, so that they never silently share a `null` key.
fn require_fields(
    s: &DataStream<JsonRecord>,
    name: &str,
    fields: &[String],
    ctx: Arc<str>,
) -> DataStream<JsonRecord> {
    let fields = fields.to_vec();
    s.try_map(name, move |r: JsonRecord| {
        for f in &fields {
            if !r.contains_key(f) {
                return Err(
                    format!("{ctx}: record has no key field `{f}`; record: {}", show(&r)).into(),
                );
            }
        }
        Ok(Some(r))
    })
}

/// Builds the job's graph into `env` after checking everything that can be checked up front.
/// `restoring`: the job will restore from a checkpoint, so existing output in the sink's
/// directory belongs to it (it is recovered, not refused).
pub fn build(job: &JobFile, env: &StreamEnv, restoring: bool) -> Result<(), JobFileError> {
    if let Some(c) = &job.checkpoint {
        env.enable_checkpointing(c.clone());
    }
    // Source.
    let mut s: DataStream<JsonRecord> = match &job.source {
        SourceConfig::File { path } => {
            let files = list_input_files(path).map_err(|e| {
                err(job, "source.path", format!("cannot read `{}`: {e}; expected an existing file or directory of JSON lines", path.display()))
            })?;
            if files.is_empty() {
                tracing::warn!(path = %path.display(), "input directory has no files; the job will produce no records");
            }
            let src = FileSource::new(path).map_err(|e| err(job, "source.path", e.to_string()))?;
            env.source("file-source", move |info| src.reader(info))
        }
        SourceConfig::Generator(g) => {
            let mut gen = Generator::new(json_generator(g.seed, g.keys, g.ts_step_ms));
            if let Some(c) = g.count {
                gen = gen.count(c);
            }
            if let Some(r) = g.rate {
                gen = gen.rate(r);
            }
            if let Some(d) = g.max_drift {
                gen = gen.max_drift(d);
            }
            env.source("generator", move |info| gen.reader(info))
        }
        SourceConfig::Kafka(c) => {
            let src = KafkaSource::new(c.clone());
            env.source("kafka-source", move |info| src.json_reader(info))
        }
    };

    // Transforms.
    let mut key: Option<Vec<String>> = None;
    for (i, t) in job.transforms.iter().enumerate() {
        let at = |what: &str| -> Arc<str> { format!("transform[{i}] ({what})").into() };
        s = match t {
            TransformConfig::Filter { expr } => {
                let e = parse_expr(job, format!("transform[{i}].expr"), expr)?;
                s.try_map(&format!("transform[{i}] filter"), move |r: JsonRecord| {
                    Ok(e.eval_bool(&r)?.then_some(r))
                })
            }
            TransformConfig::Project {
                keep,
                rename,
                compute,
            } => {
                let computed = compute
                    .iter()
                    .map(|(f, src)| {
                        Ok((
                            f.clone(),
                            parse_expr(job, format!("transform[{i}].compute.{f}"), src)?,
                        ))
                    })
                    .collect::<Result<Vec<(String, Expr)>, JobFileError>>()?;
                let keep = keep.clone();
                let rename = rename.clone();
                s.try_map(
                    &format!("transform[{i}] project"),
                    move |mut r: JsonRecord| {
                        if let Some(keep) = &keep {
                            r.retain(|k, _| keep.contains(k));
                        }
                        for (old, new) in &rename {
                            if let Some(v) = r.remove(old) {
                                r.insert(new.clone(), v);
                            }
                        }
                        for (f, e) in &computed {
                            let v = e.eval(&r)?;
                            r.insert(f.clone(), v);
                        }
                        Ok(Some(r))
                    },
                )
            }
            TransformConfig::KeyBy { fields } => {
                key = Some(fields.clone());
                require_fields(&s, "key_by", fields, at("key_by"))
            }
            TransformConfig::Running { aggregate, field } => {
                let fields = key.clone().ok_or_else(|| {
                    err(job, format!("transform[{i}]"), "needs a key_by before it")
                })?;
                let nf = NumField {
                    kind: *aggregate,
                    field: Some(field.clone()),
                    ctx: at(aggregate.name()),
                };
                let field = field.clone();
                let kind = *aggregate;
                s.key_by(move |r: &JsonRecord| key_of(r, &fields))
                    .map_with_state(
                        kind.name(),
                        move |acc: &mut Option<Acc>, mut r: JsonRecord| {
                            let n = nf.get(&r)?;
                            match acc {
                                Some(a) => a.add(n),
                                None => *acc = Some(Acc::first(kind, n)),
                            }
                            let v = acc.as_ref().map_or(Value::Null, |a| a.value());
                            r.insert(field.clone(), v);
                            Ok(Some(r))
                        },
                    )
            }
            TransformConfig::Window(w) => {
                let fields = key.clone().ok_or_else(|| {
                    err(job, format!("transform[{i}]"), "needs a key_by before it")
                })?;
                let what = if w.slide.is_some() {
                    "sliding"
                } else {
                    "tumbling"
                };
                let ctx = at(what);
                let tf = w.time_field.clone();
                let tf2 = tf.clone();
                let with_ts = s
                    .try_map("event-time", move |r: JsonRecord| match r.get(&tf).and_then(Value::as_i64) {
                        Some(_) => Ok(Some(r)),
                        None => Err(format!(
                            "{ctx}: record has no integer field `{tf}` (event time in ms); record: {}",
                            show(&r)
                        )
                        .into()),
                    })
                    .with_timestamps(
                        move |r: &JsonRecord| r.get(&tf2).and_then(Value::as_i64).unwrap_or(weir_runtime::NO_TIMESTAMP),
                        w.out_of_orderness,
                    );
                let assigner = match w.slide {
                    Some(slide) => WindowAssigner::sliding(w.size, slide),
                    None => WindowAssigner::tumbling(w.size),
                };
                let agg = JsonWindowAgg(NumField {
                    kind: w.aggregate,
                    field: w.field.clone(),
                    ctx: at(what),
                });
                let kf = fields.clone();
                let output = w.output.clone();
                with_ts
                    .key_by(move |r: &JsonRecord| key_of(r, &kf))
                    .window(assigner)
                    .aggregate(what, agg)
                    .map(move |res| {
                        let mut r = JsonRecord::new();
                        let kv: Value = serde_json::from_str(&res.key).unwrap_or(Value::Null);
                        match (&fields[..], kv) {
                            ([f], v) => {
                                r.insert(f.clone(), v);
                            }
                            (fs, Value::Array(vs)) => {
                                for (f, v) in fs.iter().zip(vs) {
                                    r.insert(f.clone(), v);
                                }
                            }
                            _ => {}
                        }
                        r.insert("window_start".into(), Value::from(res.start));
                        r.insert("window_end".into(), Value::from(res.end));
                        r.insert(output.clone(), res.value);
                        r
                    })
            }
            TransformConfig::Dedupe { fields } => {
                let fields = match fields {
                    Some(f) => f.clone(),
                    None => key.clone().ok_or_else(|| {
                        err(
                            job,
                            format!("transform[{i}]"),
                            "needs a key_by before it, or `fields`",
                        )
                    })?,
                };
                let checked = require_fields(&s, "dedupe-fields", &fields, at("dedupe"));
                checked
                    .key_by(move |r: &JsonRecord| key_of(r, &fields))
                    .map_with_state("dedupe", |seen: &mut Option<()>, r: JsonRecord| {
                        if seen.is_some() {
                            return Ok(None);
                        }
                        *seen = Some(());
                        Ok(Some(r))
                    })
            }
        };
    }

    // Sink.
    match &job.sink {
        SinkConfig::File { path, overwrite } => {
            if restoring && job.checkpoint.is_some() {
                weir_storage::probe_writable(path).map_err(|e| {
                    err(
                        job,
                        "sink.path",
                        format!("output directory is not writable: {e}"),
                    )
                })?;
            } else {
                prepare_output_dir(path, *overwrite).map_err(|e| err(job, "sink.path", e))?;
            }
            let sink = FileSink::new(path).overwrite(*overwrite);
            s.sink("file-sink", move |info| sink.writer(info));
        }
        SinkConfig::Kafka(c) => {
            if c.semantics == Semantics::ExactlyOnce {
                let Some(cp) = &job.checkpoint else {
                    return Err(err(
                        job,
                        "sink.semantics",
                        "an exactly-once Kafka sink commits its transactions with the checkpoints; add a [checkpoint] section or set semantics = \"at-least-once\"",
                    ));
                };
                check_transaction_timeout(
                    c.transaction_timeout,
                    cp.interval.max(cp.min_pause),
                    cp.timeout,
                    restart_delay(job),
                )
                .map_err(|e| err(job, "sink.transaction_timeout", e))?;
                if cp.mode == weir_runtime::CheckpointMode::AtLeastOnce {
                    tracing::warn!("the Kafka sink is exactly-once but checkpoints are at-least-once: records may be duplicated across restores; use mode = \"exactly-once\"");
                }
            }
            let mut c = c.clone();
            if let Some(cp) = &job.checkpoint {
                c.checkpoint_timeout = cp.timeout;
            }
            c.restart_delay = restart_delay(job);
            let sink = KafkaSink::new(c);
            s.sink("kafka-sink", move |info| sink.json_writer(info));
        }
        SinkConfig::Stdout => s.sink("stdout", |info| StdoutSink.writer(info)),
        SinkConfig::Blackhole => s.sink("blackhole", |_| Ok(Blackhole)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn num_sum_promotes_on_overflow() {
        assert_eq!(Num::Int(2).add(Num::Int(3)), Num::Int(5));
        assert_eq!(
            Num::Int(i64::MAX).add(Num::Int(1)),
            Num::Float(i64::MAX as f64 + 1.0)
        );
        assert_eq!(Num::Int(1).add(Num::Float(0.5)), Num::Float(1.5));
    }

    #[test]
    fn reserved_io_cores_take_cores_from_the_default_worker_count_only() {
        let text = "name = \"t\"\nio_cores = 1\n[source]\ntype = \"generator\"\n[sink]\ntype = \"blackhole\"\n";
        let mut job = crate::job::parse_job(text, std::path::Path::new("t.toml"), &[]).unwrap();
        let cores = RuntimeConfig::default().workers;
        let c = runtime_config(&job, None);
        assert_eq!(c.io_cores, 1);
        assert_eq!(c.workers, cores.saturating_sub(1).max(1));
        assert_eq!(c.parallelism, c.workers);
        job.workers = Some(5);
        assert_eq!(
            runtime_config(&job, None).workers,
            5,
            "explicit workers win"
        );
    }

    #[test]
    fn keys_distinguish_types_and_composites() {
        let r: JsonRecord = serde_json::from_str(r#"{"a":"1","b":1}"#).unwrap();
        assert_ne!(key_of(&r, &["a".into()]), key_of(&r, &["b".into()]));
        assert_eq!(key_of(&r, &["a".into(), "b".into()]), r#"["1",1]"#);
    }
}
