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

use crate::error::{BoxError, JobError};
use crate::keyed::{key_group_for, restored_groups};
use crate::operator::{Barrier, Batch, Collector, Out};
use crate::source::TaskInfo;
use crate::state::{check_covers, Incremental, KeyGroups, StateData};
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

/// The key of a window's accumulator: (window end, key).
type PaneKey<K> = (Timestamp, K);

/// A window operator instance. Accumulators live in a keyed table (the same as keyed state:
/// one map per key group, copy-on-write snapshots encoded off the worker, incremental
/// checkpoints) under `(window end, key)`, with `(window start, accumulator)` as value. Beside
/// it, per key group, the keys of each open window by end, to fire windows in order without
/// scanning the table; this index is not checkpointed but rebuilt from the table on restore.
pub(crate) struct WindowOp<T, K, A: AggregateFunction<T>, KF: ?Sized> {
    key: Arc<KF>,
    agg: A,
    assigner: WindowAssigner,
    first: usize,
    table: KeyGroups<PaneKey<K>, (Timestamp, A::Acc)>,
    /// Per key group: window end -> the keys with an accumulator in that window.
    open: Vec<BTreeMap<Timestamp, Vec<K>>>,
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
        let legacy = info.restore.as_ref().is_some_and(|r| r.format_version < 3);
        let table: KeyGroups<PaneKey<K>, (Timestamp, A::Acc)> = match info.restored_section("state")
        {
            Some(bytes) if legacy => legacy_panes(bytes, range.clone(), info.incremental.clone())
                .map_err(|e| {
                JobError::Restore(format!(
                    "operator `{}` subtask {}: {e}",
                    info.operator, info.subtask
                ))
            })?,
            _ => restored_groups(&info)?,
        };
        let mut open: Vec<BTreeMap<Timestamp, Vec<K>>> =
            range.clone().map(|_| BTreeMap::new()).collect();
        for kg in range.clone() {
            for (end, k) in table.keys(kg) {
                open[kg - range.start]
                    .entry(*end)
                    .or_default()
                    .push(k.clone());
            }
        }
        Ok(WindowOp {
            key,
            agg,
            assigner,
            first: range.start,
            table,
            open,
            watermark: NO_TIMESTAMP,
            info,
            out,
            _t: PhantomData,
        })
    }
}

/// Per key group: window end -> (key -> (window start, accumulator)): the window state of
/// checkpoint format versions 1 and 2.
type Panes<K, Acc> = BTreeMap<Timestamp, rustc_hash::FxHashMap<K, (Timestamp, Acc)>>;

/// Reads the window state of a checkpoint of format version 1 or 2 (the panes of each key
/// group, encoded whole at the barrier) into a table. The table has no chains: the next
/// checkpoint writes it in full.
fn legacy_panes<K: StateData + Hash + Eq, Acc: StateData>(
    bytes: &[u8],
    range: Range<usize>,
    inc: Option<Arc<Incremental>>,
) -> Result<KeyGroups<PaneKey<K>, (Timestamp, Acc)>, String> {
    let (first, groups): (u32, Vec<Panes<K, Acc>>) =
        postcard::from_bytes(bytes).map_err(|e| format!("cannot decode window state: {e}"))?;
    check_covers("window state", first, groups.len(), &range)?;
    let mut table = KeyGroups::new(range.clone(), inc);
    for (kg, panes) in range.zip(groups) {
        for (end, pane) in panes {
            for (k, acc) in pane {
                table.insert(kg, (end, k), acc);
            }
        }
    }
    Ok(table)
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
            for start in self.assigner.starts(ts) {
                let end = start.saturating_add(self.assigner.size_ms);
                if end - 1 <= self.watermark {
                    late += 1;
                    continue;
                }
                let at = (end, k.clone());
                if let Some(acc) = self.table.get_mut(kg, &at) {
                    self.agg
                        .add(&mut acc.1, &r)
                        .map_err(|e| JobError::from_user(&self.info, e))?;
                    continue;
                }
                let mut acc = self.agg.create();
                self.agg
                    .add(&mut acc, &r)
                    .map_err(|e| JobError::from_user(&self.info, e))?;
                self.table.insert(kg, at, (start, acc));
                self.open[kg - self.first]
                    .entry(end)
                    .or_default()
                    .push(k.clone());
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
        for (i, open) in self.open.iter_mut().enumerate() {
            let kg = self.first + i;
            while let Some(entry) = open.first_entry() {
                let end = *entry.key();
                if end - 1 > wm {
                    break;
                }
                for key in entry.remove() {
                    let at = (end, key);
                    let (start, acc) = self
                        .table
                        .remove(kg, &at)
                        .expect("every key of an open window has an accumulator");
                    let value = self.agg.result(acc);
                    out.push((
                        end - 1,
                        WindowResult {
                            key: at.1,
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
        // As keyed state: captured in O(key groups), encoded by the snapshot writer.
        let snap = self.table.snapshot(b.id);
        b.refs.extend(snap.refs);
        b.sections.push((
            self.info.section_name("state"),
            crate::operator::Section::Deferred(snap.encode),
        ));
        self.out.barrier(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The panes of a checkpoint of format version 1 or 2 become a table with the same
    /// accumulators; damaged bytes and other key groups are errors.
    #[test]
    fn window_state_of_format_version_2_is_read_into_a_table() {
        let mut groups: Vec<Panes<u32, u64>> = vec![BTreeMap::new(), BTreeMap::new()];
        groups[0].entry(20).or_default().insert(7, (10, 3));
        groups[0].entry(30).or_default().insert(7, (20, 1));
        groups[1].entry(20).or_default().insert(9, (10, 5));
        let bytes = postcard::to_stdvec(&(4u32, &groups)).unwrap();
        let t = legacy_panes::<u32, u64>(&bytes, 4..6, None).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t.get(4, &(20, 7)), Some(&(10, 3)));
        assert_eq!(t.get(4, &(30, 7)), Some(&(20, 1)));
        assert_eq!(t.get(5, &(20, 9)), Some(&(10, 5)));
        let e = legacy_panes::<u32, u64>(&bytes, 0..2, None).err().unwrap();
        assert!(e.contains("covers key groups 4..6"), "{e}");
        let e = legacy_panes::<u32, u64>(&bytes[..bytes.len() - 1], 4..6, None)
            .err()
            .unwrap();
        assert!(e.contains("cannot decode window state"), "{e}");
    }

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
