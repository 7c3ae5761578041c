//! Event-time windows over keyed streams: tumbling and sliding, with incremental aggregates.
//!
//! A record with timestamp `ts` belongs to every window `[start, start + size)` with
//! `start <= ts < start + size` and `start` a multiple of the slide. A window fires (emits one
//! [`WindowResult`] per key) when the watermark reaches `end - 1`, and its state is dropped.
//! Records for windows that already fired are late: they are dropped and counted in
//! [`crate::NodeMetrics::late_records`].

use std::collections::BTreeMap;
use std::hash::Hash;
use std::marker::PhantomData;
use std::ops::{Add, Range};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rustc_hash::FxHashMap;

use crate::error::{BoxError, JobError};
use crate::keyed::key_group_for;
use crate::operator::{Barrier, Batch, Collector, Out};
use crate::source::TaskInfo;
use crate::state::StateData;
use crate::{Timestamp, NO_TIMESTAMP};

/// Which windows a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowAssigner {
    size_ms: i64,
    slide_ms: i64,
}

impl WindowAssigner {
    /// Fixed, non-overlapping windows of `size` (at least 1 ms).
    pub fn tumbling(size: Duration) -> Self {
        let size_ms = (size.as_millis() as i64).max(1);
        WindowAssigner {
            size_ms,
            slide_ms: size_ms,
        }
    }
    /// Windows of `size` starting every `slide` (`0 < slide <= size`; clamped into that range).
    pub fn sliding(size: Duration, slide: Duration) -> Self {
        let size_ms = (size.as_millis() as i64).max(1);
        let slide_ms = (slide.as_millis() as i64).clamp(1, size_ms);
        WindowAssigner { size_ms, slide_ms }
    }
    /// Window length in milliseconds.
    pub fn size_ms(&self) -> i64 {
        self.size_ms
    }
    /// Distance between window starts in milliseconds.
    pub fn slide_ms(&self) -> i64 {
        self.slide_ms
    }
    /// Start times of the windows containing `ts`, latest first.
    fn starts(&self, ts: Timestamp) -> impl Iterator<Item = Timestamp> {
        let last = ts - ts.rem_euclid(self.slide_ms);
        let (size, slide) = (self.size_ms, self.slide_ms);
        (0..)
            .map(move |i: i64| last - i * slide)
            .take_while(move |s| *s > ts - size)
    }
}

/// One window's result for one key.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WindowResult<K, V> {
    /// The key.
    pub key: K,
    /// Window start (inclusive), ms.
    pub start: Timestamp,
    /// Window end (exclusive), ms.
    pub end: Timestamp,
    /// The aggregate.
    pub value: V,
}

/// An incremental aggregate (Flink's `AggregateFunction`).
pub trait AggregateFunction<T>: Clone + Send + Sync + 'static {
    /// Accumulator kept per key and window (stored in checkpoints).
    type Acc: StateData;
    /// Result type.
    type Out: Clone + Send + 'static;
    /// A new, empty accumulator.
    fn create(&self) -> Self::Acc;
    /// Adds a record.
    fn add(&self, acc: &mut Self::Acc, value: &T) -> Result<(), BoxError>;
    /// The result of a window that holds at least one record.
    fn result(&self, acc: Self::Acc) -> Self::Out;
}

/// Number of records.
#[derive(Debug, Clone, Copy, Default)]
pub struct Count;

impl<T> AggregateFunction<T> for Count {
    type Acc = u64;
    type Out = u64;
    fn create(&self) -> u64 {
        0
    }
    fn add(&self, acc: &mut u64, _value: &T) -> Result<(), BoxError> {
        *acc += 1;
        Ok(())
    }
    fn result(&self, acc: u64) -> u64 {
        acc
    }
}

/// Sum of a field.
#[derive(Clone)]
pub struct Sum<F>(pub F);

impl<T, V, F> AggregateFunction<T> for Sum<F>
where
    F: Fn(&T) -> V + Clone + Send + Sync + 'static,
    V: Add<Output = V> + Default + Copy + Send + StateData,
{
    type Acc = V;
    type Out = V;
    fn create(&self) -> V {
        V::default()
    }
    fn add(&self, acc: &mut V, value: &T) -> Result<(), BoxError> {
        *acc = *acc + (self.0)(value);
        Ok(())
    }
    fn result(&self, acc: V) -> V {
        acc
    }
}

/// Minimum of a field.
#[derive(Clone)]
pub struct Min<F>(pub F);

impl<T, V, F> AggregateFunction<T> for Min<F>
where
    F: Fn(&T) -> V + Clone + Send + Sync + 'static,
    V: PartialOrd + Copy + Send + StateData,
{
    type Acc = Option<V>;
    type Out = V;
    fn create(&self) -> Option<V> {
        None
    }
    fn add(&self, acc: &mut Option<V>, value: &T) -> Result<(), BoxError> {
        let v = (self.0)(value);
        if acc.is_none_or(|a| v < a) {
            *acc = Some(v);
        }
        Ok(())
    }
    fn result(&self, acc: Option<V>) -> V {
        acc.expect("a window holds at least one record")
    }
}

/// Maximum of a field.
#[derive(Clone)]
pub struct Max<F>(pub F);

impl<T, V, F> AggregateFunction<T> for Max<F>
where
    F: Fn(&T) -> V + Clone + Send + Sync + 'static,
    V: PartialOrd + Copy + Send + StateData,
{
    type Acc = Option<V>;
    type Out = V;
    fn create(&self) -> Option<V> {
        None
    }
    fn add(&self, acc: &mut Option<V>, value: &T) -> Result<(), BoxError> {
        let v = (self.0)(value);
        if acc.is_none_or(|a| v > a) {
            *acc = Some(v);
        }
        Ok(())
    }
    fn result(&self, acc: Option<V>) -> V {
        acc.expect("a window holds at least one record")
    }
}

/// Mean of a field.
#[derive(Clone)]
pub struct Avg<F>(pub F);

impl<T, F> AggregateFunction<T> for Avg<F>
where
    F: Fn(&T) -> f64 + Clone + Send + Sync + 'static,
{
    type Acc = (f64, u64);
    type Out = f64;
    fn create(&self) -> (f64, u64) {
        (0.0, 0)
    }
    fn add(&self, acc: &mut (f64, u64), value: &T) -> Result<(), BoxError> {
        acc.0 += (self.0)(value);
        acc.1 += 1;
        Ok(())
    }
    fn result(&self, acc: (f64, u64)) -> f64 {
        acc.0 / acc.1 as f64
    }
}

/// Reduce with a function (the windowed form of `reduce`).
pub(crate) struct ReduceAgg<F>(pub(crate) Arc<F>);

impl<F> Clone for ReduceAgg<F> {
    fn clone(&self) -> Self {
        ReduceAgg(self.0.clone())
    }
}

impl<T, F> AggregateFunction<T> for ReduceAgg<F>
where
    T: Clone + Send + StateData,
    F: Fn(T, T) -> T + Send + Sync + 'static,
{
    type Acc = Option<T>;
    type Out = T;
    fn create(&self) -> Option<T> {
        None
    }
    fn add(&self, acc: &mut Option<T>, value: &T) -> Result<(), BoxError> {
        *acc = Some(match acc.take() {
            None => value.clone(),
            Some(a) => (self.0)(a, value.clone()),
        });
        Ok(())
    }
    fn result(&self, acc: Option<T>) -> T {
        acc.expect("a window holds at least one record")
    }
}

/// Per key group: window end -> (key -> accumulator).
type Panes<K, Acc> = BTreeMap<Timestamp, FxHashMap<K, (Timestamp, Acc)>>;

pub(crate) struct WindowOp<T, K, A: AggregateFunction<T>, KF: ?Sized> {
    key: Arc<KF>,
    agg: A,
    assigner: WindowAssigner,
    first: usize,
    groups: Vec<Panes<K, A::Acc>>,
    watermark: Timestamp,
    info: TaskInfo,
    out: Out<WindowResult<K, A::Out>>,
    _t: PhantomData<fn(T)>,
}

impl<T, K, A, KF> WindowOp<T, K, A, KF>
where
    K: Hash + Eq + Clone + StateData,
    A: AggregateFunction<T>,
    KF: Fn(&T) -> K + ?Sized,
{
    pub(crate) fn new(
        key: Arc<KF>,
        agg: A,
        assigner: WindowAssigner,
        range: Range<usize>,
        info: TaskInfo,
        out: Out<WindowResult<K, A::Out>>,
    ) -> Result<Self, JobError> {
        let groups = match info.restored_section("state") {
            Some(bytes) => {
                let (first, groups): (u32, Vec<Panes<K, A::Acc>>) = postcard::from_bytes(bytes)
                    .map_err(|e| {
                        JobError::Restore(format!(
                            "operator `{}` subtask {}: cannot decode window state: {e}",
                            info.operator, info.subtask
                        ))
                    })?;
                if first as usize != range.start || groups.len() != range.len() {
                    return Err(JobError::Restore(format!(
                        "operator `{}` subtask {}: window state covers other key groups",
                        info.operator, info.subtask
                    )));
                }
                groups
            }
            None => range.clone().map(|_| BTreeMap::new()).collect(),
        };
        Ok(WindowOp {
            key,
            agg,
            assigner,
            first: range.start,
            groups,
            watermark: NO_TIMESTAMP,
            info,
            out,
            _t: PhantomData,
        })
    }
}

impl<T, K, A, KF> Collector<T> for WindowOp<T, K, A, KF>
where
    K: Hash + Eq + Clone + StateData,
    A: AggregateFunction<T>,
    KF: Fn(&T) -> K + ?Sized,
{
    fn batch(&mut self, batch: Batch<T>) -> Result<(), JobError> {
        let max_p = self.info.max_parallelism;
        let mut late = 0u64;
        for (ts, r) in batch {
            if ts == NO_TIMESTAMP {
                return Err(JobError::operator(
                    &self.info,
                    "record without an event timestamp reached an event-time window; assign timestamps first (with_timestamps)",
                ));
            }
            let k = (self.key)(&r);
            let kg = key_group_for(&k, max_p) as usize;
            let panes = &mut self.groups[kg - self.first];
            for start in self.assigner.starts(ts) {
                let end = start.saturating_add(self.assigner.size_ms);
                if end - 1 <= self.watermark {
                    late += 1;
                    continue;
                }
                let pane = panes.entry(end).or_default();
                let acc = match pane.get_mut(&k) {
                    Some(a) => a,
                    None => pane
                        .entry(k.clone())
                        .or_insert_with(|| (start, self.agg.create())),
                };
                self.agg
                    .add(&mut acc.1, &r)
                    .map_err(|e| JobError::from_user(&self.info, e))?;
            }
        }
        if late > 0 {
            self.info
                .metrics
                .late_records
                .fetch_add(late, Ordering::Relaxed);
        }
        Ok(())
    }

    fn watermark(&mut self, wm: Timestamp) -> Result<(), JobError> {
        self.watermark = wm;
        let mut out = Vec::new();
        for panes in &mut self.groups {
            while let Some(entry) = panes.first_entry() {
                let end = *entry.key();
                if end - 1 > wm {
                    break;
                }
                for (key, (start, acc)) in entry.remove() {
                    let value = self.agg.result(acc);
                    out.push((
                        end - 1,
                        WindowResult {
                            key,
                            start,
                            end,
                            value,
                        },
                    ));
                }
            }
        }
        if !out.is_empty() {
            self.out.batch(out)?;
        }
        self.out.watermark(wm)
    }

    fn idle(&mut self, idle: bool) -> Result<(), JobError> {
        self.out.idle(idle)
    }
    fn finish(&mut self) -> Result<(), JobError> {
        let late = self.info.metrics.late_records.load(Ordering::Relaxed);
        if late > 0 && self.info.subtask == 0 {
            tracing::warn!(operator = %self.info.operator, late_records = late, "dropped records that arrived after their window fired");
        }
        self.out.finish()
    }

    fn barrier(&mut self, b: &mut Barrier<'_>) -> Result<(), JobError> {
        let bytes = postcard::to_stdvec(&(self.first as u32, &self.groups)).map_err(|e| {
            JobError::operator(&self.info, format!("cannot encode window state: {e}"))
        })?;
        b.sections.push((
            self.info.section_name("state"),
            crate::operator::Section::Bytes(bytes),
        ));
        self.out.barrier(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tumbling_assigns_one_window() {
        let w = WindowAssigner::tumbling(Duration::from_millis(10));
        assert_eq!(w.starts(0).collect::<Vec<_>>(), vec![0]);
        assert_eq!(w.starts(9).collect::<Vec<_>>(), vec![0]);
        assert_eq!(w.starts(10).collect::<Vec<_>>(), vec![10]);
        assert_eq!(w.starts(-1).collect::<Vec<_>>(), vec![-10]);
    }

    #[test]
    fn sliding_assigns_size_over_slide_windows() {
        let w = WindowAssigner::sliding(Duration::from_millis(10), Duration::from_millis(5));
        assert_eq!(w.starts(12).collect::<Vec<_>>(), vec![10, 5]);
        let w = WindowAssigner::sliding(Duration::from_millis(10), Duration::from_millis(3));
        // windows [12,22) [9,19) [6,16) [3,13) contain 12; [0,10) does not.
        assert_eq!(w.starts(12).collect::<Vec<_>>(), vec![12, 9, 6, 3]);
    }
}
