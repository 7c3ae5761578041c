//! Deterministic generator source: record `i` is a pure function of `i` (and a seed), so every
//! run produces the same records; optional rate limit; bounded or unbounded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use serde_json::Value;
use weir_runtime::{BoxError, SourcePoll, SourceReader, TaskInfo, NO_TIMESTAMP};

use super::JsonRecord;

/// Generates `f(i)` for `i = 0, 1, ..` (up to `count`), split among subtasks: subtask `s` of
/// `p` produces the indices `i` with `i % p == s`.
pub struct Generator<F> {
    f: Arc<F>,
    count: Option<u64>,
    /// Records per second over all subtasks.
    rate: Option<f64>,
    /// See [`Generator::max_drift`].
    align: Option<Align>,
}

/// The next index of every subtask of a source (`u64::MAX` once exhausted).
type Positions = Arc<[AtomicU64]>;

/// The subtasks' positions, per source (operator name), for [`Generator::max_drift`].
#[derive(Clone)]
struct Align {
    max_drift: u64,
    sources: Arc<Mutex<HashMap<Arc<str>, Positions>>>,
}

impl<F> Clone for Generator<F> {
    fn clone(&self) -> Self {
        Generator {
            f: self.f.clone(),
            count: self.count,
            rate: self.rate,
            align: self.align.clone(),
        }
    }
}

impl<F> Generator<F> {
    /// An unbounded, unthrottled generator.
    pub fn new<T>(f: F) -> Self
    where
        F: Fn(u64) -> T + Send + Sync + 'static,
    {
        Generator {
            f: Arc::new(f),
            count: None,
            rate: None,
            align: None,
        }
    }
    /// Ends after `count` records (over all subtasks).
    pub fn count(mut self, count: u64) -> Self {
        self.count = Some(count);
        self
    }
    /// Limits the rate to `per_second` records per second over all subtasks.
    pub fn rate(mut self, per_second: f64) -> Self {
        self.rate = Some(per_second);
        self
    }
    /// Keeps the subtasks of a source within `records` indices of each other: a subtask
    /// that is further ahead of the slowest one waits (its poll is idle) until that one
    /// catches up, and an exhausted subtask holds no one back. Flink's watermark alignment
    /// for a source whose event time grows with the index: without it, a subtask that runs
    /// ahead (its worker less loaded) makes downstream state that waits for the others'
    /// records grow, such as a join's side waiting for its match (Nexmark's bids waiting
    /// for their auction), which every checkpoint then writes.
    pub fn max_drift(mut self, records: u64) -> Self {
        self.align = Some(Align {
            max_drift: records,
            sources: Arc::default(),
        });
        self
    }
    /// A reader for one subtask; pass this to `StreamEnv::source`.
    pub fn reader(&self, info: &TaskInfo) -> Result<GeneratorReader<F>, BoxError> {
        if let Some(r) = self.rate {
            if !(r.is_finite() && r > 0.0) {
                return Err(format!("generator rate {r} is invalid; expected a positive number of records per second").into());
            }
        }
        let next = match info.restored_state() {
            Some(bytes) => {
                let v: serde_json::Value = serde_json::from_slice(bytes)
                    .map_err(|e| format!("damaged generator position in checkpoint: {e}"))?;
                v.get("next")
                    .and_then(Value::as_u64)
                    .filter(|n| n % info.parallelism as u64 == info.subtask as u64)
                    .ok_or("damaged generator position in checkpoint: expected {\"next\": <index of this subtask>}")?
            }
            None => info.subtask as u64,
        };
        let align = self.align.as_ref().map(|a| {
            let positions = a
                .sources
                .lock()
                .entry(info.operator.clone())
                .or_insert_with(|| (0..info.parallelism).map(|_| AtomicU64::new(0)).collect())
                .clone();
            positions[info.subtask].store(next, Ordering::Relaxed);
            Aligned {
                max_drift: a.max_drift,
                positions,
                subtask: info.subtask,
            }
        });
        Ok(GeneratorReader {
            f: self.f.clone(),
            next,
            step: info.parallelism as u64,
            end: self.count,
            rate: self.rate.map(|r| r / info.parallelism as f64),
            started: Instant::now(),
            produced: 0,
            align,
        })
    }
}

/// A reader's share of [`Generator::max_drift`].
struct Aligned {
    max_drift: u64,
    positions: Positions,
    subtask: usize,
}

/// How long a subtask that ran ahead waits before it looks at the others' positions again.
const DRIFT_WAIT: Duration = Duration::from_millis(1);

/// One subtask's generator.
pub struct GeneratorReader<F> {
    f: Arc<F>,
    next: u64,
    step: u64,
    end: Option<u64>,
    rate: Option<f64>,
    started: Instant,
    produced: u64,
    align: Option<Aligned>,
}

impl<F> GeneratorReader<F> {
    /// Index of the next record this subtask generates (its read position).
    pub fn position(&self) -> u64 {
        self.next
    }
}

impl<T, F: Fn(u64) -> T> SourceReader<T> for GeneratorReader<F> {
    fn snapshot(&mut self, _checkpoint: u64) -> Result<Vec<u8>, BoxError> {
        Ok(serde_json::to_vec(
            &serde_json::json!({ "next": self.next }),
        )?)
    }

    fn poll(&mut self, out: &mut Vec<(i64, T)>, max: usize) -> Result<SourcePoll, BoxError> {
        let mut budget = max as u64;
        if let Some(rate) = self.rate {
            let allowed = (self.started.elapsed().as_secs_f64() * rate) as u64;
            let available = allowed.saturating_sub(self.produced);
            if available == 0 {
                let next_at =
                    self.started + Duration::from_secs_f64((self.produced + 1) as f64 / rate);
                return Ok(SourcePoll::Idle(Some(next_at)));
            }
            budget = budget.min(available);
        }
        if let Some(a) = &self.align {
            a.positions[a.subtask].store(self.next, Ordering::Relaxed);
            let slowest = a
                .positions
                .iter()
                .map(|p| p.load(Ordering::Relaxed))
                .min()
                .expect("a source has at least one subtask");
            let limit = slowest.saturating_add(a.max_drift);
            if self.next > limit {
                return Ok(SourcePoll::Idle(Some(Instant::now() + DRIFT_WAIT)));
            }
            budget = budget.min((limit - self.next) / self.step + 1);
        }
        let f = &*self.f;
        for _ in 0..budget {
            if self.end.is_some_and(|e| self.next >= e) {
                break;
            }
            out.push((NO_TIMESTAMP, f(self.next)));
            self.next += self.step;
            self.produced += 1;
        }
        if self.end.is_some_and(|e| self.next >= e) {
            if let Some(a) = &self.align {
                a.positions[a.subtask].store(u64::MAX, Ordering::Relaxed);
            }
            return Ok(SourcePoll::Exhausted);
        }
        Ok(SourcePoll::Ready)
    }
}

/// splitmix64: a fast, well-mixed pure function of its input.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The job-file generator: record `i` is
/// `{"id": i, "key": "key-<k>", "value": <0..100>, "ts": i * ts_step_ms}` where `k` and the
/// value are drawn from a hash of `(seed, i)`, `k < keys`.
pub fn json_generator(
    seed: u64,
    keys: u64,
    ts_step_ms: u64,
) -> impl Fn(u64) -> JsonRecord + Send + Sync + 'static {
    let keys = keys.max(1);
    move |i| {
        let h = mix(seed ^ mix(i));
        let mut m = JsonRecord::new();
        m.insert("id".into(), Value::from(i));
        m.insert("key".into(), Value::from(format!("key-{}", h % keys)));
        m.insert("value".into(), Value::from((h >> 32) % 100));
        m.insert("ts".into(), Value::from(i.saturating_mul(ts_step_ms)));
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_generator_is_deterministic_and_seeded() {
        let a = json_generator(1, 10, 5);
        let b = json_generator(1, 10, 5);
        let c = json_generator(2, 10, 5);
        assert_eq!(a(42), b(42));
        assert_ne!(
            (0..20).map(&a).collect::<Vec<_>>(),
            (0..20).map(&c).collect::<Vec<_>>()
        );
        assert_eq!(a(3)["ts"], Value::from(15));
        for i in 0..1000 {
            let r = a(i);
            let k = r["key"].as_str().unwrap();
            assert!(k.strip_prefix("key-").unwrap().parse::<u64>().unwrap() < 10);
            assert!(r["value"].as_u64().unwrap() < 100);
        }
    }
}

#[cfg(test)]
mod rate_tests {
    use super::*;
    use weir_runtime::SourceReader;

    /// The generator never runs ahead of its rate: after `t` seconds at most `rate * t` (+1)
    /// records were produced, and it does produce once time passes.
    #[test]
    fn rate_limit_is_never_exceeded() {
        let g = Generator::new(|i| i).rate(2000.0).count(1_000_000);
        let mut r = GeneratorReader {
            f: g.f.clone(),
            next: 0,
            step: 1,
            end: g.count,
            rate: g.rate,
            started: Instant::now(),
            produced: 0,
            align: None,
        };
        let mut out = Vec::new();
        let t0 = r.started;
        let mut idle_seen = false;
        while t0.elapsed() < Duration::from_millis(300) {
            match r.poll(&mut out, 64).unwrap() {
                SourcePoll::Idle(Some(at)) => {
                    idle_seen = true;
                    assert!(at > Instant::now() - Duration::from_millis(1));
                    std::thread::sleep(Duration::from_millis(5));
                }
                SourcePoll::Ready => {}
                other => panic!("unexpected {other:?}"),
            }
            let allowed = (t0.elapsed().as_secs_f64() * 2000.0) as usize + 1;
            assert!(
                out.len() <= allowed,
                "{} records after {:?}",
                out.len(),
                t0.elapsed()
            );
        }
        assert!(idle_seen);
        assert!(
            out.len() >= 100,
            "only {} records in 300 ms at 2000/s",
            out.len()
        );
        let ids: Vec<u64> = out.iter().map(|(_, i)| *i).collect();
        assert_eq!(ids, (0..ids.len() as u64).collect::<Vec<_>>());
    }
}

#[cfg(test)]
mod drift_tests {
    use super::*;
    use weir_runtime::SourceReader;

    type Reader = GeneratorReader<fn(u64) -> u64>;

    /// Readers of subtasks `0..p` sharing positions, as `Generator::reader` makes them.
    fn readers(p: usize, count: u64, max_drift: u64) -> Vec<Reader> {
        let positions: Positions = (0..p).map(|_| AtomicU64::new(0)).collect();
        (0..p)
            .map(|s| GeneratorReader {
                f: Arc::new((|i| i) as fn(u64) -> u64),
                next: s as u64,
                step: p as u64,
                end: Some(count),
                rate: None,
                started: Instant::now(),
                produced: 0,
                align: Some(Aligned {
                    max_drift,
                    positions: positions.clone(),
                    subtask: s,
                }),
            })
            .collect()
    }

    /// A subtask runs at most `max_drift` indices (plus one record) ahead of the slowest,
    /// waits while it would be further ahead, goes on once the slowest caught up, and one
    /// that is exhausted holds no one back.
    #[test]
    fn subtasks_stay_within_the_drift_and_an_exhausted_one_holds_none_back() {
        let mut r = readers(3, 3000, 100);
        let mut out = Vec::new();
        // Subtask 2 never polled: 0 and 1 run ahead until they are 100 indices past it.
        for _ in 0..50 {
            for reader in &mut r[..2] {
                reader.poll(&mut out, 16).unwrap();
            }
        }
        assert!(r[0].next > 100 && r[0].next <= 2 + 100 + 3, "{}", r[0].next);
        assert!(r[1].next > 100 && r[1].next <= 2 + 100 + 3, "{}", r[1].next);
        assert!(matches!(
            r[0].poll(&mut out, 16).unwrap(),
            SourcePoll::Idle(Some(_))
        ));
        let before = out.len();
        // Subtask 2 catches up a little: the others may go on by as much.
        r[2].poll(&mut out, 10).unwrap();
        assert_eq!(out.len(), before + 10);
        assert!(matches!(
            r[0].poll(&mut out, 16).unwrap(),
            SourcePoll::Ready
        ));
        assert!(r[0].next <= r[2].next + 100 + 3);
        // Subtask 2 runs to its end; then 0 and 1 run to theirs, never waiting.
        while !matches!(r[2].poll(&mut out, 64).unwrap(), SourcePoll::Exhausted) {
            for reader in &mut r[..2] {
                reader.poll(&mut out, 64).unwrap();
            }
        }
        for (s, reader) in r[..2].iter_mut().enumerate() {
            loop {
                match reader.poll(&mut out, 64).unwrap() {
                    SourcePoll::Exhausted => break,
                    SourcePoll::Ready => {}
                    other => panic!("subtask {s}: {other:?} after the slowest finished"),
                }
            }
        }
        let mut ids: Vec<u64> = out.iter().map(|(_, i)| *i).collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..3000).collect::<Vec<_>>());
    }
}
