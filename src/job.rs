//! Job files: loading, `--set` overrides and validation.
//!
//! A job file is a TOML document describing one pipeline: a `[source]`, zero or
//! more `[[transform]]` tables applied in order, a `[sink]`, and optionally
//! checkpoint settings (`[checkpoint]`, or Flink's `execution.checkpointing.*`
//! and `state.checkpoints.*` names). The user reference is `docs/job-file.md`.
//!
//! Loading happens in three steps:
//!
//! 1. the text is parsed into an order-preserving tree of TOML values (the
//!    order of `rename` / `compute` entries matters, and `toml::Table` sorts
//!    its keys);
//! 2. the `--set dotted.key=value` overrides are applied to that tree;
//! 3. the tree is converted into [`JobFile`], checking every key by hand so
//!    that each error names the file, the key path (`transform[2].size`) and
//!    what was expected.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use weir_runtime::{CheckpointConfig, CheckpointMode, OnCancel};

use crate::connectors::kafka::{KafkaSinkConfig, KafkaSourceConfig, Semantics, StartFrom};

// ---------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------

/// A validated job file.
#[derive(Debug, Clone, PartialEq)]
pub struct JobFile {
    /// Job name: `[A-Za-z0-9_.-]+`, usable as a directory name.
    pub name: String,
    /// Parallelism of every operator; `None` lets the engine choose.
    pub parallelism: Option<usize>,
    /// Number of worker threads; `None` lets the engine choose.
    pub workers: Option<usize>,
    /// Cores reserved for snapshot writers (0: none; workers use every core).
    pub io_cores: usize,
    /// Number of key groups (upper bound of `parallelism`).
    pub max_parallelism: usize,
    /// Records per batch exchanged between workers.
    pub batch_size: usize,
    /// Batches per channel.
    pub channel_capacity: usize,
    pub source: SourceConfig,
    pub transforms: Vec<TransformConfig>,
    pub sink: SinkConfig,
    /// Checkpoint settings, validated; `None` when the file has none
    /// (checkpointing disabled). `storage` is a `file://` URI with an absolute
    /// path and `local_dir` is resolved against the job file's directory.
    pub checkpoint: Option<CheckpointConfig>,
    /// What `weir run` does when the job fails (needs checkpointing to restart).
    pub restart: RestartStrategy,
    /// The job file path, as given to [`load_job_file`] / [`parse_job`].
    pub path: PathBuf,
}

/// Restart strategy (`[restart]`): after an operator error, a panic or too many failed
/// checkpoints, `weir run` restores the latest checkpoint in the same process.
#[derive(Debug, Clone, PartialEq)]
pub struct RestartStrategy {
    /// Restarts allowed before the job fails for good (`attempts`, default 3; 0 disables).
    pub attempts: u32,
    /// Delay before the first restart (`delay`, default 1s).
    pub delay: Duration,
    /// `strategy = "exponential-backoff"`: each delay is the previous one times `multiplier`,
    /// up to `max_delay`; `"fixed-delay"` (default) waits `delay` every time.
    pub exponential: bool,
    /// Growth factor of exponential backoff (default 2.0, at least 1.0).
    pub multiplier: f64,
    /// Longest delay of exponential backoff (default 1m).
    pub max_delay: Duration,
}

impl Default for RestartStrategy {
    fn default() -> Self {
        RestartStrategy {
            attempts: 3,
            delay: Duration::from_secs(1),
            exponential: false,
            multiplier: 2.0,
            max_delay: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum SourceConfig {
    /// JSON lines from a file, or from the regular files of a directory.
    /// The path is already resolved against the job file's directory.
    File {
        path: PathBuf,
    },
    Generator(GeneratorConfig),
    /// Kafka topic(s), JSON values.
    Kafka(KafkaSourceConfig),
}

/// Deterministic records `{"id", "key", "value", "ts"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratorConfig {
    /// Number of records; `None` = unbounded.
    pub count: Option<u64>,
    /// Number of distinct keys (>= 1).
    pub keys: u64,
    pub seed: u64,
    /// Records per second over all subtasks; `None` = as fast as possible.
    pub rate: Option<f64>,
    /// Event time of record `i` is `i * ts_step_ms`.
    pub ts_step_ms: u64,
    /// Subtasks stay within this many records of each other (`Generator::max_drift`);
    /// `None` = unaligned.
    pub max_drift: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TransformConfig {
    Filter {
        expr: String,
    },
    Project {
        keep: Option<Vec<String>>,
        /// `(old, new)` pairs in file order.
        rename: Vec<(String, String)>,
        /// `(field, expression)` pairs in file order.
        compute: Vec<(String, String)>,
    },
    KeyBy {
        fields: Vec<String>,
    },
    /// Running aggregate per key (`type = "sum" | "count" | "min" | "max" | "avg"`).
    Running {
        aggregate: Aggregate,
        field: String,
    },
    Window(WindowConfig),
    Dedupe {
        /// `None`: dedupe on the current key.
        fields: Option<Vec<String>>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Aggregate {
    Sum,
    Count,
    Min,
    Max,
    Avg,
}

impl Aggregate {
    const ALL: [Aggregate; 5] = [
        Aggregate::Sum,
        Aggregate::Count,
        Aggregate::Min,
        Aggregate::Max,
        Aggregate::Avg,
    ];

    /// The name used in job files: `"sum"`, `"count"`, `"min"`, `"max"`, `"avg"`.
    pub fn name(&self) -> &'static str {
        match self {
            Aggregate::Sum => "sum",
            Aggregate::Count => "count",
            Aggregate::Min => "min",
            Aggregate::Max => "max",
            Aggregate::Avg => "avg",
        }
    }

    fn from_name(s: &str) -> Option<Aggregate> {
        Aggregate::ALL.into_iter().find(|a| a.name() == s)
    }
}

/// A tumbling (`slide == None`) or sliding event-time window.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowConfig {
    /// Window length: > 0, whole milliseconds.
    pub size: Duration,
    /// `None` = tumbling; otherwise 0 < slide <= size, whole milliseconds.
    pub slide: Option<Duration>,
    /// Event-time field (integer milliseconds).
    pub time_field: String,
    pub aggregate: Aggregate,
    /// Field to aggregate; only `None` when `aggregate` is `Count`.
    pub field: Option<String>,
    /// Watermark lag; whole milliseconds, may be zero.
    pub out_of_orderness: Duration,
    /// Name of the result field (default: the aggregate name).
    pub output: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SinkConfig {
    /// Part files in a directory (resolved against the job file's directory).
    File {
        path: PathBuf,
        overwrite: bool,
    },
    Stdout,
    Blackhole,
    /// A Kafka topic, JSON values.
    Kafka(KafkaSinkConfig),
}

/// A job file problem: which file, which key (`transform[2].size`, or empty
/// for the whole file) and what was wrong / expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {}{}", file.display(), if key.is_empty() { String::new() } else { format!("{key}: ") }, message)]
pub struct JobFileError {
    pub file: PathBuf,
    pub key: String,
    pub message: String,
}

/// Reads, overrides and validates the job file at `path`.
///
/// `overrides` are `--set` strings (`dotted.key=value`), applied in order.
pub fn load_job_file(path: &Path, overrides: &[String]) -> Result<JobFile, JobFileError> {
    let text = std::fs::read_to_string(path).map_err(|e| JobFileError {
        file: path.to_path_buf(),
        key: String::new(),
        message: match e.kind() {
            std::io::ErrorKind::InvalidData => {
                "cannot read the job file: it is not valid UTF-8 text".to_string()
            }
            _ => format!("cannot read the job file: {e}"),
        },
    })?;
    parse_job(&text, path, overrides)
}

/// Parses and validates job file `text`. `path` is used in error messages and
/// its parent directory to resolve relative source / sink paths.
pub fn parse_job(text: &str, path: &Path, overrides: &[String]) -> Result<JobFile, JobFileError> {
    let to_error = |f: Fail| JobFileError {
        file: path.to_path_buf(),
        key: f.key,
        message: f.message,
    };
    let mut root = Val::Table(parse_document(text).map_err(to_error)?);
    let set = apply_overrides(&mut root, overrides).map_err(to_error)?;
    build(&root, path).map_err(|f| to_error(annotate_override(f, &set)))
}

const DURATION_SYNTAX: &str =
    r#"expected a number followed by ms, s, m or h (e.g. "200ms", "30s", "10m")"#;

/// Parses `"200ms"`, `"1.5s"`, `"30s"`, `"10m"`, `"2h"`: an integer or decimal
/// number (no sign, no spaces) followed by `ms`, `s`, `m` or `h`.
///
/// The error is the "expected ..." explanation, to be put after the offending
/// value in a message.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit_ns) = if let Some(n) = s.strip_suffix("ms") {
        (n, MS)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1_000 * MS)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000 * MS)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3_600_000 * MS)
    } else {
        return Err(DURATION_SYNTAX.to_string());
    };
    times_unit(s, number, unit_ns).map_err(|e| e.unwrap_or_else(|| DURATION_SYNTAX.to_string()))
}

const FLINK_DURATION_SYNTAX: &str = r#"expected a number and an optional unit: ms, s, min, h or d (e.g. "500 ms", "30 s", "1 min"); a bare number is milliseconds"#;

/// Parses a duration as Flink writes it, for Flink's option names: a number,
/// optional spaces and an optional unit, case-insensitive. Units: `ms`,
/// `milli(s)`, `millisecond(s)`; `s`, `sec(s)`, `second(s)`; `m`, `min`,
/// `minute(s)`; `h`, `hour(s)`; `d`, `day(s)`. A bare number is milliseconds
/// (`"10000"`). Leading and trailing spaces are ignored. Every form that
/// [`parse_duration`] accepts is accepted too.
///
/// The error is the "expected ..." explanation, as for [`parse_duration`].
pub fn parse_flink_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let unit_ns = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "ms" | "milli" | "millis" | "millisecond" | "milliseconds" => MS,
        "s" | "sec" | "secs" | "second" | "seconds" => 1_000 * MS,
        "m" | "min" | "minute" | "minutes" => 60_000 * MS,
        "h" | "hour" | "hours" => 3_600_000 * MS,
        "d" | "day" | "days" => 86_400_000 * MS,
        _ => return Err(FLINK_DURATION_SYNTAX.to_string()),
    };
    times_unit(s, number, unit_ns)
        .map_err(|e| e.unwrap_or_else(|| FLINK_DURATION_SYNTAX.to_string()))
}

/// Nanoseconds in a millisecond.
const MS: u128 = 1_000_000;

/// `number` (digits, optionally with a decimal part) times `unit_ns`
/// nanoseconds. `Err(None)`: `number` has the wrong syntax; `Err(Some(e))`:
/// too large or too precise (`s` is the whole duration, for the message).
fn times_unit(s: &str, number: &str, unit_ns: u128) -> Result<Duration, Option<String>> {
    let (int, frac) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    let all_digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(int) || (number.contains('.') && !all_digits(frac)) {
        return Err(None);
    }
    let too_large = || Some("expected at most 5124095h (about 584 years)".to_string());
    let int = int.trim_start_matches('0');
    if int.len() > 25 {
        return Err(too_large());
    }
    // At most 25 digits: fits in u128 (the product is checked below).
    let whole: u128 = if int.is_empty() {
        0
    } else {
        int.parse::<u128>().map_err(|_| too_large())?
    };
    let frac = frac.trim_end_matches('0');
    let mut frac_ns: u128 = 0;
    if !frac.is_empty() {
        let precision = || {
            Some(format!(
                "expected at most nanosecond precision (\"{}\" has too many decimals)",
                s
            ))
        };
        if frac.len() > 15 {
            return Err(precision());
        }
        let digits: u128 = frac.parse().map_err(|_| precision())?;
        let scale = 10u128.pow(frac.len() as u32);
        let scaled = digits * unit_ns; // < 1e15 * 8.64e13
        if scaled % scale != 0 {
            return Err(precision());
        }
        frac_ns = scaled / scale;
    }
    let total = whole
        .checked_mul(unit_ns)
        .and_then(|w| w.checked_add(frac_ns))
        .ok_or_else(too_large)?;
    let total = u64::try_from(total).map_err(|_| too_large())?;
    Ok(Duration::from_nanos(total))
}

// ---------------------------------------------------------------------------
// Order-preserving TOML value tree
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Val {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Datetime(String),
    Array(Vec<Val>),
    /// Entries in document order.
    Table(Vec<(String, Val)>),
}

/// The key under which the `toml` deserializer hands out datetimes.
const TOML_DATETIME_KEY: &str = "$__toml_private_datetime";

impl<'de> Deserialize<'de> for Val {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValVisitor)
    }
}

struct ValVisitor;

impl<'de> Visitor<'de> for ValVisitor {
    type Value = Val;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a TOML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Val, E> {
        Ok(Val::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Val, E> {
        Ok(Val::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Val, E> {
        Ok(i64::try_from(v).map_or(Val::Float(v as f64), Val::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Val, E> {
        Ok(Val::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Val, E> {
        Ok(Val::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Val, E> {
        Ok(Val::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Val, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Val::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Val, A::Error> {
        let mut entries: Vec<(String, Val)> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let value: Val = map.next_value()?;
            if entries.is_empty() && key == TOML_DATETIME_KEY {
                if let Val::Str(s) = value {
                    return Ok(Val::Datetime(s));
                }
            }
            entries.push((key, value));
        }
        Ok(Val::Table(entries))
    }
}

fn parse_document(text: &str) -> Res<Vec<(String, Val)>> {
    match toml::from_str::<Val>(text) {
        Ok(Val::Table(entries)) => Ok(entries),
        Ok(other) => fail(
            "",
            format!("expected a TOML table, found {}", describe(&other)),
        ),
        Err(e) => {
            let msg = e.message().trim().replace('\n', "; ");
            match e.span() {
                Some(span) => {
                    let (line, col) = line_col(text, span.start);
                    fail(
                        "",
                        format!("invalid TOML at line {line}, column {col}: {msg}"),
                    )
                }
                None => fail("", format!("invalid TOML: {msg}")),
            }
        }
    }
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let bytes = text.as_bytes();
    let before = &bytes[..offset.min(bytes.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let col = before[start..]
        .iter()
        .filter(|&&b| b & 0xC0 != 0x80)
        .count()
        + 1;
    (line, col)
}

// ---------------------------------------------------------------------------
// Errors and value helpers
// ---------------------------------------------------------------------------

/// An error before the file name is attached.
#[derive(Debug)]
struct Fail {
    key: String,
    message: String,
    /// Another key the error is about (the other side of a conflict), so that
    /// a `--set` of either key is pointed at.
    also: Option<String>,
}

type Res<T> = Result<T, Fail>;

fn fail<T>(key: impl Into<String>, message: impl Into<String>) -> Res<T> {
    Err(Fail {
        key: key.into(),
        message: message.into(),
        also: None,
    })
}

/// A string for a message: quoted, escaped, and cut when long.
fn quote(s: &str) -> String {
    const MAX: usize = 60;
    let n = s.chars().count();
    if n <= MAX {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{head:?}... ({n} characters)")
    }
}

/// What a value is, for "found ..." in messages.
fn describe(v: &Val) -> String {
    match v {
        Val::Str(s) => format!("string {}", quote(s)),
        Val::Int(i) => format!("integer {i}"),
        Val::Float(f) => format!("float {f:?}"),
        Val::Bool(b) => format!("boolean {b}"),
        Val::Datetime(d) => format!("datetime {d}"),
        Val::Array(a) if a.is_empty() => "an empty array".to_string(),
        Val::Array(_) => "an array".to_string(),
        Val::Table(_) => "a table".to_string(),
    }
}

/// `prefix.key`, quoting keys that are not bare TOML keys.
fn join_key(prefix: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = if bare { key.to_string() } else { quote(key) };
    if prefix.is_empty() {
        key
    } else {
        format!("{prefix}.{key}")
    }
}

/// A table being read, with its key path (`""` for the document root).
struct Tbl<'a> {
    path: String,
    entries: &'a [(String, Val)],
}

impl<'a> Tbl<'a> {
    /// `v` must be a table; `what` describes the expected table for the message.
    fn of(path: String, v: &'a Val, what: &str) -> Res<Tbl<'a>> {
        match v {
            Val::Table(entries) => Ok(Tbl { path, entries }),
            other => fail(path, format!("expected {what}, found {}", describe(other))),
        }
    }

    fn key(&self, k: &str) -> String {
        join_key(&self.path, k)
    }

    fn get(&self, k: &str) -> Option<&'a Val> {
        self.entries.iter().find(|(n, _)| n == k).map(|(_, v)| v)
    }

    /// Rejects keys not in `allowed`.
    fn allow(&self, allowed: &[&str]) -> Res<()> {
        self.allow_listing(allowed, &allowed.join(", "))
    }

    /// Rejects keys not in `allowed`; `listing` shows them in the message.
    fn allow_listing(&self, allowed: &[&str], listing: &str) -> Res<()> {
        for (k, _) in self.entries {
            if !allowed.contains(&k.as_str()) {
                return fail(
                    self.key(k),
                    format!("unknown key; expected one of: {listing}"),
                );
            }
        }
        Ok(())
    }

    /// The `type` key, which must be one of `names`.
    fn kind(&self, what: &str, names: &[&str]) -> Res<&'a str> {
        let key = self.key("type");
        let list = names.join(", ");
        match self.get("type") {
            None => fail(key, format!("missing; expected one of: {list}")),
            Some(Val::Str(s)) if names.contains(&s.as_str()) => Ok(s),
            Some(Val::Str(s)) => fail(
                key,
                format!("unknown {what} type {}; expected one of: {list}", quote(s)),
            ),
            Some(v) => fail(
                key,
                format!("expected a string, one of: {list}; found {}", describe(v)),
            ),
        }
    }

    /// A required key: `missing` explains what it is for.
    fn need(&self, k: &str, missing: &str) -> Res<&'a Val> {
        match self.get(k) {
            Some(v) => Ok(v),
            None => fail(self.key(k), format!("missing; {missing}")),
        }
    }

    fn opt_int(&self, k: &str, min: i64, max: i64, what: &str) -> Res<Option<i64>> {
        self.get(k)
            .map(|v| int(&self.key(k), v, min, max, what))
            .transpose()
    }

    fn opt_field(&self, k: &str) -> Res<Option<String>> {
        self.get(k).map(|v| field_name(&self.key(k), v)).transpose()
    }

    fn opt_fields(&self, k: &str, allow_empty: bool) -> Res<Option<Vec<String>>> {
        self.get(k)
            .map(|v| field_list(&self.key(k), v, allow_empty))
            .transpose()
    }
}

const POSITIVE: &str = "a positive integer";
const NON_NEGATIVE: &str = "a non-negative integer";

fn int(key: &str, v: &Val, min: i64, max: i64, what: &str) -> Res<i64> {
    match v {
        Val::Int(i) if (min..=max).contains(i) => Ok(*i),
        Val::Int(i) => fail(key, format!("expected {what}, found {i}")),
        other => fail(key, format!("expected {what}, found {}", describe(other))),
    }
}

fn to_usize(i: i64) -> usize {
    usize::try_from(i).unwrap_or(usize::MAX)
}

fn to_u64(i: i64) -> u64 {
    u64::try_from(i).unwrap_or(0)
}

fn string<'a>(key: &str, v: &'a Val, what: &str) -> Res<&'a str> {
    match v {
        Val::Str(s) => Ok(s),
        other => fail(key, format!("expected {what}, found {}", describe(other))),
    }
}

/// A non-empty string; `what` is e.g. "a field name".
fn non_empty(key: &str, v: &Val, what: &str) -> Res<String> {
    let what = format!("{what} (a non-empty string)");
    let s = string(key, v, &what)?;
    if s.trim().is_empty() {
        return fail(key, format!("expected {what}, found {}", quote(s)));
    }
    Ok(s.to_string())
}

fn field_name(key: &str, v: &Val) -> Res<String> {
    non_empty(key, v, "a field name")
}

fn field_list(key: &str, v: &Val, allow_empty: bool) -> Res<Vec<String>> {
    let Val::Array(items) = v else {
        return fail(
            key,
            format!(
                "expected an array of field names, e.g. [\"a\", \"b\"], found {}",
                describe(v)
            ),
        );
    };
    if items.is_empty() && !allow_empty {
        return fail(
            key,
            "expected a non-empty array of field names, found an empty array",
        );
    }
    let mut fields: Vec<String> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let item_key = format!("{key}[{i}]");
        let f = field_name(&item_key, item)?;
        if fields.contains(&f) {
            return fail(
                item_key,
                format!("duplicate field {}; expected each field once", quote(&f)),
            );
        }
        fields.push(f);
    }
    Ok(fields)
}

/// A table of `name = "string"` entries, in file order.
fn string_table(key: &str, v: &Val, example: &str, value_what: &str) -> Res<Vec<(String, String)>> {
    let t = Tbl::of(key.to_string(), v, &format!("a table such as {example}"))?;
    let mut out = Vec::with_capacity(t.entries.len());
    for (k, val) in t.entries {
        if k.trim().is_empty() {
            return fail(t.key(k), "expected a non-empty field name as the key");
        }
        out.push((k.clone(), non_empty(&t.key(k), val, value_what)?));
    }
    Ok(out)
}

fn duration(key: &str, v: &Val) -> Res<Duration> {
    let s = string(key, v, "a duration string such as \"10s\"")?;
    parse_duration(s).or_else(|e| fail(key, format!("invalid duration {}; {e}", quote(s))))
}

/// A window duration: whole milliseconds (event time is integer milliseconds),
/// and > 0 unless `zero_ok`.
fn window_duration(key: &str, v: &Val, zero_ok: bool) -> Res<Duration> {
    let d = duration(key, v)?;
    let shown = match v {
        Val::Str(s) => quote(s),
        _ => String::new(),
    };
    if d.subsec_nanos() % 1_000_000 != 0 {
        return fail(
            key,
            format!(
                "expected a whole number of milliseconds (event time is integer milliseconds), found {shown}"
            ),
        );
    }
    if d.is_zero() && !zero_ok {
        return fail(
            key,
            format!("expected a duration greater than 0, found {shown}"),
        );
    }
    Ok(d)
}

/// Resolves `p` against the job file's directory.
fn resolve(dir: &Path, p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() {
        p
    } else {
        dir.join(p)
    }
}

// ---------------------------------------------------------------------------
// Conversion and validation
// ---------------------------------------------------------------------------

const TOP_KEYS: &[&str] = &[
    "name",
    "parallelism",
    "workers",
    "io_cores",
    "max_parallelism",
    "batch_size",
    "channel_capacity",
    "source",
    "transform",
    "sink",
    "checkpoint",
    "restart",
    "execution",
    "state",
];
const SOURCE_TYPES: &[&str] = &["file", "generator", "kafka"];
const SINK_TYPES: &[&str] = &["file", "stdout", "blackhole", "kafka"];
const TRANSFORM_TYPES: &[&str] = &[
    "filter", "project", "key_by", "sum", "count", "min", "max", "avg", "tumbling", "sliding",
    "dedupe",
];
const AGGREGATES: &str = "sum, count, min, max, avg";

const MAX_NAME_LEN: usize = 255;

fn build(root: &Val, file: &Path) -> Res<JobFile> {
    let top = Tbl::of(String::new(), root, "a TOML table")?;
    let listing: Vec<&str> = TOP_KEYS
        .iter()
        .map(|k| match *k {
            "execution" => "execution.checkpointing",
            "state" => "state.checkpoints",
            k => k,
        })
        .collect();
    top.allow_listing(TOP_KEYS, &listing.join(", "))?;

    let name = job_name(top.need("name", "expected the job name, e.g. name = \"sums\"")?)?;
    let parallelism = top
        .opt_int("parallelism", 1, i64::MAX, POSITIVE)?
        .map(to_usize);
    let workers = top.opt_int("workers", 1, i64::MAX, POSITIVE)?.map(to_usize);
    let io_cores = top
        .opt_int("io_cores", 0, 4095, "an integer from 0 to 4095")?
        .map_or(0, to_usize);
    let max_parallelism = range_or(&top, "max_parallelism", 128, 32_768)?;
    let batch_size = range_or(&top, "batch_size", 1024, 1_000_000)?;
    let channel_capacity = range_or(&top, "channel_capacity", 16, 4096)?;
    if let Some(p) = parallelism {
        if p > max_parallelism {
            return fail(
                "parallelism",
                format!("{p} exceeds max_parallelism {max_parallelism}"),
            );
        }
    }

    let dir = file.parent().unwrap_or_else(|| Path::new(""));
    let source = source(
        top.need(
            "source",
            "expected a [source] table with type = \"file\" or \"generator\"",
        )?,
        dir,
    )?;
    let transforms = match top.get("transform") {
        None => Vec::new(),
        Some(v) => transforms(v)?,
    };
    let sink = sink(
        top.need(
            "sink",
            "expected a [sink] table with type = \"file\", \"stdout\" or \"blackhole\"",
        )?,
        dir,
    )?;
    check_flow(&transforms)?;
    let checkpoint = checkpoint(&top, dir)?;
    let restart = match top.get("restart") {
        None => RestartStrategy::default(),
        Some(v) => restart(v)?,
    };

    Ok(JobFile {
        name,
        parallelism,
        workers,
        io_cores,
        max_parallelism,
        batch_size,
        channel_capacity,
        source,
        transforms,
        sink,
        checkpoint,
        restart,
        path: file.to_path_buf(),
    })
}

fn restart(v: &Val) -> Res<RestartStrategy> {
    let t = Tbl::of("restart".into(), v, "a [restart] table")?;
    t.allow(&["strategy", "attempts", "delay", "multiplier", "max_delay"])?;
    let mut r = RestartStrategy::default();
    if let Some(s) = t.get("strategy") {
        r.exponential = choice(
            &t.key("strategy"),
            s,
            "restart strategy",
            &[("fixed-delay", false), ("exponential-backoff", true)],
        )?;
    }
    if let Some(a) = t.opt_int("attempts", 0, 1_000_000, "an integer from 0 to 1000000")? {
        r.attempts = a as u32;
    }
    if let Some(d) = t.get("delay") {
        r.delay = duration(&t.key("delay"), d)?;
    }
    if let Some(d) = t.get("max_delay") {
        r.max_delay = duration(&t.key("max_delay"), d)?;
    }
    if let Some(m) = t.get("multiplier") {
        let key = t.key("multiplier");
        r.multiplier = match m {
            Val::Int(i) => *i as f64,
            Val::Float(f) => *f,
            other => {
                return fail(
                    key,
                    format!(
                        "expected a number of at least 1.0, found {}",
                        describe(other)
                    ),
                )
            }
        };
        if !(r.multiplier.is_finite() && r.multiplier >= 1.0) {
            return fail(
                key,
                format!(
                    "{} is out of range; expected a number of at least 1.0",
                    r.multiplier
                ),
            );
        }
    }
    if r.max_delay < r.delay {
        return fail(
            t.key("max_delay"),
            format!("{:?} is shorter than delay {:?}", r.max_delay, r.delay),
        );
    }
    Ok(r)
}

fn range_or(t: &Tbl, k: &str, default: i64, max: i64) -> Res<usize> {
    let what = format!("an integer from 1 to {max}");
    Ok(to_usize(t.opt_int(k, 1, max, &what)?.unwrap_or(default)))
}

fn job_name(v: &Val) -> Res<String> {
    let rule = "expected letters, digits, '_', '.' and '-' only (it is used as a directory name)";
    let s = string("name", v, "a string")?;
    let valid_chars = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if s.is_empty() || !valid_chars || s == "." || s == ".." {
        return fail(
            "name",
            format!("invalid job name {}; {rule}, not \".\" or \"..\"", quote(s)),
        );
    }
    if s.len() > MAX_NAME_LEN {
        return fail(
            "name",
            format!(
                "job name is {} characters long; expected at most {MAX_NAME_LEN}",
                s.len()
            ),
        );
    }
    Ok(s.to_string())
}

fn source(v: &Val, dir: &Path) -> Res<SourceConfig> {
    let t = Tbl::of(
        "source".into(),
        v,
        "a table ([source] with type = \"file\" or \"generator\")",
    )?;
    match t.kind("source", SOURCE_TYPES)? {
        "file" => {
            t.allow(&["type", "path"])?;
            let p = non_empty(
                &t.key("path"),
                t.need(
                    "path",
                    "a \"file\" source needs a file or directory of JSON lines, e.g. path = \"input/\"",
                )?,
                "a path",
            )?;
            Ok(SourceConfig::File {
                path: resolve(dir, &p),
            })
        }
        "kafka" => kafka_source(&t),
        _ => {
            t.allow(&[
                "type",
                "count",
                "keys",
                "seed",
                "rate",
                "ts_step_ms",
                "max_drift",
            ])?;
            let count = t.opt_int("count", 0, i64::MAX, NON_NEGATIVE)?.map(to_u64);
            let keys = t
                .opt_int("keys", 1, i64::MAX, POSITIVE)?
                .map_or(100, to_u64);
            let seed = t
                .opt_int("seed", 0, i64::MAX, NON_NEGATIVE)?
                .map_or(0, to_u64);
            let rate = t.get("rate").map(|v| rate(&t.key("rate"), v)).transpose()?;
            let ts_step_ms = t
                .opt_int("ts_step_ms", 0, i64::MAX, NON_NEGATIVE)?
                .map_or(1, to_u64);
            let max_drift = t
                .opt_int("max_drift", 0, i64::MAX, NON_NEGATIVE)?
                .map(to_u64);
            Ok(SourceConfig::Generator(GeneratorConfig {
                count,
                keys,
                seed,
                rate,
                ts_step_ms,
                max_drift,
            }))
        }
    }
}

/// `brokers`: a non-empty `host:port[,host:port..]` list.
fn brokers(t: &Tbl) -> Res<String> {
    let key = t.key("brokers");
    let s = non_empty(
        &key,
        t.need(
            "brokers",
            "a Kafka connector needs its bootstrap servers, e.g. brokers = \"127.0.0.1:9092\"",
        )?,
        "a broker list",
    )?;
    for b in s.split(',') {
        let b = b.trim();
        let ok = b
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !ok {
            return fail(
                key,
                format!(
                    "invalid broker {}; expected host:port, e.g. \"127.0.0.1:9092\"",
                    quote(b)
                ),
            );
        }
    }
    Ok(s)
}

/// `properties`: librdkafka settings passed through, as strings.
fn kafka_properties(t: &Tbl, reserved: &[&str]) -> Res<Vec<(String, String)>> {
    let Some(v) = t.get("properties") else {
        return Ok(Vec::new());
    };
    let key = t.key("properties");
    let props = string_table(
        &key,
        v,
        "properties = { \"fetch.min.bytes\" = \"1\" }",
        "a librdkafka property value",
    )?;
    for (k, v) in &props {
        if reserved.contains(&k.as_str()) {
            return fail(
                join_key(&key, k),
                "is set by Weir (offsets, transactions and delivery depend on it); remove it",
            );
        }
        // librdkafka is built without TLS and SASL, and the sink's own transaction requests
        // speak plaintext: refuse here rather than fail obscurely at the first connection.
        let insecure = k == "security.protocol" && v.eq_ignore_ascii_case("plaintext");
        if !insecure
            && (k == "security.protocol" || k.starts_with("ssl.") || k.starts_with("sasl."))
        {
            return fail(
                join_key(&key, k),
                "is not supported: Weir's Kafka connectors speak plaintext only for now (no TLS or SASL); remove it, or set security.protocol = \"plaintext\"",
            );
        }
    }
    Ok(props)
}

fn kafka_source(t: &Tbl) -> Res<SourceConfig> {
    t.allow(&[
        "type",
        "brokers",
        "topic",
        "topics",
        "group",
        "start",
        "stop_at",
        "format",
        "watermark_delay",
        "idle_timeout",
        "partition_discovery",
        "properties",
    ])?;
    let brokers = brokers(t)?;
    let topics = match (t.get("topic"), t.get("topics")) {
        (Some(_), Some(_)) => {
            return fail(t.key("topics"), "give either `topic` or `topics`, not both")
        }
        (Some(v), None) => vec![non_empty(&t.key("topic"), v, "a topic name")?],
        (None, Some(v)) => field_list(&t.key("topics"), v, false)?,
        (None, None) => {
            return fail(
                t.key("topic"),
                "missing; a \"kafka\" source needs topic = \"name\" or topics = [\"a\", \"b\"]",
            )
        }
    };
    let mut c = KafkaSourceConfig::new(&brokers, &topics[0]);
    c.topics = topics;
    c.group = t
        .get("group")
        .map(|v| non_empty(&t.key("group"), v, "a consumer group name"))
        .transpose()?;
    if let Some(v) = t.get("start") {
        c.start = start_from(&t.key("start"), v)?;
    }
    if let Some(v) = t.get("stop_at") {
        c.stop_at_latest = choice(&t.key("stop_at"), v, "stop_at", &[("latest", true)])?;
    }
    if let Some(v) = t.get("format") {
        let key = t.key("format");
        if matches!(v, Val::Str(s) if s == "raw") {
            return fail(
                key,
                "format \"raw\" (bytes) is for the Rust API (KafkaSource::reader); job files read JSON: format = \"json\"",
            );
        }
        choice(&key, v, "format", &[("json", ())])?;
    }
    if let Some(v) = t.get("watermark_delay") {
        c.watermark_delay = window_duration(&t.key("watermark_delay"), v, true)?;
    }
    if let Some(v) = t.get("idle_timeout") {
        c.idle_timeout = Some(positive_duration(&t.key("idle_timeout"), v)?);
    }
    if let Some(v) = t.get("partition_discovery") {
        let key = t.key("partition_discovery");
        c.partition_discovery = match v {
            Val::Str(s) if s == "off" => None,
            _ => Some(positive_duration(&key, v).map_err(|mut f| {
                f.message.push_str(" (or \"off\")");
                f
            })?),
        };
    }
    c.properties = kafka_properties(
        t,
        &[
            "bootstrap.servers",
            "group.id",
            "enable.auto.commit",
            "enable.auto.offset.store",
            "enable.partition.eof",
        ],
    )?;
    Ok(SourceConfig::Kafka(c))
}

fn positive_duration(key: &str, v: &Val) -> Res<Duration> {
    let d = duration(key, v)?;
    if d.is_zero() {
        return fail(key, "expected a duration greater than 0");
    }
    Ok(d)
}

/// `start`: earliest | latest | committed | a timestamp (milliseconds since the Unix epoch,
/// or an RFC 3339 date-time such as 2026-11-26T08:00:00Z, quoted or not).
fn start_from(key: &str, v: &Val) -> Res<StartFrom> {
    let what = "earliest, latest, committed, or a timestamp (milliseconds since the Unix epoch, or an RFC 3339 date-time such as 2026-11-26T08:00:00Z)";
    match v {
        Val::Str(s) if s == "earliest" => Ok(StartFrom::Earliest),
        Val::Str(s) if s == "latest" => Ok(StartFrom::Latest),
        Val::Str(s) if s == "committed" => Ok(StartFrom::Committed),
        Val::Int(ms) if *ms >= 0 => Ok(StartFrom::Timestamp(*ms)),
        Val::Str(s) | Val::Datetime(s) => match rfc3339_ms(s) {
            Some(ms) => Ok(StartFrom::Timestamp(ms)),
            None => fail(key, format!("expected {what}, found {}", quote(s))),
        },
        other => fail(key, format!("expected {what}, found {}", describe(other))),
    }
}

/// Milliseconds since the Unix epoch of `YYYY-MM-DDTHH:MM:SS[.fff](Z|+HH:MM|-HH:MM)`.
fn rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        (!part.is_empty() && part.bytes().all(|c| c.is_ascii_digit())).then(|| part.parse().ok())?
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut ms = 0;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let frac = s.get(start..i)?;
        if frac.is_empty() {
            return None;
        }
        ms = format!("{:0<3}", &frac[..frac.len().min(3)])
            .parse::<i64>()
            .ok()?;
    }
    let offset_min = match s.get(i..)? {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) && &o[3..4] == ":" => {
            let v = num(i + 1..i + 3)? * 60 + num(i + 4..i + 6)?;
            if o.starts_with('-') {
                -v
            } else {
                v
            }
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60) * 1000) + ms)
}

fn kafka_sink(t: &Tbl) -> Res<SinkConfig> {
    t.allow(&[
        "type",
        "brokers",
        "topic",
        "key_field",
        "semantics",
        "transactional_id_prefix",
        "transaction_timeout",
        "properties",
    ])?;
    let brokers = brokers(t)?;
    let topic = non_empty(
        &t.key("topic"),
        t.need(
            "topic",
            "a \"kafka\" sink needs its topic, e.g. topic = \"sums\"",
        )?,
        "a topic name",
    )?;
    let mut c = KafkaSinkConfig::new(&brokers, &topic);
    c.key_field = t.opt_field("key_field")?;
    if let Some(v) = t.get("semantics") {
        c.semantics = choice(
            &t.key("semantics"),
            v,
            "semantics",
            &[
                ("exactly-once", Semantics::ExactlyOnce),
                ("at-least-once", Semantics::AtLeastOnce),
            ],
        )?;
    }
    if let Some(v) = t.get("transactional_id_prefix") {
        c.transactional_id_prefix = Some(non_empty(
            &t.key("transactional_id_prefix"),
            v,
            "a transactional id prefix",
        )?);
    }
    if let Some(v) = t.get("transaction_timeout") {
        let key = t.key("transaction_timeout");
        let d = positive_duration(&key, v)?;
        if d.subsec_millis() == 0 && d.subsec_nanos() != 0 || d.as_millis() > i32::MAX as u128 {
            return fail(key, "expected whole milliseconds up to about 24 days");
        }
        c.transaction_timeout = d;
    }
    c.properties = kafka_properties(
        t,
        &[
            "bootstrap.servers",
            "transactional.id",
            "transaction.timeout.ms",
            "enable.idempotence",
        ],
    )?;
    Ok(SinkConfig::Kafka(c))
}

fn rate(key: &str, v: &Val) -> Res<f64> {
    let what = "a positive number of records per second";
    match v {
        Val::Int(i) if *i > 0 => Ok(*i as f64),
        Val::Float(f) if f.is_finite() && *f > 0.0 => Ok(*f),
        Val::Int(i) => fail(key, format!("expected {what}, found {i}")),
        Val::Float(f) => fail(key, format!("expected {what}, found {f:?}")),
        other => fail(key, format!("expected {what}, found {}", describe(other))),
    }
}

fn sink(v: &Val, dir: &Path) -> Res<SinkConfig> {
    let t = Tbl::of(
        "sink".into(),
        v,
        "a table ([sink] with type = \"file\", \"stdout\" or \"blackhole\")",
    )?;
    match t.kind("sink", SINK_TYPES)? {
        "file" => {
            t.allow(&["type", "path", "overwrite"])?;
            let p = non_empty(
                &t.key("path"),
                t.need(
                    "path",
                    "a \"file\" sink needs its output directory, e.g. path = \"output/\"",
                )?,
                "a path",
            )?;
            let overwrite = match t.get("overwrite") {
                None => false,
                Some(Val::Bool(b)) => *b,
                Some(other) => {
                    return fail(
                        t.key("overwrite"),
                        format!("expected true or false, found {}", describe(other)),
                    )
                }
            };
            Ok(SinkConfig::File {
                path: resolve(dir, &p),
                overwrite,
            })
        }
        "stdout" => {
            t.allow(&["type"])?;
            Ok(SinkConfig::Stdout)
        }
        "kafka" => kafka_sink(&t),
        _ => {
            t.allow(&["type"])?;
            Ok(SinkConfig::Blackhole)
        }
    }
}

fn transforms(v: &Val) -> Res<Vec<TransformConfig>> {
    let Val::Array(items) = v else {
        return fail(
            "transform",
            format!(
                "expected an array of tables (write each one as [[transform]]), found {}",
                describe(v)
            ),
        );
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| transform(format!("transform[{i}]"), item))
        .collect()
}

fn transform(path: String, v: &Val) -> Res<TransformConfig> {
    let t = Tbl::of(path, v, "a table")?;
    let kind = t.kind("transform", TRANSFORM_TYPES)?;
    match kind {
        "filter" => {
            t.allow(&["type", "expr"])?;
            let expr = non_empty(
                &t.key("expr"),
                t.need(
                    "expr",
                    "a \"filter\" transform needs an expression, e.g. expr = \"value > 10\"",
                )?,
                "an expression",
            )?;
            Ok(TransformConfig::Filter { expr })
        }
        "project" => {
            t.allow(&["type", "keep", "rename", "compute"])?;
            let keep = t.opt_fields("keep", true)?;
            let rename = match t.get("rename") {
                None => Vec::new(),
                Some(v) => {
                    let pairs =
                        string_table(&t.key("rename"), v, "{ old = \"new\" }", "a new field name")?;
                    for (i, (old, new)) in pairs.iter().enumerate() {
                        if let Some((first, _)) = pairs[..i].iter().find(|(_, n)| n == new) {
                            return fail(
                                join_key(&t.key("rename"), old),
                                format!(
                                    "{} is already the new name of {}; expected distinct new names",
                                    quote(new),
                                    quote(first)
                                ),
                            );
                        }
                    }
                    pairs
                }
            };
            let compute = match t.get("compute") {
                None => Vec::new(),
                Some(v) => string_table(
                    &t.key("compute"),
                    v,
                    "{ total = \"price * qty\" }",
                    "an expression",
                )?,
            };
            if keep.is_none() && t.get("rename").is_none() && t.get("compute").is_none() {
                return fail(
                    t.path,
                    "a \"project\" transform needs at least one of keep, rename or compute",
                );
            }
            Ok(TransformConfig::Project {
                keep,
                rename,
                compute,
            })
        }
        "key_by" => {
            t.allow(&["type", "field", "fields"])?;
            let field = t.opt_field("field")?;
            let fields = t.opt_fields("fields", false)?;
            match (field, fields) {
                (Some(f), None) => Ok(TransformConfig::KeyBy { fields: vec![f] }),
                (None, Some(fields)) => Ok(TransformConfig::KeyBy { fields }),
                (Some(_), Some(_)) => fail(
                    t.path,
                    "a \"key_by\" transform takes either field = \"a\" or fields = [\"a\", \"b\"], not both",
                ),
                (None, None) => fail(
                    t.key("field"),
                    "missing; a \"key_by\" transform needs field = \"a\" or fields = [\"a\", \"b\"]",
                ),
            }
        }
        "tumbling" | "sliding" => window(&t, kind).map(TransformConfig::Window),
        "dedupe" => {
            t.allow(&["type", "fields"])?;
            Ok(TransformConfig::Dedupe {
                fields: t.opt_fields("fields", false)?,
            })
        }
        _ => {
            let Some(aggregate) = Aggregate::from_name(kind) else {
                return fail(
                    t.key("type"),
                    format!("unknown transform type {}", quote(kind)),
                );
            };
            t.allow(&["type", "field"])?;
            let needs = if aggregate == Aggregate::Count {
                "the field that receives the running count"
            } else {
                "the field to aggregate"
            };
            let field = field_name(
                &t.key("field"),
                t.need("field", &format!("a {kind:?} transform needs {needs}"))?,
            )?;
            Ok(TransformConfig::Running { aggregate, field })
        }
    }
}

fn window(t: &Tbl, kind: &str) -> Res<WindowConfig> {
    let sliding = kind == "sliding";
    let mut keys = vec![
        "type",
        "size",
        "time_field",
        "aggregate",
        "field",
        "out_of_orderness",
        "output",
    ];
    if sliding {
        keys.insert(2, "slide");
    }
    t.allow(&keys)?;

    let size = window_duration(
        &t.key("size"),
        t.need(
            "size",
            &format!("a {kind:?} window needs its length, e.g. size = \"10s\""),
        )?,
        false,
    )?;
    let slide = if sliding {
        let key = t.key("slide");
        let v = t.need(
            "slide",
            "a \"sliding\" window needs how often a window starts, e.g. slide = \"5s\" (0 < slide <= size)",
        )?;
        let slide = window_duration(&key, v, false)?;
        if slide > size {
            let shown = |k: &str| match t.get(k) {
                Some(Val::Str(s)) => quote(s),
                _ => String::new(),
            };
            return fail(
                key,
                format!(
                    "{} is longer than size {}; expected 0 < slide <= size",
                    shown("slide"),
                    shown("size")
                ),
            );
        }
        Some(slide)
    } else {
        None
    };
    let time_field = field_name(
        &t.key("time_field"),
        t.need(
            "time_field",
            &format!(
                "a {kind:?} window needs the event-time field (integer milliseconds), e.g. time_field = \"ts\""
            ),
        )?,
    )?;
    let agg_key = t.key("aggregate");
    let aggregate = match t.get("aggregate") {
        None => return fail(agg_key, format!("missing; expected one of: {AGGREGATES}")),
        Some(Val::Str(s)) => match Aggregate::from_name(s) {
            Some(a) => a,
            None => {
                return fail(
                    agg_key,
                    format!(
                        "unknown aggregate {}; expected one of: {AGGREGATES}",
                        quote(s)
                    ),
                )
            }
        },
        Some(v) => {
            return fail(
                agg_key,
                format!(
                    "expected a string, one of: {AGGREGATES}; found {}",
                    describe(v)
                ),
            )
        }
    };
    let field = t.opt_field("field")?;
    if field.is_none() && aggregate != Aggregate::Count {
        return fail(
            t.key("field"),
            format!(
                "missing; a {kind:?} window with aggregate = {:?} needs the field to aggregate",
                aggregate.name()
            ),
        );
    }
    let out_of_orderness = match t.get("out_of_orderness") {
        None => Duration::ZERO,
        Some(v) => window_duration(&t.key("out_of_orderness"), v, true)?,
    };
    let output = match t.get("output") {
        None => aggregate.name().to_string(),
        Some(v) => field_name(&t.key("output"), v)?,
    };
    if output == "window_start" || output == "window_end" {
        return fail(
            t.key("output"),
            format!(
                "{} clashes with the window's own {output} field; expected another name",
                quote(&output)
            ),
        );
    }
    Ok(WindowConfig {
        size,
        slide,
        time_field,
        aggregate,
        field,
        out_of_orderness,
        output,
    })
}

/// Checks that keyed transforms have a `key_by` before them. A `key_by` stays
/// in force until the next `key_by`.
fn check_flow(transforms: &[TransformConfig]) -> Res<()> {
    let mut key: Option<&[String]> = None;
    for (i, t) in transforms.iter().enumerate() {
        let at = format!("transform[{i}]");
        match t {
            TransformConfig::KeyBy { fields } => key = Some(fields),
            TransformConfig::Running { aggregate, .. } if key.is_none() => {
                return fail(
                    at,
                    format!("{:?} needs a key_by before it", aggregate.name()),
                );
            }
            TransformConfig::Window(w) => {
                let kind = if w.slide.is_some() {
                    "sliding"
                } else {
                    "tumbling"
                };
                let Some(key) = key else {
                    return fail(at, format!("{kind:?} needs a key_by before it"));
                };
                if key.contains(&w.output) {
                    return fail(
                        format!("{at}.output"),
                        format!(
                            "{} clashes with the key field of the key_by before it; expected another name (set output = \"...\")",
                            quote(&w.output)
                        ),
                    );
                }
            }
            TransformConfig::Dedupe { fields: None } if key.is_none() => {
                return fail(
                    at,
                    "\"dedupe\" without fields needs a key_by before it (or set fields = [\"id\"])",
                );
            }
            _ => {}
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Checkpoint settings
// ---------------------------------------------------------------------------

/// The keys of `[checkpoint]`.
const CHECKPOINT_KEYS: &[&str] = &[
    "interval",
    "mode",
    "min_pause",
    "timeout",
    "max_concurrent",
    "tolerable_failures",
    "retained",
    "on_cancel",
    "storage",
    "local_dir",
    "incremental",
    "max_delta_chain",
    "local_cache",
];

/// Flink's option names, as `(table, key, [checkpoint] key it sets)`.
const FLINK_KEYS: &[(&str, &str, &str)] = &[
    ("execution.checkpointing", "interval", "interval"),
    ("execution.checkpointing", "mode", "mode"),
    ("execution.checkpointing", "min-pause", "min_pause"),
    ("execution.checkpointing", "timeout", "timeout"),
    (
        "execution.checkpointing",
        "max-concurrent-checkpoints",
        "max_concurrent",
    ),
    (
        "execution.checkpointing",
        "tolerable-failed-checkpoints",
        "tolerable_failures",
    ),
    (
        "execution.checkpointing",
        "externalized-checkpoint-retention",
        "on_cancel",
    ),
    ("state.checkpoints", "num-retained", "retained"),
    ("state.checkpoints", "dir", "storage"),
    ("execution.checkpointing", "incremental", "incremental"),
    ("state.backend", "incremental", "incremental"),
];

const STORAGE_NEEDED: &str =
    "checkpointing needs a storage location; set checkpoint.storage or state.checkpoints.dir";
const STORAGE_EXAMPLE: &str = "\"file:///var/lib/weir/checkpoints\"";

/// One checkpoint setting found in the file.
struct Setting<'a> {
    /// The `[checkpoint]` key it sets (`"interval"`).
    name: &'static str,
    /// Where it is in the file (`checkpoint.interval`, `execution.checkpointing.interval`).
    key: String,
    value: &'a Val,
    /// Given under Flink's name, so Flink's value forms are accepted.
    flink: bool,
}

/// The checkpoint settings of the file: `[checkpoint]` and Flink's names.
/// `None` when there are none.
fn checkpoint(top: &Tbl, dir: &Path) -> Res<Option<CheckpointConfig>> {
    /// Adds `s`, unless its setting is already set under its other name.
    fn add<'a>(settings: &mut Vec<Setting<'a>>, s: Setting<'a>) -> Res<()> {
        if let Some(prev) = settings.iter().find(|p| p.name == s.name) {
            return Err(Fail {
                message: format!(
                    "conflicts with {}, which sets the same setting; keep only one of the two",
                    prev.key
                ),
                also: Some(prev.key.clone()),
                key: s.key,
            });
        }
        settings.push(s);
        Ok(())
    }
    let mut settings: Vec<Setting> = Vec::new();
    let own = top.get("checkpoint");
    if let Some(v) = own {
        let t = Tbl::of(
            "checkpoint".into(),
            v,
            &format!("a table ([checkpoint] with storage = {STORAGE_EXAMPLE} and the other checkpoint settings)"),
        )?;
        let mut allowed = CHECKPOINT_KEYS.to_vec();
        allowed.push("s3");
        t.allow(&allowed)?;
        for (k, value) in t.entries {
            if let Some(name) = CHECKPOINT_KEYS.iter().find(|n| *n == k) {
                add(
                    &mut settings,
                    Setting {
                        name,
                        key: t.key(k),
                        value,
                        flink: false,
                    },
                )?;
            }
        }
    }
    for (outer, inners) in [
        ("execution", &["checkpointing"][..]),
        ("state", &["checkpoints", "backend"][..]),
    ] {
        let Some(v) = top.get(outer) else { continue };
        let what = |inner: &str| {
            let mut w = format!("a table ([{outer}.{inner}] with Flink's checkpoint options)");
            if inner == "backend" {
                w.push_str(
                    "; Weir has one state backend, so only state.backend.incremental applies",
                );
            }
            w
        };
        let o = Tbl::of(outer.to_string(), v, &what(inners[0]))?;
        o.allow(inners)?;
        for inner in inners {
            let Some(v) = o.get(inner) else { continue };
            let t = Tbl::of(o.key(inner), v, &what(inner))?;
            let keys: Vec<(&str, &'static str)> = FLINK_KEYS
                .iter()
                .filter(|(table, _, _)| *table == t.path)
                .map(|(_, key, name)| (*key, *name))
                .collect();
            let names: Vec<&str> = keys.iter().map(|(key, _)| *key).collect();
            t.allow(&names)?;
            for (k, value) in t.entries {
                if let Some((_, name)) = keys.iter().find(|(key, _)| key == k) {
                    add(
                        &mut settings,
                        Setting {
                            name,
                            key: t.key(k),
                            value,
                            flink: true,
                        },
                    )?;
                }
            }
        }
    }
    if own.is_none() && settings.is_empty() {
        return Ok(None);
    }

    let Some(storage) = settings.iter().find(|s| s.name == "storage") else {
        return match settings.first() {
            Some(first) if own.is_none() => fail(first.key.clone(), STORAGE_NEEDED),
            _ => fail("checkpoint.storage", format!("missing; {STORAGE_NEEDED}")),
        };
    };
    let what = format!("a storage URI such as {STORAGE_EXAMPLE} or a directory path");
    let uri = storage_uri(
        &storage.key,
        string(&storage.key, storage.value, &what)?,
        dir,
    )?;
    let mut config = CheckpointConfig::new(uri);
    if let Some(v) = own.and_then(|c| match c {
        Val::Table(entries) => entries.iter().find(|(k, _)| k == "s3").map(|(_, v)| v),
        _ => None,
    }) {
        config.store.s3 = s3_options(v)?;
    }
    for s in &settings {
        let (key, v) = (s.key.as_str(), s.value);
        match s.name {
            "interval" => config.interval = checkpoint_duration(s)?,
            "min_pause" => config.min_pause = checkpoint_duration(s)?,
            "timeout" => config.timeout = checkpoint_duration(s)?,
            "mode" if s.flink => {
                config.mode = flink_choice(
                    key,
                    v,
                    "checkpointing mode",
                    &[
                        ("EXACTLY_ONCE", CheckpointMode::ExactlyOnce),
                        ("AT_LEAST_ONCE", CheckpointMode::AtLeastOnce),
                    ],
                )?
            }
            "mode" => {
                config.mode = choice(
                    key,
                    v,
                    "checkpoint mode",
                    &[
                        ("exactly-once", CheckpointMode::ExactlyOnce),
                        ("at-least-once", CheckpointMode::AtLeastOnce),
                    ],
                )?
            }
            "on_cancel" if s.flink => {
                const OPTIONS: [(&str, OnCancel); 2] = [
                    ("RETAIN_ON_CANCELLATION", OnCancel::Retain),
                    ("DELETE_ON_CANCELLATION", OnCancel::Delete),
                ];
                if let Val::Str(text) = v {
                    if flink_name(text) == "NO_EXTERNALIZED_CHECKPOINTS" {
                        return fail(
                            key,
                            format!(
                                "{} is not supported: Weir always keeps completed checkpoints in the storage location; expected one of: RETAIN_ON_CANCELLATION, DELETE_ON_CANCELLATION",
                                quote(text)
                            ),
                        );
                    }
                }
                config.on_cancel = flink_choice(key, v, "retention", &OPTIONS)?
            }
            "on_cancel" => {
                config.on_cancel = choice(
                    key,
                    v,
                    "on_cancel value",
                    &[("retain", OnCancel::Retain), ("delete", OnCancel::Delete)],
                )?
            }
            "max_concurrent" => {
                config.max_concurrent = to_usize(int(key, v, 1, i64::MAX, POSITIVE)?);
            }
            "tolerable_failures" => {
                let max = i64::from(u32::MAX);
                let i = int(key, v, 0, max, &format!("an integer from 0 to {max}"))?;
                config.tolerable_failures = u32::try_from(i).unwrap_or(u32::MAX);
            }
            "retained" => config.retained = to_usize(int(key, v, 1, i64::MAX, POSITIVE)?),
            "local_dir" => config.local_dir = resolve(dir, &non_empty(key, v, "a directory path")?),
            "incremental" => {
                config.incremental = match v {
                    Val::Bool(b) => *b,
                    other => {
                        return fail(
                            key,
                            format!("expected true or false, found {}", describe(other)),
                        )
                    }
                }
            }
            "max_delta_chain" => {
                config.max_delta_chain = to_usize(int(key, v, 1, i64::MAX, POSITIVE)?);
            }
            "local_cache" => config.local_cache = local_cache(key, v)?,
            _ => {} // storage: done above
        }
    }
    if let Err(e) = config.validate() {
        // Name the key the value came from (it may be a Flink name).
        let name = e.setting.strip_prefix("checkpoint.").unwrap_or(e.setting);
        let key = settings
            .iter()
            .find(|s| s.name == name)
            .map_or_else(|| e.setting.to_string(), |s| s.key.clone());
        return fail(key, e.message);
    }
    Ok(Some(config))
}

/// The keys of `[checkpoint.s3]`.
const S3_KEYS: &[&str] = &[
    "endpoint",
    "region",
    "path_style",
    "access_key_id",
    "secret_access_key",
    "checksums",
    "part_size",
    "concurrency",
    "max_attempts",
];

/// `[checkpoint.s3]`: settings of `s3://` storage; unset ones come from the AWS environment.
fn s3_options(v: &Val) -> Res<weir_storage::s3::S3Options> {
    let t = Tbl::of(
        "checkpoint.s3".into(),
        v,
        "a table ([checkpoint.s3] with endpoint, region, ...)",
    )?;
    t.allow(S3_KEYS)?;
    let mut o = weir_storage::s3::S3Options::default();
    let text = |k: &str| -> Res<Option<String>> {
        t.get(k)
            .map(|v| non_empty(&t.key(k), v, "a string"))
            .transpose()
    };
    o.endpoint = text("endpoint")?;
    if let Some(e) = &o.endpoint {
        if !e.starts_with("http://") && !e.starts_with("https://") {
            return fail(
                t.key("endpoint"),
                format!(
                    "expected an http:// or https:// URL, e.g. \"http://127.0.0.1:9000\", found {}",
                    quote(e)
                ),
            );
        }
    }
    o.region = text("region")?;
    o.access_key_id = text("access_key_id")?;
    o.secret_access_key = text("secret_access_key")?;
    if o.access_key_id.is_some() != o.secret_access_key.is_some() {
        let missing = if o.access_key_id.is_some() {
            "secret_access_key"
        } else {
            "access_key_id"
        };
        return fail(
            t.key(missing),
            "missing; set both access_key_id and secret_access_key, or neither (then the AWS environment and profiles apply)",
        );
    }
    if let Some(v) = t.get("path_style") {
        match v {
            Val::Bool(b) => o.path_style = Some(*b),
            other => {
                return fail(
                    t.key("path_style"),
                    format!("expected true or false, found {}", describe(other)),
                )
            }
        }
    }
    if let Some(v) = t.get("checksums") {
        o.checksums = Some(choice(
            &t.key("checksums"),
            v,
            "checksum mode",
            &[
                (
                    "when_supported",
                    weir_storage::s3::S3Checksums::WhenSupported,
                ),
                ("when_required", weir_storage::s3::S3Checksums::WhenRequired),
            ],
        )?);
    }
    if let Some(v) = t.get("part_size") {
        let key = t.key("part_size");
        let n = byte_size(&key, v)?;
        if !(weir_storage::s3::MIN_PART_SIZE..=5 << 30).contains(&n) {
            return fail(
                key,
                format!("{n} bytes is out of range; expected 5MiB to 5GiB (S3's part sizes)"),
            );
        }
        o.part_size = n;
    }
    if let Some(n) = t.opt_int("concurrency", 1, 64, "an integer from 1 to 64")? {
        o.concurrency = to_usize(n);
    }
    if let Some(n) = t.opt_int("max_attempts", 1, 20, "an integer from 1 to 20")? {
        o.max_attempts = u32::try_from(n).unwrap_or(1);
    }
    Ok(o)
}

/// `checkpoint.local_cache`: `"unlimited"` (no bound), `0`, or a size.
fn local_cache(key: &str, v: &Val) -> Res<Option<u64>> {
    match v {
        Val::Str(s) => parse_local_cache(s).or_else(|e| fail(key, e)),
        Val::Int(i) if *i >= 0 => Ok(Some(to_u64(*i))),
        other => fail(
            key,
            format!("expected {CACHE_WHAT}, found {}", describe(other)),
        ),
    }
}

const CACHE_WHAT: &str = "\"unlimited\", 0 or a size such as \"2GiB\"";
const SIZE_WHAT: &str = "a size such as \"16MiB\" or a number of bytes";

/// A `local_cache` bound as written in a job file or on the command line: `"unlimited"`
/// (`None`), `0`, or a size (`"512MiB"`, `"2GB"`, a number of bytes).
pub fn parse_local_cache(s: &str) -> Result<Option<u64>, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("unlimited") {
        return Ok(None);
    }
    if s == "0" {
        return Ok(Some(0));
    }
    size(s)
        .map(Some)
        .ok_or_else(|| format!("expected {CACHE_WHAT}, found {}", quote(s)))
}

/// A positive size: digits and an optional unit (`"16MiB"`, `"8 MB"`, `"1GiB"`, `"4096"`).
fn size(s: &str) -> Option<u64> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return None,
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|&n| n > 0)
}

/// A size in bytes: an integer, or a string with a unit (`"16MiB"`, `"8 MB"`, `"1GiB"`).
fn byte_size(key: &str, v: &Val) -> Res<u64> {
    let s = match v {
        Val::Int(i) if *i > 0 => return Ok(to_u64(*i)),
        Val::Str(s) => s.trim(),
        other => {
            return fail(
                key,
                format!("expected {SIZE_WHAT}, found {}", describe(other)),
            )
        }
    };
    size(s).map_or_else(
        || fail(key, format!("expected {SIZE_WHAT}, found {}", quote(s))),
        Ok,
    )
}

/// A duration: Weir's syntax under `[checkpoint]`; Flink's forms (and a bare
/// integer of milliseconds) under Flink's names.
fn checkpoint_duration(s: &Setting) -> Res<Duration> {
    if !s.flink {
        return duration(&s.key, s.value);
    }
    match s.value {
        Val::Int(ms) if *ms >= 0 => Ok(Duration::from_millis(to_u64(*ms))),
        Val::Str(text) => parse_flink_duration(text)
            .or_else(|e| fail(&*s.key, format!("invalid duration {}; {e}", quote(text)))),
        other => fail(
            &*s.key,
            format!(
                "expected a duration such as \"30 s\" or a number of milliseconds, found {}",
                describe(other)
            ),
        ),
    }
}

/// One of `options` (`(name, value)`); `what` names the setting in messages.
fn choice<T: Copy>(key: &str, v: &Val, what: &str, options: &[(&str, T)]) -> Res<T> {
    pick(key, v, what, options, |s| s.to_string())
}

/// Like [`choice`] for a Flink value: case-insensitive, `-` or `_`.
fn flink_choice<T: Copy>(key: &str, v: &Val, what: &str, options: &[(&str, T)]) -> Res<T> {
    pick(key, v, what, options, flink_name)
}

/// `exactly-once`, `Exactly_Once` -> `EXACTLY_ONCE`.
fn flink_name(s: &str) -> String {
    s.trim().to_ascii_uppercase().replace('-', "_")
}

fn pick<T: Copy>(
    key: &str,
    v: &Val,
    what: &str,
    options: &[(&str, T)],
    normalize: impl Fn(&str) -> String,
) -> Res<T> {
    let list = options
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ");
    match v {
        Val::Str(s) => {
            let s_norm = normalize(s);
            match options.iter().find(|(n, _)| *n == s_norm) {
                Some((_, t)) => Ok(*t),
                None => fail(
                    key,
                    format!("unknown {what} {}; expected one of: {list}", quote(s)),
                ),
            }
        }
        other => fail(
            key,
            format!(
                "expected a string, one of: {list}; found {}",
                describe(other)
            ),
        ),
    }
}

/// Checkpoint storage as a `file://` URI with an absolute path. A plain path,
/// or a `file:` URI whose path is relative (`file://ckpt`), is resolved against
/// the job file's directory (and that against the current directory when it
/// is relative). Other schemes are rejected: only file storage exists so far.
fn storage_uri(key: &str, s: &str, dir: &Path) -> Res<String> {
    if s.trim().is_empty() {
        // CheckpointConfig::validate reports it.
        return Ok(s.to_string());
    }
    let remote = if s.starts_with("s3://") {
        Some(weir_storage::s3::check_uri(s))
    } else if s.starts_with("hdfs://") {
        Some(weir_storage::hdfs::check_uri(s))
    } else {
        None
    };
    if let Some(checked) = remote {
        return match checked {
            Ok(()) => Ok(s.to_string()),
            Err(e) => fail(key, e.to_string()),
        };
    }
    let is_scheme = |t: &str| {
        // Two characters at least, so that `C:\...` stays a path.
        t.len() >= 2
            && t.starts_with(|c: char| c.is_ascii_alphabetic())
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    };
    let path = match s.split_once(':') {
        Some((scheme, rest)) if is_scheme(scheme) => {
            if !scheme.eq_ignore_ascii_case("file") {
                return fail(
                    key,
                    format!(
                        "unsupported storage scheme {} in {}; expected s3://bucket/prefix, hdfs://namenode:port/path, a URI such as {STORAGE_EXAMPLE} or a directory path",
                        quote(scheme),
                        quote(s)
                    ),
                );
            }
            rest.strip_prefix("//").unwrap_or(rest)
        }
        _ => s,
    };
    if path.is_empty() {
        return fail(
            key,
            format!(
                "{} names no directory; expected a URI such as {STORAGE_EXAMPLE}",
                quote(s)
            ),
        );
    }
    let resolved = resolve(dir, path);
    let absolute = std::path::absolute(&resolved).or_else(|e| {
        fail(
            key,
            format!("cannot make {} absolute: {e}", resolved.display()),
        )
    })?;
    Ok(format!("file://{}", absolute.display()))
}

// ---------------------------------------------------------------------------
// --set overrides
// ---------------------------------------------------------------------------

/// An applied override: the key path it set (`transform[1].field`) and the
/// `--set` text.
struct Applied {
    path: String,
    text: String,
}

fn apply_overrides(root: &mut Val, overrides: &[String]) -> Res<Vec<Applied>> {
    overrides
        .iter()
        .map(|o| {
            Ok(Applied {
                path: apply_override(root, o)?,
                text: o.clone(),
            })
        })
        .collect()
}

/// Points errors about an overridden key at the `--set` that produced it.
fn annotate_override(mut f: Fail, applied: &[Applied]) -> Fail {
    let covers = |path: &str, key: &str| {
        key == path || key.starts_with(&format!("{path}.")) || key.starts_with(&format!("{path}["))
    };
    let hit = applied
        .iter()
        .rev()
        .find(|a| covers(&a.path, &f.key) || f.also.as_deref().is_some_and(|k| covers(&a.path, k)));
    if let Some(a) = hit {
        f.message = format!("{} (value from --set {})", f.message, a.text);
    }
    f
}

/// A `--set` value: a TOML value when it parses as one, else a plain string.
fn parse_set_value(v: &str) -> Val {
    if let Ok(Val::Table(mut entries)) = toml::from_str::<Val>(&format!("v = {v}")) {
        if entries.len() == 1 && entries[0].0 == "v" {
            if let Some((_, val)) = entries.pop() {
                return val;
            }
        }
    }
    Val::Str(v.to_string())
}

/// Applies one `key=value` override; returns the key path it set.
fn apply_override(root: &mut Val, text: &str) -> Res<String> {
    let Some((key, value)) = text.split_once('=') else {
        return fail(
            text.trim(),
            format!(
                "invalid --set {}: expected key=value, e.g. --set parallelism=4",
                quote(text)
            ),
        );
    };
    let key = key.trim();
    let segments: Vec<&str> = key.split('.').map(str::trim).collect();
    if segments.iter().any(|s| s.is_empty()) {
        return fail(
            key,
            format!(
                "invalid --set key {}: expected a dotted key such as parallelism, source.count or transform.1.field",
                quote(key)
            ),
        );
    }
    let value = parse_set_value(value.trim());
    let mut cur = root;
    let mut path = String::new();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match cur {
            Val::Array(items) => {
                let Ok(index) = seg.parse::<usize>() else {
                    return fail(
                        key,
                        format!(
                            "invalid --set: {path} is an array; expected a numeric index after it (e.g. {path}.0), found {}",
                            quote(seg)
                        ),
                    );
                };
                if index >= items.len() {
                    let has = match items.len() {
                        0 => format!("{path} is empty"),
                        1 => format!("{path} has 1 entry (index 0)"),
                        n => format!("{path} has {n} entries (indexes 0 to {})", n - 1),
                    };
                    return fail(
                        key,
                        format!("invalid --set: index {index} is out of range; {has}"),
                    );
                }
                path = format!("{path}[{index}]");
                if last {
                    items[index] = value;
                    return Ok(path);
                }
                cur = &mut items[index];
            }
            Val::Table(entries) => {
                path = join_key(&path, seg);
                let pos = entries.iter().position(|(n, _)| n == seg);
                if last {
                    match pos {
                        Some(p) => entries[p].1 = value,
                        None => entries.push((seg.to_string(), value)),
                    }
                    return Ok(path);
                }
                let p = match pos {
                    Some(p) => p,
                    None => {
                        if let Some(next) =
                            segments.get(i + 1).filter(|s| s.parse::<usize>().is_ok())
                        {
                            return fail(
                                key,
                                format!("invalid --set: index {next} is out of range; the job file has no {path}"),
                            );
                        }
                        entries.push((seg.to_string(), Val::Table(Vec::new())));
                        entries.len() - 1
                    }
                };
                cur = &mut entries[p].1;
            }
            other => {
                return fail(
                    key,
                    format!(
                        "invalid --set: {path} is {}, not a table or array, so {key} cannot be set",
                        describe(other)
                    ),
                );
            }
        }
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "jobs/job.toml";
    const MIN: &str =
        "name = \"t\"\n[source]\ntype = \"generator\"\n[sink]\ntype = \"blackhole\"\n";

    fn parse(text: &str) -> Result<JobFile, JobFileError> {
        parse_job(text, Path::new(FILE), &[])
    }

    fn parse_set(text: &str, sets: &[&str]) -> Result<JobFile, JobFileError> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        parse_job(text, Path::new(FILE), &sets)
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(job) => panic!("expected an error, got {job:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn set_err(text: &str, sets: &[&str]) -> String {
        match parse_set(text, sets) {
            Ok(job) => panic!("expected an error, got {job:?}"),
            Err(e) => e.to_string(),
        }
    }

    /// `MIN` plus the given transforms (TOML text of [[transform]] tables).
    fn with(transforms: &str) -> String {
        format!("{MIN}{transforms}")
    }

    fn transforms(text: &str) -> Vec<TransformConfig> {
        parse(&with(text)).unwrap().transforms
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    const FULL: &str = r#"
name = "sums.v2-test_1"
parallelism = 2
workers = 3
io_cores = 1
max_parallelism = 64
batch_size = 500
channel_capacity = 8

[source]
type = "generator"
count = 1000000
keys = 10
seed = 7
rate = 2500
ts_step_ms = 0
max_drift = 4096

[[transform]]
type = "filter"
expr = "value > 10 and key != 'a'"

[[transform]]
type = "project"
keep = ["id", "key", "value", "ts", "price", "qty"]
rename = { zeta = "z", alpha = "a" }
compute = { total = "price * qty", avg = "total / 2" }

[[transform]]
type = "key_by"
field = "key"

[[transform]]
type = "sum"
field = "value"

[[transform]]
type = "count"
field = "n"

[[transform]]
type = "min"
field = "value"

[[transform]]
type = "max"
field = "value"

[[transform]]
type = "avg"
field = "value"

[[transform]]
type = "tumbling"
size = "10s"
time_field = "ts"
aggregate = "sum"
field = "value"

[[transform]]
type = "key_by"
fields = ["key", "window_start"]

[[transform]]
type = "sliding"
size = "1m"
slide = "1.5s"
time_field = "ts"
aggregate = "count"
out_of_orderness = "200ms"
output = "n"

[[transform]]
type = "dedupe"

[[transform]]
type = "dedupe"
fields = ["id"]

[sink]
type = "file"
path = "output/"
overwrite = true

[checkpoint]
interval = "500ms"
storage = "/var/lib/weir/ck"
"#;

    #[test]
    fn full_file_with_every_transform() {
        let job = parse(FULL).unwrap();
        let expected = JobFile {
            name: "sums.v2-test_1".into(),
            parallelism: Some(2),
            workers: Some(3),
            io_cores: 1,
            max_parallelism: 64,
            batch_size: 500,
            channel_capacity: 8,
            source: SourceConfig::Generator(GeneratorConfig {
                count: Some(1_000_000),
                keys: 10,
                seed: 7,
                rate: Some(2500.0),
                ts_step_ms: 0,
                max_drift: Some(4096),
            }),
            transforms: vec![
                TransformConfig::Filter {
                    expr: "value > 10 and key != 'a'".into(),
                },
                TransformConfig::Project {
                    keep: Some(
                        ["id", "key", "value", "ts", "price", "qty"]
                            .map(String::from)
                            .to_vec(),
                    ),
                    // File order, not sorted.
                    rename: vec![("zeta".into(), "z".into()), ("alpha".into(), "a".into())],
                    compute: vec![
                        ("total".into(), "price * qty".into()),
                        ("avg".into(), "total / 2".into()),
                    ],
                },
                TransformConfig::KeyBy {
                    fields: vec!["key".into()],
                },
                TransformConfig::Running {
                    aggregate: Aggregate::Sum,
                    field: "value".into(),
                },
                TransformConfig::Running {
                    aggregate: Aggregate::Count,
                    field: "n".into(),
                },
                TransformConfig::Running {
                    aggregate: Aggregate::Min,
                    field: "value".into(),
                },
                TransformConfig::Running {
                    aggregate: Aggregate::Max,
                    field: "value".into(),
                },
                TransformConfig::Running {
                    aggregate: Aggregate::Avg,
                    field: "value".into(),
                },
                TransformConfig::Window(WindowConfig {
                    size: ms(10_000),
                    slide: None,
                    time_field: "ts".into(),
                    aggregate: Aggregate::Sum,
                    field: Some("value".into()),
                    out_of_orderness: Duration::ZERO,
                    output: "sum".into(),
                }),
                TransformConfig::KeyBy {
                    fields: vec!["key".into(), "window_start".into()],
                },
                TransformConfig::Window(WindowConfig {
                    size: ms(60_000),
                    slide: Some(ms(1_500)),
                    time_field: "ts".into(),
                    aggregate: Aggregate::Count,
                    field: None,
                    out_of_orderness: ms(200),
                    output: "n".into(),
                }),
                TransformConfig::Dedupe { fields: None },
                TransformConfig::Dedupe {
                    fields: Some(vec!["id".into()]),
                },
            ],
            sink: SinkConfig::File {
                path: PathBuf::from("jobs/output/"),
                overwrite: true,
            },
            checkpoint: Some(CheckpointConfig {
                interval: ms(500),
                ..CheckpointConfig::new("file:///var/lib/weir/ck")
            }),
            restart: RestartStrategy::default(),
            path: PathBuf::from(FILE),
        };
        assert_eq!(job, expected);
    }

    #[test]
    fn defaults_file_source_and_other_sinks() {
        let text = "name = \"a\"\n[source]\ntype = \"file\"\npath = \"in.jsonl\"\n[sink]\ntype = \"stdout\"\n";
        let job = parse(text).unwrap();
        assert_eq!(job.parallelism, None);
        assert_eq!(job.workers, None);
        assert_eq!(job.max_parallelism, 128);
        assert_eq!(job.batch_size, 1024);
        assert_eq!(job.channel_capacity, 16);
        assert_eq!(job.transforms, vec![]);
        assert_eq!(
            job.source,
            SourceConfig::File {
                path: PathBuf::from("jobs/in.jsonl")
            }
        );
        assert_eq!(job.sink, SinkConfig::Stdout);

        let job = parse(MIN).unwrap();
        assert_eq!(job.sink, SinkConfig::Blackhole);
        assert_eq!(
            job.source,
            SourceConfig::Generator(GeneratorConfig {
                count: None,
                keys: 100,
                seed: 0,
                rate: None,
                ts_step_ms: 1,
                max_drift: None,
            })
        );

        let job = parse(&MIN.replace("blackhole\"", "file\"\npath = \"/abs/out\"")).unwrap();
        assert_eq!(
            job.sink,
            SinkConfig::File {
                path: PathBuf::from("/abs/out"),
                overwrite: false
            }
        );
        // Float rate, zero count.
        let job = parse(&MIN.replace("generator\"", "generator\"\nrate = 0.5\ncount = 0")).unwrap();
        let SourceConfig::Generator(g) = job.source else {
            panic!()
        };
        assert_eq!((g.rate, g.count), (Some(0.5), Some(0)));
    }

    #[test]
    fn aggregate_names() {
        for a in Aggregate::ALL {
            assert_eq!(Aggregate::from_name(a.name()), Some(a));
        }
        assert_eq!(Aggregate::Avg.name(), "avg");
    }

    #[test]
    fn relative_paths_resolve_against_the_job_file_directory() {
        let text = "name = \"a\"\n[source]\ntype = \"file\"\npath = \"input/\"\n[sink]\ntype = \"file\"\npath = \"../out\"\n";
        let job = parse_job(text, Path::new("/srv/jobs/sums.toml"), &[]).unwrap();
        assert_eq!(
            job.source,
            SourceConfig::File {
                path: PathBuf::from("/srv/jobs/input/")
            }
        );
        assert_eq!(
            job.sink,
            SinkConfig::File {
                path: PathBuf::from("/srv/jobs/../out"),
                overwrite: false
            }
        );
        assert_eq!(job.path, PathBuf::from("/srv/jobs/sums.toml"));
        // A bare file name: relative to the current directory.
        let job = parse_job(text, Path::new("sums.toml"), &[]).unwrap();
        assert_eq!(
            job.source,
            SourceConfig::File {
                path: PathBuf::from("input/")
            }
        );
        // Absolute paths stay as they are.
        let abs = text.replace("\"input/\"", "\"/data/in\"");
        let job = parse_job(&abs, Path::new("/srv/jobs/sums.toml"), &[]).unwrap();
        assert_eq!(
            job.source,
            SourceConfig::File {
                path: PathBuf::from("/data/in")
            }
        );
    }

    #[test]
    fn load_job_file_reads_and_resolves() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.toml");
        std::fs::write(
            &path,
            "name = \"a\"\n[source]\ntype = \"file\"\npath = \"in\"\n[sink]\ntype = \"stdout\"\n",
        )
        .unwrap();
        let job = load_job_file(&path, &["parallelism=3".to_string()]).unwrap();
        assert_eq!(
            job.source,
            SourceConfig::File {
                path: dir.path().join("in")
            }
        );
        assert_eq!(job.parallelism, Some(3));
        assert_eq!(job.path, path);

        let missing = dir.path().join("nope.toml");
        let e = load_job_file(&missing, &[]).unwrap_err();
        assert_eq!(e.file, missing);
        assert_eq!(e.key, "");
        assert!(
            e.to_string().starts_with(&format!(
                "{}: cannot read the job file: ",
                missing.display()
            )),
            "{e}"
        );

        std::fs::write(&path, b"name = \"\xff\"\n").unwrap();
        let e = load_job_file(&path, &[]).unwrap_err();
        assert_eq!(
            e.message,
            "cannot read the job file: it is not valid UTF-8 text"
        );
    }

    // ----- errors -----

    #[test]
    fn unknown_keys() {
        let text = with("[[transform]]\ntype = \"key_by\"\nfield = \"k\"\n[[transform]]\ntype = \"sum\"\nfeild = \"value\"\n");
        assert_eq!(
            err(&text),
            "jobs/job.toml: transform[1].feild: unknown key; expected one of: type, field"
        );
        assert_eq!(
            err(&format!("paralelism = 2\n{MIN}")),
            "jobs/job.toml: paralelism: unknown key; expected one of: name, parallelism, workers, io_cores, max_parallelism, batch_size, channel_capacity, source, transform, sink, checkpoint, restart, execution.checkpointing, state.checkpoints"
        );
        assert_eq!(
            err(&MIN.replace("generator\"", "generator\"\npath = \"x\"")),
            "jobs/job.toml: source.path: unknown key; expected one of: type, count, keys, seed, rate, ts_step_ms, max_drift"
        );
        assert_eq!(
            err(&MIN.replace("blackhole\"", "blackhole\"\npath = \"x\"")),
            "jobs/job.toml: sink.path: unknown key; expected one of: type"
        );
        assert_eq!(
            err(&with(
                "[[transform]]\ntype = \"filter\"\nexpr = \"a\"\n\"odd key\" = 1\n"
            )),
            "jobs/job.toml: transform[0].\"odd key\": unknown key; expected one of: type, expr"
        );
        assert_eq!(
            err(&with("[[transform]]\ntype = \"tumbling\"\nslide = \"1s\"\n")),
            "jobs/job.toml: transform[0].slide: unknown key; expected one of: type, size, time_field, aggregate, field, out_of_orderness, output"
        );
    }

    #[test]
    fn wrong_types() {
        assert_eq!(
            err(&format!("parallelism = \"two\"\n{MIN}")),
            "jobs/job.toml: parallelism: expected a positive integer, found string \"two\""
        );
        assert_eq!(
            err(&format!("parallelism = 0\n{MIN}")),
            "jobs/job.toml: parallelism: expected a positive integer, found 0"
        );
        assert_eq!(
            err(&format!("workers = 2.5\n{MIN}")),
            "jobs/job.toml: workers: expected a positive integer, found float 2.5"
        );
        assert_eq!(
            err(&format!("max_parallelism = 40000\n{MIN}")),
            "jobs/job.toml: max_parallelism: expected an integer from 1 to 32768, found 40000"
        );
        assert_eq!(
            err(&format!("batch_size = [1]\n{MIN}")),
            "jobs/job.toml: batch_size: expected an integer from 1 to 1000000, found an array"
        );
        assert_eq!(
            err(&format!("channel_capacity = 4097\n{MIN}")),
            "jobs/job.toml: channel_capacity: expected an integer from 1 to 4096, found 4097"
        );
        assert_eq!(
            err(&format!("io_cores = -1\n{MIN}")),
            "jobs/job.toml: io_cores: expected an integer from 0 to 4095, found -1"
        );
        assert_eq!(parse(MIN).unwrap().io_cores, 0);
        assert_eq!(
            err(&MIN.replace("\"t\"", "5")),
            "jobs/job.toml: name: expected a string, found integer 5"
        );
        assert_eq!(
            err(&MIN.replace("generator\"", "generator\"\nrate = -1")),
            "jobs/job.toml: source.rate: expected a positive number of records per second, found -1"
        );
        assert_eq!(
            err(&MIN.replace("generator\"", "generator\"\nrate = inf")),
            "jobs/job.toml: source.rate: expected a positive number of records per second, found inf"
        );
        assert_eq!(
            err(&MIN.replace("generator\"", "generator\"\nkeys = 0")),
            "jobs/job.toml: source.keys: expected a positive integer, found 0"
        );
        assert_eq!(
            err(&MIN.replace("generator\"", "generator\"\nseed = -1")),
            "jobs/job.toml: source.seed: expected a non-negative integer, found -1"
        );
        assert_eq!(
            err(&MIN.replace("generator\"", "generator\"\ncount = 1979-05-27")),
            "jobs/job.toml: source.count: expected a non-negative integer, found datetime 1979-05-27"
        );
        assert_eq!(
            err(&MIN.replace("blackhole\"", "file\"\npath = \"o\"\noverwrite = \"yes\"")),
            "jobs/job.toml: sink.overwrite: expected true or false, found string \"yes\""
        );
        assert_eq!(
            err(&with("[transform]\ntype = \"filter\"\n")),
            "jobs/job.toml: transform: expected an array of tables (write each one as [[transform]]), found a table"
        );
        assert_eq!(
            err("name = \"t\"\ntransform = [1]\n[source]\ntype = \"generator\"\n"),
            "jobs/job.toml: transform[0]: expected a table, found integer 1"
        );
        assert_eq!(
            err("name = \"a\"\nsource = \"file\"\n"),
            "jobs/job.toml: source: expected a table ([source] with type = \"file\" or \"generator\"), found string \"file\""
        );
        assert_eq!(
            err(&with("[[transform]]\ntype = \"key_by\"\nfields = [\"a\", 3]\n")),
            "jobs/job.toml: transform[0].fields[1]: expected a field name (a non-empty string), found integer 3"
        );
        let long = "x".repeat(100);
        assert_eq!(
            err(&MIN.replace("\"t\"", &format!("\"{long}\"")).replace("generator", &long)),
            format!("jobs/job.toml: source.type: unknown source type \"{}\"... (100 characters); expected one of: file, generator, kafka", "x".repeat(60))
        );
    }

    #[test]
    fn kafka_properties_are_checked() {
        let src = MIN.replace(
            "type = \"generator\"",
            "type = \"kafka\"\nbrokers = \"b:9092\"\ntopic = \"t\"",
        );
        let with_props = |p: &str| format!("{src}[source.properties]\n{p}\n");
        assert!(parse(&with_props("\"fetch.min.bytes\" = \"1\"")).is_ok());
        assert!(parse(&with_props("\"security.protocol\" = \"PLAINTEXT\"")).is_ok());
        assert_eq!(
            err(&with_props("\"enable.auto.commit\" = \"true\"")),
            "jobs/job.toml: source.properties.\"enable.auto.commit\": is set by Weir (offsets, transactions and delivery depend on it); remove it"
        );
        for p in [
            "\"security.protocol\" = \"SASL_SSL\"",
            "\"sasl.mechanism\" = \"PLAIN\"",
            "\"ssl.ca.location\" = \"/ca.pem\"",
        ] {
            let e = err(&with_props(p));
            assert!(
                e.contains("is not supported: Weir's Kafka connectors speak plaintext only"),
                "{e}"
            );
        }
    }

    #[test]
    fn bad_types_of_tables() {
        assert_eq!(
            err(&MIN.replace("blackhole", "kafkaa")),
            "jobs/job.toml: sink.type: unknown sink type \"kafkaa\"; expected one of: file, stdout, blackhole, kafka"
        );
        assert_eq!(
            err(&MIN.replace("generator", "kafka")),
            "jobs/job.toml: source.brokers: missing; a Kafka connector needs its bootstrap servers, e.g. brokers = \"127.0.0.1:9092\""
        );
        assert_eq!(
            err(&MIN.replace("type = \"generator\"", "type = 1")),
            "jobs/job.toml: source.type: expected a string, one of: file, generator, kafka; found integer 1"
        );
        assert_eq!(
            err(&MIN.replace("type = \"blackhole\"", "path = \"x\"")),
            "jobs/job.toml: sink.type: missing; expected one of: file, stdout, blackhole, kafka"
        );
        assert_eq!(
            err(&with("[[transform]]\ntype = \"sume\"\n")),
            "jobs/job.toml: transform[0].type: unknown transform type \"sume\"; expected one of: filter, project, key_by, sum, count, min, max, avg, tumbling, sliding, dedupe"
        );
        assert_eq!(
            err(&with("[[transform]]\nfield = \"x\"\n")),
            "jobs/job.toml: transform[0].type: missing; expected one of: filter, project, key_by, sum, count, min, max, avg, tumbling, sliding, dedupe"
        );
        let w = "[[transform]]\ntype = \"key_by\"\nfield = \"k\"\n[[transform]]\ntype = \"tumbling\"\nsize = \"1s\"\ntime_field = \"ts\"\n";
        assert_eq!(
            err(&with(&format!("{w}aggregate = \"mean\"\n"))),
            "jobs/job.toml: transform[1].aggregate: unknown aggregate \"mean\"; expected one of: sum, count, min, max, avg"
        );
        assert_eq!(
            err(&with(w)),
            "jobs/job.toml: transform[1].aggregate: missing; expected one of: sum, count, min, max, avg"
        );
    }

    #[test]
    fn missing_keys() {
        assert_eq!(
            err(&with("[[transform]]\ntype = \"key_by\"\nfield = \"k\"\n[[transform]]\ntype = \"sum\"\n")),
            "jobs/job.toml: transform[1].field: missing; a \"sum\" transform needs the field to aggregate"
        );
        assert_eq!(
            err(&with("[[transform]]\ntype = \"sum\"\n")),
            "jobs/job.toml: transform[0].field: missing; a \"sum\" transform needs the field to aggregate"
        );
        assert_eq!(
            err(&with("[[transform]]\ntype = \"count\"\n")),
            "jobs/job.toml: transform[0].field: missing; a \"count\" transform needs the field that receives the running count"
        );
        assert_eq!(
            err(&MIN.replace("name = \"t\"\n", "")),
            "jobs/job.toml: name: missing; expected the job name, e.g. name = \"sums\""
        );
        assert_eq!(
            err("name = \"t\"\n[sink]\ntype = \"stdout\"\n"),
            "jobs/job.toml: source: missing; expected a [source] table with type = \"file\" or \"generator\""
        );
        assert_eq!(
            err("name = \"t\"\n[source]\ntype = \"generator\"\n"),
            "jobs/job.toml: sink: missing; expected a [sink] table with type = \"file\", \"stdout\" or \"blackhole\""
        );
        assert_eq!(
            err(""),
            "jobs/job.toml: name: missing; expected the job name, e.g. name = \"sums\""
        );
        assert_eq!(
            err(&MIN.replace("generator", "file")),
            "jobs/job.toml: source.path: missing; a \"file\" source needs a file or directory of JSON lines, e.g. path = \"input/\""
        );
        assert_eq!(
            err(&MIN.replace("blackhole", "file")),
            "jobs/job.toml: sink.path: missing; a \"file\" sink needs its output directory, e.g. path = \"output/\""
        );
        assert_eq!(
            err(&with("[[transform]]\ntype = \"filter\"\n")),
            "jobs/job.toml: transform[0].expr: missing; a \"filter\" transform needs an expression, e.g. expr = \"value > 10\""
        );
        assert_eq!(
            err(&with("[[transform]]\ntype = \"filter\"\nexpr = \"  \"\n")),
            "jobs/job.toml: transform[0].expr: expected an expression (a non-empty string), found \"  \""
        );
        assert_eq!(
            err(&with("[[transform]]\ntype = \"project\"\n")),
            "jobs/job.toml: transform[0]: a \"project\" transform needs at least one of keep, rename or compute"
        );
        assert_eq!(
            err(&with("[[transform]]\ntype = \"key_by\"\n")),
            "jobs/job.toml: transform[0].field: missing; a \"key_by\" transform needs field = \"a\" or fields = [\"a\", \"b\"]"
        );
        assert_eq!(
            err(&with("[[transform]]\ntype = \"key_by\"\nfield = \"a\"\nfields = [\"b\"]\n")),
            "jobs/job.toml: transform[0]: a \"key_by\" transform takes either field = \"a\" or fields = [\"a\", \"b\"], not both"
        );
        assert_eq!(
            err(&with("[[transform]]\ntype = \"key_by\"\nfields = []\n")),
            "jobs/job.toml: transform[0].fields: expected a non-empty array of field names, found an empty array"
        );
        assert_eq!(
            err(&with("[[transform]]\ntype = \"dedupe\"\nfields = [\"a\", \"a\"]\n")),
            "jobs/job.toml: transform[0].fields[1]: duplicate field \"a\"; expected each field once"
        );
        let kb = "[[transform]]\ntype = \"key_by\"\nfield = \"k\"\n";
        assert_eq!(
            err(&with(&format!("{kb}[[transform]]\ntype = \"tumbling\"\n"))),
            "jobs/job.toml: transform[1].size: missing; a \"tumbling\" window needs its length, e.g. size = \"10s\""
        );
        assert_eq!(
            err(&with(&format!("{kb}[[transform]]\ntype = \"sliding\"\nsize = \"10s\"\n"))),
            "jobs/job.toml: transform[1].slide: missing; a \"sliding\" window needs how often a window starts, e.g. slide = \"5s\" (0 < slide <= size)"
        );
        assert_eq!(
            err(&with(&format!("{kb}[[transform]]\ntype = \"tumbling\"\nsize = \"10s\"\n"))),
            "jobs/job.toml: transform[1].time_field: missing; a \"tumbling\" window needs the event-time field (integer milliseconds), e.g. time_field = \"ts\""
        );
        assert_eq!(
            err(&with(&format!("{kb}[[transform]]\ntype = \"tumbling\"\nsize = \"10s\"\ntime_field = \"ts\"\naggregate = \"max\"\n"))),
            "jobs/job.toml: transform[1].field: missing; a \"tumbling\" window with aggregate = \"max\" needs the field to aggregate"
        );
    }

    #[test]
    fn bad_durations_in_windows() {
        let win = |extra: &str| {
            with(&format!(
                "[[transform]]\ntype = \"key_by\"\nfield = \"k\"\n[[transform]]\ntype = \"filter\"\nexpr = \"x\"\n[[transform]]\ntype = \"sum\"\nfield = \"v\"\n[[transform]]\ntype = \"sliding\"\ntime_field = \"ts\"\naggregate = \"count\"\n{extra}"
            ))
        };
        assert!(parse(&win("size = \"10s\"\nslide = \"10s\"\n")).is_ok());
        assert_eq!(
            err(&win("size = \"10x\"\nslide = \"1s\"\n")),
            "jobs/job.toml: transform[3].size: invalid duration \"10x\"; expected a number followed by ms, s, m or h (e.g. \"200ms\", \"30s\", \"10m\")"
        );
        assert_eq!(
            err(&win("size = 10\nslide = \"1s\"\n")),
            "jobs/job.toml: transform[3].size: expected a duration string such as \"10s\", found integer 10"
        );
        assert_eq!(
            err(&win("size = \"0s\"\nslide = \"1s\"\n")),
            "jobs/job.toml: transform[3].size: expected a duration greater than 0, found \"0s\""
        );
        assert_eq!(
            err(&win("size = \"10s\"\nslide = \"0ms\"\n")),
            "jobs/job.toml: transform[3].slide: expected a duration greater than 0, found \"0ms\""
        );
        assert_eq!(
            err(&win("size = \"10s\"\nslide = \"20s\"\n")),
            "jobs/job.toml: transform[3].slide: \"20s\" is longer than size \"10s\"; expected 0 < slide <= size"
        );
        assert_eq!(
            err(&win("size = \"0.5ms\"\nslide = \"1s\"\n")),
            "jobs/job.toml: transform[3].size: expected a whole number of milliseconds (event time is integer milliseconds), found \"0.5ms\""
        );
        assert_eq!(
            err(&win("size = \"1s\"\nslide = \"1s\"\nout_of_orderness = \"-1s\"\n")),
            "jobs/job.toml: transform[3].out_of_orderness: invalid duration \"-1s\"; expected a number followed by ms, s, m or h (e.g. \"200ms\", \"30s\", \"10m\")"
        );
        assert!(parse(&win(
            "size = \"1s\"\nslide = \"1s\"\nout_of_orderness = \"0s\"\n"
        ))
        .is_ok());
        assert_eq!(
            err(&win("size = \"1s\"\nslide = \"1s\"\noutput = \"window_end\"\n")),
            "jobs/job.toml: transform[3].output: \"window_end\" clashes with the window's own window_end field; expected another name"
        );
        assert_eq!(
            err(&win("size = \"1s\"\nslide = \"1s\"\noutput = \"k\"\n")),
            "jobs/job.toml: transform[3].output: \"k\" clashes with the key field of the key_by before it; expected another name (set output = \"...\")"
        );
    }

    #[test]
    fn semantic_errors() {
        assert_eq!(
            err(&with("[[transform]]\ntype = \"filter\"\nexpr = \"x\"\n[[transform]]\ntype = \"project\"\nkeep = [\"a\"]\n[[transform]]\ntype = \"sum\"\nfield = \"v\"\n")),
            "jobs/job.toml: transform[2]: \"sum\" needs a key_by before it"
        );
        assert_eq!(
            err(&with("[[transform]]\ntype = \"tumbling\"\nsize = \"1s\"\ntime_field = \"ts\"\naggregate = \"count\"\n")),
            "jobs/job.toml: transform[0]: \"tumbling\" needs a key_by before it"
        );
        assert_eq!(
            err(&with("[[transform]]\ntype = \"dedupe\"\n")),
            "jobs/job.toml: transform[0]: \"dedupe\" without fields needs a key_by before it (or set fields = [\"id\"])"
        );
        // Dedupe on explicit fields needs no key.
        assert!(parse(&with(
            "[[transform]]\ntype = \"dedupe\"\nfields = [\"id\"]\n"
        ))
        .is_ok());
        // A key_by stays in force through filter, project and aggregates.
        let ok = transforms("[[transform]]\ntype = \"key_by\"\nfield = \"k\"\n[[transform]]\ntype = \"filter\"\nexpr = \"x\"\n[[transform]]\ntype = \"project\"\ncompute = { y = \"1\" }\n[[transform]]\ntype = \"avg\"\nfield = \"v\"\n[[transform]]\ntype = \"dedupe\"\n");
        assert_eq!(ok.len(), 5);
        assert_eq!(
            err(&format!("parallelism = 300\n{MIN}")),
            "jobs/job.toml: parallelism: 300 exceeds max_parallelism 128"
        );
        assert!(parse(&format!("parallelism = 300\nmax_parallelism = 300\n{MIN}")).is_ok());
        assert_eq!(
            err(&MIN.replace("\"t\"", "\"my job\"")),
            "jobs/job.toml: name: invalid job name \"my job\"; expected letters, digits, '_', '.' and '-' only (it is used as a directory name), not \".\" or \"..\""
        );
        assert!(err(&MIN.replace("\"t\"", "\"..\"")).contains("invalid job name \"..\""));
        assert!(err(&MIN.replace("\"t\"", "\"\"")).contains("invalid job name \"\""));
        assert_eq!(
            err(&with("[[transform]]\ntype = \"project\"\nrename = { a = \"x\", b = \"x\" }\n")),
            "jobs/job.toml: transform[0].rename.b: \"x\" is already the new name of \"a\"; expected distinct new names"
        );
        assert_eq!(
            err(&with("[[transform]]\ntype = \"project\"\ncompute = { a = 1 }\n")),
            "jobs/job.toml: transform[0].compute.a: expected an expression (a non-empty string), found integer 1"
        );
        assert_eq!(
            err(&with("[[transform]]\ntype = \"project\"\nrename = [\"a\"]\n")),
            "jobs/job.toml: transform[0].rename: expected a table such as { old = \"new\" }, found an array"
        );
    }

    #[test]
    fn toml_syntax_errors_have_line_and_column() {
        let e = parse("name = \"t\"\nparallelism = = 2\n").unwrap_err();
        assert_eq!(e.key, "");
        assert!(
            e.message.starts_with("invalid TOML at line 2, column 15: "),
            "{}",
            e.message
        );
        assert_eq!(e.to_string(), format!("jobs/job.toml: {}", e.message));
        let e = parse("name = \"t\"\nname = \"u\"\n").unwrap_err();
        assert!(
            e.message.starts_with("invalid TOML at line 2, column 1: "),
            "{}",
            e.message
        );
        assert!(e.message.contains("duplicate key"), "{}", e.message);
        // Columns count characters, not bytes.
        let e = parse("name = \"é\" x\n").unwrap_err();
        assert!(
            e.message.starts_with("invalid TOML at line 1, column 12: "),
            "{}",
            e.message
        );
        assert!(!e.message.contains('\n'));
    }

    // ----- overrides -----

    #[test]
    fn overrides_set_values() {
        let text = with("[[transform]]\ntype = \"key_by\"\nfield = \"k\"\n[[transform]]\ntype = \"sum\"\nfield = \"value\"\n");
        let job = parse_set(
            &text,
            &[
                "parallelism=4",
                "source.count = 100",
                "transform.1.field=price",
                "sink.type=file",
                "sink.path=/tmp/out",
                "name=\"renamed\"",
            ],
        )
        .unwrap();
        assert_eq!(job.parallelism, Some(4));
        assert_eq!(job.name, "renamed");
        let SourceConfig::Generator(g) = &job.source else {
            panic!()
        };
        assert_eq!(g.count, Some(100));
        assert_eq!(
            job.transforms[1],
            TransformConfig::Running {
                aggregate: Aggregate::Sum,
                field: "price".into()
            }
        );
        // /tmp/out is not TOML: taken as a plain string.
        assert_eq!(
            job.sink,
            SinkConfig::File {
                path: PathBuf::from("/tmp/out"),
                overwrite: false
            }
        );
        // Arrays, booleans, inline tables (order kept), later wins.
        let job = parse_set(
            &text,
            &[
                "transform.0.fields=[\"a\",\"b\"]",
                "transform.0={type=\"key_by\", fields=[\"x\"]}",
                "transform.1 = {type = \"project\", rename = {z = \"1\", a = \"2\"}}",
            ],
        )
        .unwrap();
        assert_eq!(
            job.transforms,
            vec![
                TransformConfig::KeyBy {
                    fields: vec!["x".into()]
                },
                TransformConfig::Project {
                    keep: None,
                    rename: vec![("z".into(), "1".into()), ("a".into(), "2".into())],
                    compute: vec![],
                }
            ]
        );
        // Missing tables are created.
        let job = parse_set(
            "name = \"a\"",
            &[
                "source.type=generator",
                "source.count=5",
                "sink.type=stdout",
                "transform=[]",
            ],
        )
        .unwrap();
        assert_eq!(job.sink, SinkConfig::Stdout);
        assert!(job.transforms.is_empty());
        // A value that looks like key=value keeps everything after the first '='.
        let job = parse_set(
            &with("[[transform]]\ntype = \"filter\"\nexpr = \"a\"\n"),
            &["transform.0.expr=a == 'b'"],
        )
        .unwrap();
        assert_eq!(
            job.transforms[0],
            TransformConfig::Filter {
                expr: "a == 'b'".into()
            }
        );
    }

    #[test]
    fn bad_overrides() {
        let text = with("[[transform]]\ntype = \"key_by\"\nfield = \"k\"\n");
        assert_eq!(
            set_err(&text, &["parallelism"]),
            "jobs/job.toml: parallelism: invalid --set \"parallelism\": expected key=value, e.g. --set parallelism=4"
        );
        assert_eq!(
            set_err(&text, &["transform.7.field=price"]),
            "jobs/job.toml: transform.7.field: invalid --set: index 7 is out of range; transform has 1 entry (index 0)"
        );
        assert_eq!(
            set_err(MIN, &["transform.0.field=price"]),
            "jobs/job.toml: transform.0.field: invalid --set: index 0 is out of range; the job file has no transform"
        );
        assert_eq!(
            set_err(&text, &["transform.x=1"]),
            "jobs/job.toml: transform.x: invalid --set: transform is an array; expected a numeric index after it (e.g. transform.0), found \"x\""
        );
        assert_eq!(
            set_err(&text, &["source..count=1"]),
            "jobs/job.toml: source..count: invalid --set key \"source..count\": expected a dotted key such as parallelism, source.count or transform.1.field"
        );
        assert_eq!(
            set_err(&text, &["=1"]),
            "jobs/job.toml: invalid --set key \"\": expected a dotted key such as parallelism, source.count or transform.1.field"
        );
        assert_eq!(
            set_err(&text, &["name.x=1"]),
            "jobs/job.toml: name.x: invalid --set: name is string \"t\", not a table or array, so name.x cannot be set"
        );
        // Errors about an overridden value say where it came from.
        assert_eq!(
            set_err(&text, &["parallelism=two"]),
            "jobs/job.toml: parallelism: expected a positive integer, found string \"two\" (value from --set parallelism=two)"
        );
        assert_eq!(
            set_err(&text, &["transform.0.fields=[]", "transform.0.field=\"k\""]),
            "jobs/job.toml: transform[0].fields: expected a non-empty array of field names, found an empty array (value from --set transform.0.fields=[])"
        );
        assert_eq!(
            set_err(&text, &["source.typo=1"]),
            "jobs/job.toml: source.typo: unknown key; expected one of: type, count, keys, seed, rate, ts_step_ms, max_drift (value from --set source.typo=1)"
        );
    }

    // ----- durations -----

    #[test]
    fn durations() {
        let ok = |s: &str| parse_duration(s).unwrap();
        assert_eq!(ok("200ms"), ms(200));
        assert_eq!(ok("1.5s"), ms(1500));
        assert_eq!(ok("30s"), Duration::from_secs(30));
        assert_eq!(ok("10m"), Duration::from_secs(600));
        assert_eq!(ok("2h"), Duration::from_secs(7200));
        assert_eq!(ok("0s"), Duration::ZERO);
        assert_eq!(ok("0.25h"), Duration::from_secs(900));
        assert_eq!(ok("0.5ms"), Duration::from_micros(500));
        assert_eq!(ok("0.000001ms"), Duration::from_nanos(1));
        assert_eq!(ok("007.500s"), ms(7500));
        assert_eq!(ok("1.00000000000000000000000000s"), Duration::from_secs(1));
        assert_eq!(ok("5124095h"), Duration::from_secs(5_124_095 * 3600));
        let syntax = DURATION_SYNTAX.to_string();
        for bad in [
            "", "10", "10x", "s", "ms", "1.s", ".5s", "-1s", "+1s", " 1s", "1s ", "1 s", "1e3ms",
            "1.2.3s", "10sec", "10us", "1_000ms", "１s",
        ] {
            assert_eq!(parse_duration(bad), Err(syntax.clone()), "{bad:?}");
        }
        let big = Err("expected at most 5124095h (about 584 years)".to_string());
        assert_eq!(parse_duration("5124096h"), big);
        assert_eq!(parse_duration("18446744074s"), big);
        assert_eq!(parse_duration("99999999999999999999999999999999999h"), big);
        assert_eq!(
            parse_duration("0.0000001ms"),
            Err(
                "expected at most nanosecond precision (\"0.0000001ms\" has too many decimals)"
                    .to_string()
            )
        );
        assert!(parse_duration("1.0000000000000000001s").is_err());
    }

    // ----- checkpoints -----

    /// `MIN` plus checkpoint settings given after it (tables).
    fn ck(text: &str) -> Result<Option<CheckpointConfig>, JobFileError> {
        parse(&format!("{MIN}{text}")).map(|job| job.checkpoint)
    }

    /// Checkpoint settings given as top-level dotted keys (before `MIN`'s tables).
    fn ck_top(text: &str) -> Result<Option<CheckpointConfig>, JobFileError> {
        parse(&format!("{text}{MIN}")).map(|job| job.checkpoint)
    }

    fn ck_err(text: &str) -> String {
        err(&format!("{MIN}{text}"))
    }

    fn ck_top_err(text: &str) -> String {
        err(&format!("{text}{MIN}"))
    }

    #[test]
    fn checkpoint_full_table() {
        let text = format!(
            "{MIN}[checkpoint]\ninterval = \"200ms\"\nmode = \"at-least-once\"\nmin_pause = \"1.5s\"\ntimeout = \"2m\"\nmax_concurrent = 2\ntolerable_failures = 5\nretained = 7\non_cancel = \"delete\"\nstorage = \"file:///var/lib/weir/checkpoints\"\nlocal_dir = \"/var/lib/weir/local\"\nincremental = false\nmax_delta_chain = 10\nlocal_cache = \"512MiB\"\n[checkpoint.s3]\nendpoint = \"http://127.0.0.1:9100\"\nregion = \"eu-west-1\"\npath_style = true\naccess_key_id = \"AK\"\nsecret_access_key = \"SK\"\nchecksums = \"when_required\"\npart_size = \"8MiB\"\nconcurrency = 8\nmax_attempts = 3\n"
        );
        let job = parse_job(&text, Path::new("/srv/jobs/sums.toml"), &[]).unwrap();
        assert_eq!(
            job.checkpoint,
            Some(CheckpointConfig {
                interval: ms(200),
                mode: CheckpointMode::AtLeastOnce,
                min_pause: ms(1500),
                timeout: Duration::from_secs(120),
                max_concurrent: 2,
                tolerable_failures: 5,
                retained: 7,
                on_cancel: OnCancel::Delete,
                storage: "file:///var/lib/weir/checkpoints".into(),
                local_dir: PathBuf::from("/var/lib/weir/local"),
                incremental: false,
                max_delta_chain: 10,
                local_cache: Some(512 << 20),
                store: weir_runtime::StoreOptions {
                    s3: weir_runtime::S3Options {
                        endpoint: Some("http://127.0.0.1:9100".into()),
                        region: Some("eu-west-1".into()),
                        path_style: Some(true),
                        access_key_id: Some("AK".into()),
                        secret_access_key: Some("SK".into()),
                        checksums: Some(weir_runtime::S3Checksums::WhenRequired),
                        part_size: 8 << 20,
                        concurrency: 8,
                        max_attempts: 3,
                    },
                },
            })
        );
        // The other values of mode and on_cancel.
        let c =
            ck("[checkpoint]\nstorage = \"/c\"\nmode = \"exactly-once\"\non_cancel = \"retain\"\n")
                .unwrap()
                .unwrap();
        assert_eq!(
            (c.mode, c.on_cancel),
            (CheckpointMode::ExactlyOnce, OnCancel::Retain)
        );
    }

    #[test]
    fn checkpoint_defaults_and_disabled() {
        assert_eq!(parse(MIN).unwrap().checkpoint, None);
        assert_eq!(
            ck("[checkpoint]\nstorage = \"file:///ck\"\n").unwrap(),
            Some(CheckpointConfig::new("file:///ck"))
        );
        assert_eq!(
            ck_top("state.checkpoints.dir = \"file:///ck\"\n").unwrap(),
            Some(CheckpointConfig::new("file:///ck"))
        );
        // Empty Flink tables set nothing.
        assert_eq!(
            ck("[execution.checkpointing]\n[state.checkpoints]\n").unwrap(),
            None
        );
        assert_eq!(ck_top("execution = {}\nstate = {}\n").unwrap(), None);
        let cache = |v: &str| {
            ck(&format!(
                "[checkpoint]\nstorage = \"file:///ck\"\nlocal_cache = {v}\n"
            ))
            .unwrap()
            .unwrap()
            .local_cache
        };
        assert_eq!(cache("\"unlimited\""), None);
        assert_eq!(cache("0"), Some(0));
        assert_eq!(cache("\"0\""), Some(0));
        assert_eq!(cache("\"2GiB\""), Some(2 << 30));
        assert_eq!(cache("4096"), Some(4096));
    }

    #[test]
    fn checkpoint_flink_keys() {
        let flink = "execution.checkpointing.interval = \"30 s\"\nexecution.checkpointing.mode = \"AT_LEAST_ONCE\"\nexecution.checkpointing.min-pause = \"500 ms\"\nexecution.checkpointing.timeout = \"1 min\"\nexecution.checkpointing.max-concurrent-checkpoints = 2\nexecution.checkpointing.tolerable-failed-checkpoints = 0\nexecution.checkpointing.externalized-checkpoint-retention = \"DELETE_ON_CANCELLATION\"\nstate.checkpoints.num-retained = 5\nstate.checkpoints.dir = \"file:///ck\"\n";
        let expected = CheckpointConfig {
            interval: Duration::from_secs(30),
            mode: CheckpointMode::AtLeastOnce,
            min_pause: ms(500),
            timeout: Duration::from_secs(60),
            max_concurrent: 2,
            tolerable_failures: 0,
            retained: 5,
            on_cancel: OnCancel::Delete,
            ..CheckpointConfig::new("file:///ck")
        };
        assert_eq!(ck_top(flink).unwrap(), Some(expected.clone()));
        // The same as [execution.checkpointing] and [state.checkpoints] tables.
        let tables = flink
            .replace("execution.checkpointing.", "")
            .replace("state.checkpoints.", "");
        let (exec, state) = tables.split_at(tables.find("num-retained").unwrap());
        assert_eq!(
            ck(&format!(
                "[execution.checkpointing]\n{exec}[state.checkpoints]\n{state}"
            ))
            .unwrap(),
            Some(expected)
        );
        // Modes and retentions: case-insensitive, '-' or '_'.
        for (text, mode) in [
            ("EXACTLY_ONCE", CheckpointMode::ExactlyOnce),
            ("exactly_once", CheckpointMode::ExactlyOnce),
            ("exactly-once", CheckpointMode::ExactlyOnce),
            ("Exactly-Once", CheckpointMode::ExactlyOnce),
            ("at_least_once", CheckpointMode::AtLeastOnce),
            ("at-least-once", CheckpointMode::AtLeastOnce),
        ] {
            let c = ck_top(&format!(
                "execution.checkpointing.mode = \"{text}\"\nstate.checkpoints.dir = \"/c\"\n"
            ))
            .unwrap()
            .unwrap();
            assert_eq!(c.mode, mode, "{text}");
        }
        for (text, on_cancel) in [
            ("RETAIN_ON_CANCELLATION", OnCancel::Retain),
            ("retain-on-cancellation", OnCancel::Retain),
            ("delete_on_cancellation", OnCancel::Delete),
        ] {
            let c = ck_top(&format!("execution.checkpointing.externalized-checkpoint-retention = \"{text}\"\nstate.checkpoints.dir = \"/c\"\n"))
                .unwrap()
                .unwrap();
            assert_eq!(c.on_cancel, on_cancel, "{text}");
        }
        // Flink keys mix with [checkpoint] keys for other settings.
        let c = parse(&format!("state.checkpoints.num-retained = 9\n{MIN}[checkpoint]\nstorage = \"/c\"\ninterval = \"5s\"\n"))
            .unwrap()
            .checkpoint
            .unwrap();
        assert_eq!((c.retained, c.interval), (9, Duration::from_secs(5)));
        // Incremental checkpoints under both of Flink's names (default on).
        assert!(c.incremental);
        for key in [
            "state.backend.incremental",
            "execution.checkpointing.incremental",
        ] {
            let c = ck_top(&format!("{key} = false\nstate.checkpoints.dir = \"/c\"\n"))
                .unwrap()
                .unwrap();
            assert!(!c.incremental, "{key}");
        }
    }

    #[test]
    fn checkpoint_flink_durations() {
        let interval = |v: &str| {
            ck_top(&format!(
                "execution.checkpointing.interval = {v}\nstate.checkpoints.dir = \"/c\"\n"
            ))
            .map(|c| c.unwrap().interval)
        };
        assert_eq!(interval("10000").unwrap(), ms(10_000));
        assert_eq!(interval("\"10000\"").unwrap(), ms(10_000));
        assert_eq!(interval("\"30 s\"").unwrap(), Duration::from_secs(30));
        assert_eq!(interval("\"2 h\"").unwrap(), Duration::from_secs(7200));
        let ok = |s: &str| parse_flink_duration(s).unwrap();
        for (text, expected) in [
            ("30 s", Duration::from_secs(30)),
            ("30s", Duration::from_secs(30)),
            ("1 min", Duration::from_secs(60)),
            ("2 h", Duration::from_secs(7200)),
            ("500 ms", ms(500)),
            ("10000", ms(10_000)),
            ("0", Duration::ZERO),
            ("7 milli", ms(7)),
            ("7 millis", ms(7)),
            ("7 millisecond", ms(7)),
            ("7 milliseconds", ms(7)),
            ("3 sec", Duration::from_secs(3)),
            ("3 secs", Duration::from_secs(3)),
            ("3 second", Duration::from_secs(3)),
            ("3 seconds", Duration::from_secs(3)),
            ("4m", Duration::from_secs(240)),
            ("4 minute", Duration::from_secs(240)),
            ("4 minutes", Duration::from_secs(240)),
            ("1 hour", Duration::from_secs(3600)),
            ("3 hours", Duration::from_secs(3 * 3600)),
            ("1 d", Duration::from_secs(86_400)),
            ("1 day", Duration::from_secs(86_400)),
            ("2 days", Duration::from_secs(2 * 86_400)),
            ("30 S", Duration::from_secs(30)),
            ("1 MIN", Duration::from_secs(60)),
            ("  30   s  ", Duration::from_secs(30)),
            // Weir's forms too.
            ("1.5s", ms(1500)),
            ("0.5 min", Duration::from_secs(30)),
            ("200ms", ms(200)),
        ] {
            assert_eq!(ok(text), expected, "{text:?}");
        }
        let syntax = Err(FLINK_DURATION_SYNTAX.to_string());
        for bad in [
            "", " ", "s", "ms", "-1 s", "+1 s", "30 x", "30 s s", "1e3 ms", "1,5 s", "1.s", ".5 s",
            "10 us", "1 mins", "30 s.",
        ] {
            assert_eq!(parse_flink_duration(bad), syntax, "{bad:?}");
        }
        assert_eq!(
            parse_flink_duration("213504 d"),
            Err("expected at most 5124095h (about 584 years)".to_string())
        );
        assert!(parse_flink_duration("213503 d").is_ok());
        assert!(parse_flink_duration("9999999999999999999999999 d").is_err());
        // In a job file.
        assert_eq!(
            ck_top_err("execution.checkpointing.timeout = \"30 x\"\nstate.checkpoints.dir = \"/c\"\n"),
            "jobs/job.toml: execution.checkpointing.timeout: invalid duration \"30 x\"; expected a number and an optional unit: ms, s, min, h or d (e.g. \"500 ms\", \"30 s\", \"1 min\"); a bare number is milliseconds"
        );
        assert_eq!(
            ck_top_err("execution.checkpointing.min-pause = -5\nstate.checkpoints.dir = \"/c\"\n"),
            "jobs/job.toml: execution.checkpointing.min-pause: expected a duration such as \"30 s\" or a number of milliseconds, found integer -5"
        );
        assert_eq!(
            ck_top_err("execution.checkpointing.interval = true\nstate.checkpoints.dir = \"/c\"\n"),
            "jobs/job.toml: execution.checkpointing.interval: expected a duration such as \"30 s\" or a number of milliseconds, found boolean true"
        );
        // Weir's keys keep Weir's syntax.
        assert_eq!(
            ck_err("[checkpoint]\nstorage = \"/c\"\ninterval = \"30 s\"\n"),
            "jobs/job.toml: checkpoint.interval: invalid duration \"30 s\"; expected a number followed by ms, s, m or h (e.g. \"200ms\", \"30s\", \"10m\")"
        );
        assert_eq!(
            ck_err("[checkpoint]\nstorage = \"/c\"\nmin_pause = 100\n"),
            "jobs/job.toml: checkpoint.min_pause: expected a duration string such as \"10s\", found integer 100"
        );
    }

    #[test]
    fn checkpoint_conflicting_names() {
        assert_eq!(
            err(&format!("execution.checkpointing.interval = \"30 s\"\n{MIN}[checkpoint]\ninterval = \"1s\"\nstorage = \"/c\"\n")),
            "jobs/job.toml: execution.checkpointing.interval: conflicts with checkpoint.interval, which sets the same setting; keep only one of the two"
        );
        assert_eq!(
            ck("[checkpoint]\nstorage = \"/c\"\n[state.checkpoints]\ndir = \"/d\"\n").unwrap_err().to_string(),
            "jobs/job.toml: state.checkpoints.dir: conflicts with checkpoint.storage, which sets the same setting; keep only one of the two"
        );
        assert_eq!(
            ck_err("[checkpoint]\nstorage = \"/c\"\nretained = 2\non_cancel = \"retain\"\n[state.checkpoints]\nnum-retained = 2\n"),
            "jobs/job.toml: state.checkpoints.num-retained: conflicts with checkpoint.retained, which sets the same setting; keep only one of the two"
        );
        assert_eq!(
            ck_err("[checkpoint]\nstorage = \"/c\"\non_cancel = \"retain\"\n[execution.checkpointing]\nexternalized-checkpoint-retention = \"RETAIN_ON_CANCELLATION\"\n"),
            "jobs/job.toml: execution.checkpointing.externalized-checkpoint-retention: conflicts with checkpoint.on_cancel, which sets the same setting; keep only one of the two"
        );
        // Even with equal values.
        assert!(ck_err("[checkpoint]\nstorage = \"/c\"\nmode = \"exactly-once\"\n[execution.checkpointing]\nmode = \"EXACTLY_ONCE\"\n")
            .contains("execution.checkpointing.mode: conflicts with checkpoint.mode"));
    }

    #[test]
    fn checkpoint_needs_storage() {
        let missing = "jobs/job.toml: checkpoint.storage: missing; checkpointing needs a storage location; set checkpoint.storage or state.checkpoints.dir";
        assert_eq!(ck_err("[checkpoint]\ninterval = \"1s\"\n"), missing);
        assert_eq!(ck_err("[checkpoint]\n"), missing);
        assert_eq!(
            ck_err("[checkpoint]\n[execution.checkpointing]\ninterval = \"1s\"\n"),
            missing
        );
        assert_eq!(
            ck_top_err("execution.checkpointing.interval = \"30 s\"\nstate.checkpoints.num-retained = 2\n"),
            "jobs/job.toml: execution.checkpointing.interval: checkpointing needs a storage location; set checkpoint.storage or state.checkpoints.dir"
        );
        assert_eq!(
            ck_err("[state.checkpoints]\nnum-retained = 2\n"),
            "jobs/job.toml: state.checkpoints.num-retained: checkpointing needs a storage location; set checkpoint.storage or state.checkpoints.dir"
        );
    }

    #[test]
    fn checkpoint_bad_values() {
        let c = |body: &str| ck_err(&format!("[checkpoint]\nstorage = \"/c\"\n{body}"));
        let f = |body: &str| {
            ck_err(&format!(
                "[state.checkpoints]\ndir = \"/c\"\n[execution.checkpointing]\n{body}"
            ))
        };
        assert_eq!(
            c("mode = \"exactly_once\"\n"),
            "jobs/job.toml: checkpoint.mode: unknown checkpoint mode \"exactly_once\"; expected one of: exactly-once, at-least-once"
        );
        assert_eq!(
            c("mode = 1\n"),
            "jobs/job.toml: checkpoint.mode: expected a string, one of: exactly-once, at-least-once; found integer 1"
        );
        assert_eq!(
            c("on_cancel = \"keep\"\n"),
            "jobs/job.toml: checkpoint.on_cancel: unknown on_cancel value \"keep\"; expected one of: retain, delete"
        );
        assert_eq!(
            f("mode = \"ONCE\"\n"),
            "jobs/job.toml: execution.checkpointing.mode: unknown checkpointing mode \"ONCE\"; expected one of: EXACTLY_ONCE, AT_LEAST_ONCE"
        );
        assert_eq!(
            f("externalized-checkpoint-retention = \"RETAIN\"\n"),
            "jobs/job.toml: execution.checkpointing.externalized-checkpoint-retention: unknown retention \"RETAIN\"; expected one of: RETAIN_ON_CANCELLATION, DELETE_ON_CANCELLATION"
        );
        assert_eq!(
            f("externalized-checkpoint-retention = \"NO_EXTERNALIZED_CHECKPOINTS\"\n"),
            "jobs/job.toml: execution.checkpointing.externalized-checkpoint-retention: \"NO_EXTERNALIZED_CHECKPOINTS\" is not supported: Weir always keeps completed checkpoints in the storage location; expected one of: RETAIN_ON_CANCELLATION, DELETE_ON_CANCELLATION"
        );
        assert_eq!(
            c("max_concurrent = \"2\"\n"),
            "jobs/job.toml: checkpoint.max_concurrent: expected a positive integer, found string \"2\""
        );
        assert_eq!(
            f("max-concurrent-checkpoints = 0\n"),
            "jobs/job.toml: execution.checkpointing.max-concurrent-checkpoints: expected a positive integer, found 0"
        );
        assert_eq!(
            c("tolerable_failures = -1\n"),
            "jobs/job.toml: checkpoint.tolerable_failures: expected an integer from 0 to 4294967295, found -1"
        );
        assert_eq!(
            f("tolerable-failed-checkpoints = 4294967296\n"),
            "jobs/job.toml: execution.checkpointing.tolerable-failed-checkpoints: expected an integer from 0 to 4294967295, found 4294967296"
        );
        assert_eq!(
            c("retained = 1.0\n"),
            "jobs/job.toml: checkpoint.retained: expected a positive integer, found float 1.0"
        );
        assert_eq!(
            c("incremental = \"yes\"\n"),
            "jobs/job.toml: checkpoint.incremental: expected true or false, found string \"yes\""
        );
        let s3 = |t: &str| {
            ck_err(&format!(
                "[checkpoint]\nstorage = \"s3://bkt/p\"\n[checkpoint.s3]\n{t}"
            ))
        };
        assert_eq!(
            s3("part_size = \"1MiB\"\n"),
            "jobs/job.toml: checkpoint.s3.part_size: 1048576 bytes is out of range; expected 5MiB to 5GiB (S3's part sizes)"
        );
        assert_eq!(
            s3("part_size = \"16 parsecs\"\n"),
            "jobs/job.toml: checkpoint.s3.part_size: expected a size such as \"16MiB\" or a number of bytes, found \"16 parsecs\""
        );
        assert_eq!(
            s3("access_key_id = \"AK\"\n"),
            "jobs/job.toml: checkpoint.s3.secret_access_key: missing; set both access_key_id and secret_access_key, or neither (then the AWS environment and profiles apply)"
        );
        assert_eq!(
            s3("endpoint = \"127.0.0.1:9000\"\n"),
            "jobs/job.toml: checkpoint.s3.endpoint: expected an http:// or https:// URL, e.g. \"http://127.0.0.1:9000\", found \"127.0.0.1:9000\""
        );
        assert_eq!(
            s3("checksums = \"always\"\n"),
            "jobs/job.toml: checkpoint.s3.checksums: unknown checksum mode \"always\"; expected one of: when_supported, when_required"
        );
        assert_eq!(
            s3("bucket = \"x\"\n"),
            "jobs/job.toml: checkpoint.s3.bucket: unknown key; expected one of: endpoint, region, path_style, access_key_id, secret_access_key, checksums, part_size, concurrency, max_attempts"
        );
        assert_eq!(
            ck_err("[checkpoint]\nstorage = \"s3://Bad_Bucket/x\"\n"),
            "jobs/job.toml: checkpoint.storage: checkpoint storage `s3://Bad_Bucket/x`: `Bad_Bucket` is not a valid bucket name (3 to 63 lowercase letters, digits, `-`, `.`); expected s3://bucket or s3://bucket/prefix"
        );
        assert_eq!(
            c("max_delta_chain = 0\n"),
            "jobs/job.toml: checkpoint.max_delta_chain: expected a positive integer, found 0"
        );
        assert_eq!(
            c("local_cache = true\n"),
            "jobs/job.toml: checkpoint.local_cache: expected \"unlimited\", 0 or a size such as \"2GiB\", found boolean true"
        );
        assert_eq!(
            c("local_cache = \"lots\"\n"),
            "jobs/job.toml: checkpoint.local_cache: expected \"unlimited\", 0 or a size such as \"2GiB\", found \"lots\""
        );
        assert_eq!(
            c("local_cache = -1\n"),
            "jobs/job.toml: checkpoint.local_cache: expected \"unlimited\", 0 or a size such as \"2GiB\", found integer -1"
        );
        assert_eq!(
            c("local_dir = \"\"\n"),
            "jobs/job.toml: checkpoint.local_dir: expected a directory path (a non-empty string), found \"\""
        );
        assert_eq!(
            ck_err("[checkpoint]\nstorage = 5\n"),
            "jobs/job.toml: checkpoint.storage: expected a storage URI such as \"file:///var/lib/weir/checkpoints\" or a directory path, found integer 5"
        );
        assert_eq!(
            ck("[checkpoint]\nstorage = \"s3://bucket/ck\"\n")
                .unwrap()
                .unwrap()
                .storage,
            "s3://bucket/ck"
        );
        assert_eq!(
            ck_top("state.checkpoints.dir = \"hdfs:///flink/ck\"\n")
                .unwrap()
                .unwrap()
                .storage,
            "hdfs:///flink/ck"
        );
        assert_eq!(
            ck_err("[state.checkpoints]\ndir = \"ftp://host/ck\"\n"),
            "jobs/job.toml: state.checkpoints.dir: unsupported storage scheme \"ftp\" in \"ftp://host/ck\"; expected s3://bucket/prefix, hdfs://namenode:port/path, a URI such as \"file:///var/lib/weir/checkpoints\" or a directory path"
        );
        assert_eq!(
            ck_err("[checkpoint]\nstorage = \"file://\"\n"),
            "jobs/job.toml: checkpoint.storage: \"file://\" names no directory; expected a URI such as \"file:///var/lib/weir/checkpoints\""
        );
        // Unknown keys and wrong table types.
        assert_eq!(
            c("intervall = \"1s\"\n"),
            "jobs/job.toml: checkpoint.intervall: unknown key; expected one of: interval, mode, min_pause, timeout, max_concurrent, tolerable_failures, retained, on_cancel, storage, local_dir, incremental, max_delta_chain, local_cache, s3"
        );
        assert_eq!(
            f("unaligned = true\n"),
            "jobs/job.toml: execution.checkpointing.unaligned: unknown key; expected one of: interval, mode, min-pause, timeout, max-concurrent-checkpoints, tolerable-failed-checkpoints, externalized-checkpoint-retention, incremental"
        );
        assert_eq!(
            ck_top_err("state.checkpoints.dir = \"/c\"\nstate.checkpoints.num_retained = 3\n"),
            "jobs/job.toml: state.checkpoints.num_retained: unknown key; expected one of: num-retained, dir"
        );
        assert_eq!(
            ck_top_err("state.backend = \"rocksdb\"\n"),
            "jobs/job.toml: state.backend: expected a table ([state.backend] with Flink's checkpoint options); Weir has one state backend, so only state.backend.incremental applies, found string \"rocksdb\""
        );
        assert_eq!(
            ck_top_err("state.savepoints.dir = \"/s\"\n"),
            "jobs/job.toml: state.savepoints: unknown key; expected one of: checkpoints, backend"
        );
        assert_eq!(
            ck_top_err("execution.runtime-mode = \"STREAMING\"\n"),
            "jobs/job.toml: execution.runtime-mode: unknown key; expected one of: checkpointing"
        );
        assert_eq!(
            ck_err("[checkpoint]\nstorage = \"/c\"\nexecution.checkpointing.interval = \"1s\"\n"),
            "jobs/job.toml: checkpoint.execution: unknown key; expected one of: interval, mode, min_pause, timeout, max_concurrent, tolerable_failures, retained, on_cancel, storage, local_dir, incremental, max_delta_chain, local_cache, s3"
        );
        assert_eq!(
            ck_top_err("checkpoint = \"file:///c\"\n"),
            "jobs/job.toml: checkpoint: expected a table ([checkpoint] with storage = \"file:///var/lib/weir/checkpoints\" and the other checkpoint settings), found string \"file:///c\""
        );
        assert_eq!(
            ck_top_err("execution.checkpointing = 5\n"),
            "jobs/job.toml: execution.checkpointing: expected a table ([execution.checkpointing] with Flink's checkpoint options), found integer 5"
        );
        assert_eq!(
            ck_top_err("state = []\n"),
            "jobs/job.toml: state: expected a table ([state.checkpoints] with Flink's checkpoint options), found an empty array"
        );
        assert_eq!(
            ck_top_err("checkpoints = {}\n"),
            "jobs/job.toml: checkpoints: unknown key; expected one of: name, parallelism, workers, io_cores, max_parallelism, batch_size, channel_capacity, source, transform, sink, checkpoint, restart, execution.checkpointing, state.checkpoints"
        );
    }

    #[test]
    fn checkpoint_validation_errors() {
        let c = |body: &str| ck_err(&format!("[checkpoint]\nstorage = \"/c\"\n{body}"));
        assert_eq!(
            c("interval = \"1ms\"\n"),
            "jobs/job.toml: checkpoint.interval: 1ms is too short; expected at least 10ms"
        );
        assert_eq!(
            c("timeout = \"0s\"\n"),
            "jobs/job.toml: checkpoint.timeout: 0ns is too short; expected at least 10ms"
        );
        assert_eq!(
            c("max_concurrent = 65\n"),
            "jobs/job.toml: checkpoint.max_concurrent: 65 is out of range; expected 1..=64"
        );
        assert_eq!(
            c("retained = 1001\n"),
            "jobs/job.toml: checkpoint.retained: 1001 is out of range; expected 1..=1000"
        );
        assert_eq!(
            ck_err("[checkpoint]\nstorage = \"  \"\n"),
            "jobs/job.toml: checkpoint.storage: is empty; expected a URI such as file:///var/lib/weir/checkpoints"
        );
        // The error names the key the value came from.
        assert_eq!(
            ck_top_err("execution.checkpointing.interval = 5\nstate.checkpoints.dir = \"/c\"\n"),
            "jobs/job.toml: execution.checkpointing.interval: 5ms is too short; expected at least 10ms"
        );
        assert_eq!(
            ck_top_err("state.checkpoints.num-retained = 2000\nstate.checkpoints.dir = \"/c\"\n"),
            "jobs/job.toml: state.checkpoints.num-retained: 2000 is out of range; expected 1..=1000"
        );
        assert_eq!(
            ck_top_err("state.checkpoints.dir = \"\"\n"),
            "jobs/job.toml: state.checkpoints.dir: is empty; expected a URI such as file:///var/lib/weir/checkpoints"
        );
        // Bounds are inclusive.
        assert!(ck("[checkpoint]\nstorage = \"/c\"\ninterval = \"10ms\"\ntimeout = \"10ms\"\nmax_concurrent = 64\nretained = 1000\ntolerable_failures = 4294967295\nmin_pause = \"0s\"\n").is_ok());
    }

    #[test]
    fn checkpoint_overrides() {
        let file = format!("{MIN}[checkpoint]\nstorage = \"/c\"\n");
        let job = parse_set(&file, &["checkpoint.interval=200ms"]).unwrap();
        assert_eq!(job.checkpoint.unwrap().interval, ms(200));
        // --set alone enables checkpointing.
        let job = parse_set(
            MIN,
            &[
                "checkpoint.storage=/tmp/ck",
                "checkpoint.mode=at-least-once",
                "checkpoint.retained=4",
            ],
        )
        .unwrap();
        assert_eq!(
            job.checkpoint,
            Some(CheckpointConfig {
                mode: CheckpointMode::AtLeastOnce,
                retained: 4,
                ..CheckpointConfig::new("file:///tmp/ck")
            })
        );
        // Flink names too.
        let job = parse_set(
            MIN,
            &[
                "state.checkpoints.dir=file:///ck",
                "execution.checkpointing.interval=30 s",
                "state.checkpoints.num-retained=2",
            ],
        )
        .unwrap();
        let c = job.checkpoint.unwrap();
        assert_eq!(
            (c.interval, c.retained, c.storage.as_str()),
            (Duration::from_secs(30), 2, "file:///ck")
        );
        assert_eq!(
            set_err(&file, &["checkpoint.interval=1ms"]),
            "jobs/job.toml: checkpoint.interval: 1ms is too short; expected at least 10ms (value from --set checkpoint.interval=1ms)"
        );
        assert_eq!(
            set_err(&file, &["checkpoint.mode=fast"]),
            "jobs/job.toml: checkpoint.mode: unknown checkpoint mode \"fast\"; expected one of: exactly-once, at-least-once (value from --set checkpoint.mode=fast)"
        );
        assert_eq!(
            set_err(MIN, &["checkpoint.interval=200ms"]),
            "jobs/job.toml: checkpoint.storage: missing; checkpointing needs a storage location; set checkpoint.storage or state.checkpoints.dir"
        );
        // A conflict points at the --set of either side.
        let flink = format!("execution.checkpointing.interval = \"30 s\"\n{file}");
        assert_eq!(
            set_err(&flink, &["checkpoint.interval=200ms"]),
            "jobs/job.toml: execution.checkpointing.interval: conflicts with checkpoint.interval, which sets the same setting; keep only one of the two (value from --set checkpoint.interval=200ms)"
        );
        let job = parse_set(&flink, &["execution.checkpointing.interval=200ms"]).unwrap();
        assert_eq!(job.checkpoint.unwrap().interval, ms(200));
    }

    #[test]
    fn checkpoint_relative_paths() {
        let at = |storage: &str, file: &str| {
            let text =
                format!("{MIN}[checkpoint]\nstorage = \"{storage}\"\nlocal_dir = \"local\"\n");
            parse_job(&text, Path::new(file), &[])
                .unwrap()
                .checkpoint
                .unwrap()
        };
        let c = at("ck", "/srv/jobs/sums.toml");
        assert_eq!(c.storage, "file:///srv/jobs/ck");
        assert_eq!(c.local_dir, PathBuf::from("/srv/jobs/local"));
        for (storage, uri) in [
            ("ck/", "file:///srv/jobs/ck/"),
            ("../ck", "file:///srv/jobs/../ck"),
            ("file://ck", "file:///srv/jobs/ck"),
            ("file:ck", "file:///srv/jobs/ck"),
            ("file:///var/ck", "file:///var/ck"),
            ("file:/var/ck", "file:///var/ck"),
            ("FILE:///var/ck", "file:///var/ck"),
            ("/var/ck", "file:///var/ck"),
        ] {
            assert_eq!(at(storage, "/srv/jobs/sums.toml").storage, uri, "{storage}");
        }
        let c = ck("[checkpoint]\nstorage = \"/c\"\nlocal_dir = \"/abs/local\"\n")
            .unwrap()
            .unwrap();
        assert_eq!(c.local_dir, PathBuf::from("/abs/local"));
        // A relative job file: storage is made absolute with the current
        // directory; local_dir stays relative, like the other paths.
        let cwd = std::env::current_dir().unwrap();
        let c = at("file://ck", FILE);
        assert_eq!(
            c.storage,
            format!("file://{}", cwd.join("jobs/ck").display())
        );
        assert_eq!(c.local_dir, PathBuf::from("jobs/local"));
        let c = at("ck", "sums.toml");
        assert_eq!(c.storage, format!("file://{}", cwd.join("ck").display()));
        assert_eq!(c.local_dir, PathBuf::from("local"));
        // Flink's dir is resolved the same way.
        let job = parse_job(
            &format!("state.checkpoints.dir = \"ck\"\n{MIN}"),
            Path::new("/srv/jobs/sums.toml"),
            &[],
        )
        .unwrap();
        assert_eq!(job.checkpoint.unwrap().storage, "file:///srv/jobs/ck");
    }

    // ----- robustness -----

    /// xorshift64*: a tiny deterministic generator for the garbling tests.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn garbled_input_never_panics() {
        const PIECES: &[&str] = &[
            "[",
            "]",
            "[[",
            "]]",
            "=",
            "\"",
            "'",
            "\n",
            ".",
            ",",
            "{",
            "}",
            "#",
            "\\",
            "0",
            "-1",
            "1.5",
            "inf",
            "nan",
            "true",
            "1979-05-27T07:32:00Z",
            "transform",
            "source",
            "sink",
            "type",
            "sum",
            "key_by",
            "\"sliding\"",
            "\"10s\"",
            "\"0.5ms\"",
            "é",
            "\u{0}",
            "x",
            "[[transform]]\n",
            "[source]\n",
            "fields = []\n",
            "size = \"1s\"\n",
            "\"\"\"",
            "[checkpoint]\n",
            "storage = \"ck\"\n",
            "interval = \"1s\"\n",
            "execution.checkpointing.interval = \"30 s\"\n",
            "[state.checkpoints]\n",
            "num-retained = 0\n",
        ];
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut outcomes = (0, 0);
        for round in 0..3000 {
            let mut text: Vec<char> = FULL.chars().collect();
            for _ in 0..1 + rng.below(6) {
                let at = rng.below(text.len() + 1);
                match rng.below(4) {
                    0 if at < text.len() => {
                        let n = rng.below(8).min(text.len() - at);
                        text.drain(at..at + n);
                    }
                    1 if at < text.len() => {
                        text[at] = char::from_u32(rng.below(0x80) as u32).unwrap_or('?');
                    }
                    _ => {
                        let piece = PIECES[rng.below(PIECES.len())];
                        for (i, c) in piece.chars().enumerate() {
                            text.insert(at + i, c);
                        }
                    }
                }
            }
            let text: String = if round % 10 == 0 {
                // Pure noise.
                (0..rng.below(200))
                    .map(|_| PIECES[rng.below(PIECES.len())])
                    .collect()
            } else {
                text.into_iter().collect()
            };
            let sets: Vec<String> = (0..rng.below(3))
                .map(|_| {
                    let k = [
                        "transform.1.field",
                        "source.count",
                        "a..b",
                        "transform.99",
                        "name.x",
                        "sink",
                        "checkpoint.interval",
                        "state.checkpoints.dir",
                    ];
                    let v = PIECES[rng.below(PIECES.len())];
                    if rng.below(5) == 0 {
                        k[rng.below(k.len())].to_string()
                    } else {
                        format!("{}={v}", k[rng.below(k.len())])
                    }
                })
                .collect();
            match parse_job(&text, Path::new(FILE), &sets) {
                Ok(_) => outcomes.0 += 1,
                Err(e) => {
                    assert!(!e.message.is_empty());
                    outcomes.1 += 1;
                }
            }
        }
        // The garbling should exercise both outcomes.
        assert!(outcomes.0 > 0 && outcomes.1 > 0, "{outcomes:?}");
    }

    #[test]
    fn deeply_nested_input_does_not_overflow() {
        let text = format!("name = {}{}", "[".repeat(5000), "]".repeat(5000));
        assert!(parse(&text).is_err());
        let text = format!("name = {}", "{a = ".repeat(5000));
        assert!(parse(&text).is_err());
    }

    #[test]
    fn restart_table() {
        let base = with("");
        let j = parse(&format!("{base}\n[restart]\nstrategy = \"exponential-backoff\"\nattempts = 5\ndelay = \"200ms\"\nmultiplier = 3\nmax_delay = \"10s\"\n")).unwrap();
        assert_eq!(
            j.restart,
            RestartStrategy {
                attempts: 5,
                delay: ms(200),
                exponential: true,
                multiplier: 3.0,
                max_delay: ms(10_000)
            }
        );
        assert_eq!(parse(&base).unwrap().restart, RestartStrategy::default());
        let e = err(&format!("{base}\n[restart]\nstrategy = \"sometimes\"\n"));
        assert!(
            e.contains("restart.strategy") && e.contains("fixed-delay"),
            "{e}"
        );
        let e = err(&format!("{base}\n[restart]\nmultiplier = 0.5\n"));
        assert!(
            e.contains("restart.multiplier") && e.contains("at least 1.0"),
            "{e}"
        );
        let e = err(&format!("{base}\n[restart]\ntries = 1\n"));
        assert!(
            e.contains("restart.tries") && e.contains("unknown key"),
            "{e}"
        );
    }
}
