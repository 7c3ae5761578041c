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
use crate::keyed::{key_group_for, restored_groups, restored_table};
use crate::operator::{Barrier, Batch, Collector, Out, Section};
use crate::source::TaskInfo;
use crate::state::{check_covers, Incremental, KeyGroups, StateData};
use crate::{Timestamp, MAX_WATERMARK, NO_TIMESTAMP};

/// The largest event time (and its negation the smallest) an event-time window accepts, and
/// the longest window size: 2^60 ms, about 36 million years from 1970. Window arithmetic
/// (`ts - size`, a window's end plus a slide) then never leaves `i64`; a record outside is an
/// error naming its time.
pub const MAX_WINDOW_TIME: Timestamp = 1 << 60;

/// Watermarks at or beyond this fire every window there can be (ends are at most
/// `MAX_WINDOW_TIME` plus a size), so firing clamps them here and its arithmetic stays in
/// range.
const FIRE_ALL: Timestamp = 1 << 62;

/// Whether event time `t` is one windows accept (within ±[`MAX_WINDOW_TIME`]).
fn in_window_range(t: Timestamp) -> bool {
    (-MAX_WINDOW_TIME..=MAX_WINDOW_TIME).contains(&t)
}

/// A duration in whole milliseconds, within 1 ms ..= [`MAX_WINDOW_TIME`].
fn window_ms(d: Duration) -> i64 {
    d.as_millis().clamp(1, MAX_WINDOW_TIME as u128) as i64
}

/// Which windows a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowAssigner {
    size_ms: i64,
    slide_ms: i64,
}

impl WindowAssigner {
    /// Fixed, non-overlapping windows of `size` (at least 1 ms).
    pub fn tumbling(size: Duration) -> Self {
        let size_ms = window_ms(size);
        WindowAssigner {
            size_ms,
            slide_ms: size_ms,
        }
    }
    /// Windows of `size` starting every `slide` (`0 < slide <= size`; clamped into that range).
    pub fn sliding(size: Duration, slide: Duration) -> Self {
        let size_ms = window_ms(size);
        let slide_ms = window_ms(slide).min(size_ms);
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
    /// Whether [`merge`](Self::merge) combines accumulators (default: no). The operator of a
    /// sliding window over a mergeable aggregate keeps one accumulator per *slice* of event
    /// time (the greatest common divisor of size and slide) instead of one per window: a
    /// record updates one accumulator instead of `size / slide`, checkpoints write that many
    /// times fewer, and a window merges its slices when it fires (Flink SQL's window slicing).
    fn mergeable(&self) -> bool {
        false
    }
    /// Merges `other` into `acc`, which then holds the records of both (`other`'s records
    /// come after `acc`'s in event time). Called only when [`mergeable`](Self::mergeable).
    fn merge(&self, acc: &mut Self::Acc, other: &Self::Acc) -> Result<(), BoxError> {
        let _ = (acc, other);
        Err("this aggregate function cannot merge accumulators".into())
    }
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
    fn mergeable(&self) -> bool {
        true
    }
    fn merge(&self, acc: &mut u64, other: &u64) -> Result<(), BoxError> {
        *acc += other;
        Ok(())
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
    fn mergeable(&self) -> bool {
        true
    }
    fn merge(&self, acc: &mut V, other: &V) -> Result<(), BoxError> {
        *acc = *acc + *other;
        Ok(())
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
    fn mergeable(&self) -> bool {
        true
    }
    fn merge(&self, acc: &mut Option<V>, other: &Option<V>) -> Result<(), BoxError> {
        if let Some(v) = *other {
            if acc.is_none_or(|a| v < a) {
                *acc = Some(v);
            }
        }
        Ok(())
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
    fn mergeable(&self) -> bool {
        true
    }
    fn merge(&self, acc: &mut Option<V>, other: &Option<V>) -> Result<(), BoxError> {
        if let Some(v) = *other {
            if acc.is_none_or(|a| v > a) {
                *acc = Some(v);
            }
        }
        Ok(())
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
    fn mergeable(&self) -> bool {
        true
    }
    fn merge(&self, acc: &mut (f64, u64), other: &(f64, u64)) -> Result<(), BoxError> {
        acc.0 += other.0;
        acc.1 += other.1;
        Ok(())
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
    // Not mergeable: `f` is applied in arrival order, one accumulator per window, as Flink's
    // window reduce does; it need not be associative or commutative.
}

/// The key of an accumulator: (end of its window or slice, key).
type PaneKey<K> = (Timestamp, K);

/// Accumulators under `(end, key)`, with the start of their window or slice as value.
type PaneTable<K, Acc> = KeyGroups<PaneKey<K>, (Timestamp, Acc)>;

/// Per key group: end -> the keys with an accumulator ending there. Not checkpointed: rebuilt
/// from the table on restore.
type OpenIndex<K> = Vec<BTreeMap<Timestamp, Vec<K>>>;

/// A table of accumulators with its open index.
type Indexed<K, Acc> = (PaneTable<K, Acc>, OpenIndex<K>);

/// What a window operator instance stores beside its accumulators (section `window`, from
/// checkpoint format 5 on; postcard).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
struct WindowMeta {
    /// The time range of one accumulator, ms: the slice length when windows are sliced, the
    /// window size otherwise.
    pane_ms: i64,
    /// The watermark the instance had reached: every window with `end - 1 <= watermark` has
    /// fired, and records only for such windows are late.
    watermark: Timestamp,
    /// Whether section `legacy` holds whole-window accumulators, restored from a checkpoint
    /// of format 4 or earlier, whose windows have not fired yet.
    legacy: bool,
}

/// Written after [`WindowMeta`] in the same section: the windows' size and slide in ms, so
/// that a restore refuses changed windows even where the slice length is the same (10 s
/// every 4 s and 10 s every 2 s both slice by 2 s). Optional when reading: the first
/// checkpoints of format 5 ended the section after `WindowMeta`.
type WindowShape = (i64, i64);

/// A window operator instance. Accumulators live in a keyed table (the same as keyed state:
/// one map per key group, copy-on-write snapshots encoded off the worker, incremental
/// checkpoints) under `(end, key)`, with `(start, accumulator)` as value: one per window, or,
/// for sliding windows of a mergeable aggregate, one per slice (`pane_ms`, the greatest common
/// divisor of size and slide), merged when a window fires. Beside the table, per key group,
/// the keys of each open window or slice by end, to fire windows in order without scanning
/// the table; this index is not checkpointed but rebuilt from the table on restore.
pub(crate) struct WindowOp<T, K, A: AggregateFunction<T>, KF: ?Sized> {
    key: Arc<KF>,
    agg: A,
    assigner: WindowAssigner,
    /// Accumulators are per slice of this length (merged when a window fires).
    sliced: bool,
    /// Length of an accumulator's time range: the slice, or the window size.
    pane_ms: i64,
    first: usize,
    table: PaneTable<K, A::Acc>,
    open: OpenIndex<K>,
    /// Whole-window accumulators restored from a checkpoint of format 4 or earlier into a
    /// sliced operator: each fires merged with its window's slices. Gone once they all fired
    /// (after one window size of event time).
    legacy: Option<Indexed<K, A::Acc>>,
    /// Merged accumulators of the window being fired (reused).
    merged: rustc_hash::FxHashMap<K, A::Acc>,
    watermark: Timestamp,
    info: TaskInfo,
    out: Out<WindowResult<K, A::Out>>,
    _t: PhantomData<fn(T)>,
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The open index of `table` over key groups `range`.
fn open_index<K: StateData + Hash + Eq, V: StateData>(
    table: &KeyGroups<PaneKey<K>, V>,
    range: Range<usize>,
) -> OpenIndex<K> {
    range
        .map(|kg| {
            let mut open: BTreeMap<Timestamp, Vec<K>> = BTreeMap::new();
            for (end, k) in table.keys(kg) {
                open.entry(*end).or_default().push(k.clone());
            }
            open
        })
        .collect()
}

/// Decodes a `window` section: [`WindowMeta`], then (optionally) the [`WindowShape`], then
/// nothing.
fn decode_meta(bytes: &[u8]) -> Result<(WindowMeta, Option<WindowShape>), String> {
    let (meta, rest) = postcard::take_from_bytes::<WindowMeta>(bytes).map_err(|e| e.to_string())?;
    if rest.is_empty() {
        return Ok((meta, None));
    }
    let (shape, rest) =
        postcard::take_from_bytes::<WindowShape>(rest).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} bytes left over", rest.len()));
    }
    Ok((meta, Some(shape)))
}

/// The first accumulator of `table` (as `[start, end)`) that is not `len` ms long, starting
/// on a multiple of `align` and overlapping the event times windows accept: one a window
/// operator with those panes can never have written, and would never fire in order.
fn misfit_pane<K: StateData + Hash + Eq, Acc: StateData>(
    table: &PaneTable<K, Acc>,
    range: Range<usize>,
    len: i64,
    align: i64,
) -> Option<(Timestamp, Timestamp)> {
    range.into_iter().find_map(|kg| {
        table.live(kg).find_map(|(&(end, _), &(start, _))| {
            // Overlapping the accepted event times: a record at -2^60 opens a pane that
            // starts before it.
            let fits = end.checked_sub(start) == Some(len)
                && start.rem_euclid(align) == 0
                && end > -MAX_WINDOW_TIME
                && start <= MAX_WINDOW_TIME;
            (!fits).then_some((start, end))
        })
    })
}

/// Checks that the whole-window accumulators restored from a checkpoint of format 4 or
/// earlier are windows of `assigner` (`end - start = size`, starts on a multiple of the
/// slide, within the event times windows accept): windows of another size or slide would
/// never fire in this job's order.
fn check_whole_windows<K: StateData + Hash + Eq, Acc: StateData>(
    table: &PaneTable<K, Acc>,
    range: Range<usize>,
    assigner: WindowAssigner,
) -> Result<(), String> {
    let (size, slide) = (assigner.size_ms, assigner.slide_ms);
    match misfit_pane(table, range, size, slide) {
        None => Ok(()),
        Some((start, end)) => Err(format!(
            "the checkpoint holds a window [{start}, {end}), which is not one of this \
             job's windows ({size} ms every {slide} ms): restore with the window size \
             and slide the checkpoint was taken with"
        )),
    }
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
        let sliced = assigner.slide_ms < assigner.size_ms && agg.mergeable();
        let pane_ms = if sliced {
            gcd(assigner.size_ms, assigner.slide_ms)
        } else {
            assigner.size_ms
        };
        let fail = |e: String| {
            JobError::Restore(format!(
                "operator `{}` subtask {}: {e}",
                info.operator, info.subtask
            ))
        };
        let legacy_format = info.restore.as_ref().is_some_and(|r| r.format_version < 3);
        let table: PaneTable<K, A::Acc> = match info.restored_section("state") {
            Some(bytes) if legacy_format => {
                legacy_panes(bytes, range.clone(), info.incremental.clone()).map_err(fail)?
            }
            _ => restored_groups(&info)?,
        };
        let meta = match info.restored_section("window") {
            Some(bytes) => Some(decode_meta(bytes).map_err(|e| {
                fail(format!(
                    "cannot decode window section (expected slice length, watermark, \
                     legacy flag, then window size and slide, as written by checkpoint \
                     format 5): {e}"
                ))
            })?),
            None => None,
        };
        let mut watermark = NO_TIMESTAMP;
        let (table, legacy) = match meta {
            Some((m, shape)) => {
                let ours = (assigner.size_ms, assigner.slide_ms);
                if let Some((size, slide)) = shape.filter(|s| *s != ours) {
                    return Err(fail(format!(
                        "the checkpoint holds windows of {size} ms every {slide} ms, but this \
                         job's are {} ms every {} ms: restore with the window size and slide \
                         the checkpoint was taken with",
                        ours.0, ours.1
                    )));
                }
                let slices = gcd(assigner.size_ms, assigner.slide_ms);
                if m.pane_ms != pane_ms && !sliced && shape.is_none() && m.pane_ms == slices {
                    // Same windows, but sliced when written: `reduce` was sliced in the
                    // first checkpoints of format 5 and keeps one accumulator per window now.
                    return Err(fail(format!(
                        "the checkpoint holds slices of {} ms, written by a build that sliced \
                         this aggregate (window `reduce`); this build keeps one accumulator per \
                         window for it and cannot restore slices: restore with the build that \
                         wrote the checkpoint, or start without --restore",
                        m.pane_ms
                    )));
                }
                if m.pane_ms != pane_ms {
                    return Err(fail(format!(
                        "the checkpoint holds accumulators of {} ms each, but this job's windows \
                         (size {} ms, slide {} ms) need {pane_ms} ms: restore with the window size \
                         and slide the checkpoint was taken with",
                        m.pane_ms, assigner.size_ms, assigner.slide_ms
                    )));
                }
                watermark = m.watermark;
                let legacy = if m.legacy {
                    if info.restored_section("legacy").is_none() {
                        return Err(fail(
                            "the window section says a `legacy` section follows, but the \
                             checkpoint has none"
                                .into(),
                        ));
                    }
                    Some(restored_table(&info, "legacy")?)
                } else {
                    None
                };
                // Accumulators this job could not have written (a damaged checkpoint whose
                // checksums still matched) would fail the firing arithmetic or never fire.
                let align = if sliced { pane_ms } else { assigner.slide_ms };
                if let Some((start, end)) = misfit_pane(&table, range.clone(), pane_ms, align) {
                    return Err(fail(format!(
                        "the checkpoint holds an accumulator for [{start}, {end}), but this \
                         job's are {pane_ms} ms long, start on multiples of {align} ms and lie \
                         within -{MAX_WINDOW_TIME}..={MAX_WINDOW_TIME} ms: the checkpoint is \
                         damaged; restore an earlier one"
                    )));
                }
                (table, legacy)
            }
            // A checkpoint of format 4 or earlier (or none): accumulators are whole windows.
            None if sliced && info.restore.is_some() => {
                let mut windows = table;
                // Its chains are stored under section `state`; from now on it is `legacy`.
                windows.forget_chains();
                let slices = KeyGroups::new(range.clone(), info.incremental.clone());
                (slices, Some(windows))
            }
            None => {
                if !sliced && info.restore.is_some() {
                    // Windows of format 4 or earlier; format 5 checks the shape above.
                    check_whole_windows(&table, range.clone(), assigner).map_err(fail)?;
                }
                (table, None)
            }
        };
        let legacy = legacy.filter(|t| t.len() > 0).map(|t| {
            let open = open_index(&t, range.clone());
            (t, open)
        });
        if let Some((t, _)) = &legacy {
            check_whole_windows(t, range.clone(), assigner).map_err(fail)?;
        }
        if watermark == MAX_WATERMARK && info.subtask == 0 {
            tracing::warn!(
                operator = %info.operator,
                "restored from a checkpoint taken after the input ended: every window has \
                 fired, and records that arrive now are late and dropped"
            );
        }
        Ok(WindowOp {
            key,
            agg,
            assigner,
            sliced,
            pane_ms,
            first: range.start,
            open: open_index(&table, range),
            table,
            legacy,
            merged: Default::default(),
            watermark,
            info,
            out,
            _t: PhantomData,
        })
    }

    /// The smallest window end at or after `t`.
    fn end_at_or_after(&self, t: Timestamp) -> Timestamp {
        let (size, slide) = (self.assigner.size_ms, self.assigner.slide_ms);
        t + (size - t.rem_euclid(slide)).rem_euclid(slide)
    }

    /// Adds `r` (at `ts`, of key `k` in group `kg`) to the accumulator ending at `end`,
    /// starting at `start`.
    fn add(
        &mut self,
        kg: usize,
        k: &K,
        start: Timestamp,
        end: Timestamp,
        r: &T,
    ) -> Result<(), JobError> {
        let at = (end, k.clone());
        if let Some(acc) = self.table.get_mut(kg, &at) {
            return self
                .agg
                .add(&mut acc.1, r)
                .map_err(|e| JobError::from_user(&self.info, e));
        }
        let mut acc = self.agg.create();
        self.agg
            .add(&mut acc, r)
            .map_err(|e| JobError::from_user(&self.info, e))?;
        self.table.insert(kg, at, (start, acc));
        self.open[kg - self.first]
            .entry(end)
            .or_default()
            .push(k.clone());
        Ok(())
    }

    /// Fires the windows of key group `kg` that end after `prev + 1` and at or before
    /// `wm + 1`, merging their slices (sliced operators).
    fn fire_slices(
        &mut self,
        kg: usize,
        prev: Timestamp,
        wm: Timestamp,
        out: &mut Batch<WindowResult<K, A::Out>>,
    ) -> Result<(), JobError> {
        let i = kg - self.first;
        let (size, slide) = (self.assigner.size_ms, self.assigner.slide_ms);
        // Windows ending at or before `fired + 1` have fired.
        let mut fired = prev;
        loop {
            let next_slice = self.open[i].keys().next().map(|&s| self.end_at_or_after(s));
            let next_legacy = self
                .legacy
                .as_ref()
                .and_then(|(_, open)| open[i].keys().next().copied());
            let Some(mut end) = next_slice.into_iter().chain(next_legacy).min() else {
                break;
            };
            if fired != NO_TIMESTAMP {
                end = end.max(self.end_at_or_after(fired.saturating_add(2)));
            }
            if end - 1 > wm {
                break;
            }
            // The window's restored whole-window accumulator first (its records are older),
            // then its slices in time order.
            if let Some((table, open)) = &mut self.legacy {
                for k in open[i].remove(&end).unwrap_or_default() {
                    let at = (end, k);
                    let (_, acc) = table
                        .remove(kg, &at)
                        .expect("every key of an open window has an accumulator");
                    self.merged.insert(at.1, acc);
                }
            }
            for (&s, keys) in self.open[i].range(end - size + 1..=end) {
                for k in keys {
                    let (_, acc) = self
                        .table
                        .get(kg, &(s, k.clone()))
                        .expect("every key of an open slice has an accumulator");
                    match self.merged.get_mut(k) {
                        Some(m) => self
                            .agg
                            .merge(m, acc)
                            .map_err(|e| JobError::from_user(&self.info, e))?,
                        None => {
                            self.merged.insert(k.clone(), acc.clone());
                        }
                    }
                }
            }
            for (key, acc) in self.merged.drain() {
                out.push(result_row(&self.agg, end - size, end, key, acc));
            }
            // Slices that no later window contains.
            let last_needed_after = end + slide - size;
            while let Some(entry) = self.open[i].first_entry() {
                let s = *entry.key();
                if s > last_needed_after {
                    break;
                }
                for k in entry.remove() {
                    self.table.remove(kg, &(s, k));
                }
            }
            fired = end - 1;
        }
        Ok(())
    }

    /// Fires the windows of key group `kg` that end at or before `wm + 1` (one accumulator
    /// per window).
    fn fire_windows(&mut self, kg: usize, wm: Timestamp, out: &mut Batch<WindowResult<K, A::Out>>) {
        let open = &mut self.open[kg - self.first];
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
                out.push(result_row(&self.agg, start, end, at.1, acc));
            }
        }
    }
}

/// The row a window `[start, end)` of `key` emits, at the window's last instant.
fn result_row<T, K, A: AggregateFunction<T>>(
    agg: &A,
    start: Timestamp,
    end: Timestamp,
    key: K,
    acc: A::Acc,
) -> (Timestamp, WindowResult<K, A::Out>) {
    let value = agg.result(acc);
    (
        end - 1,
        WindowResult {
            key,
            start,
            end,
            value,
        },
    )
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
        let (size, pane) = (self.assigner.size_ms, self.pane_ms);
        let mut late = 0u64;
        for (ts, r) in batch {
            if ts == NO_TIMESTAMP {
                return Err(JobError::operator(
                    &self.info,
                    "record without an event timestamp reached an event-time window; assign timestamps first (with_timestamps)",
                ));
            }
            if !in_window_range(ts) {
                return Err(JobError::operator(
                    &self.info,
                    format!(
                        "a record's event time {ts} ms is outside the range event-time windows \
                         accept (-{MAX_WINDOW_TIME} ..= {MAX_WINDOW_TIME} ms, about 36 million \
                         years either side of 1970); check the time field, or filter such \
                         records out before the window"
                    ),
                ));
            }
            let k = (self.key)(&r);
            let kg = key_group_for(&k, max_p) as usize;
            if self.sliced {
                // Late: the windows of `ts` that fired already (each counts, as unsliced).
                // The record is dropped when all did, that is when its latest one did.
                if ts <= self.watermark {
                    let wm = self.watermark;
                    let mut starts = self.assigner.starts(ts).peekable();
                    let all_fired = starts.peek().is_some_and(|s| s + size - 1 <= wm);
                    late += starts.filter(|s| s + size - 1 <= wm).count() as u64;
                    if all_fired {
                        continue;
                    }
                }
                let end = ts - ts.rem_euclid(pane) + pane;
                self.add(kg, &k, end - pane, end, &r)?;
                continue;
            }
            for start in self.assigner.starts(ts) {
                let end = start.saturating_add(size);
                if end - 1 <= self.watermark {
                    late += 1;
                    continue;
                }
                self.add(kg, &k, start, end, &r)?;
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
        // After a restore, the watermark starts at the one stored in the checkpoint.
        let prev = self.watermark;
        self.watermark = prev.max(wm);
        // Firing sees watermarks up to FIRE_ALL, which fires every window there can be.
        let (from, to) = (prev.min(FIRE_ALL), self.watermark.min(FIRE_ALL));
        let mut out = Vec::new();
        if to > from {
            for kg in self.first..self.first + self.open.len() {
                if self.sliced {
                    self.fire_slices(kg, from, to, &mut out)?;
                } else {
                    self.fire_windows(kg, to, &mut out);
                }
            }
            if self.legacy.as_ref().is_some_and(|(t, _)| t.len() == 0) {
                self.legacy = None;
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
        let meta = WindowMeta {
            pane_ms: self.pane_ms,
            watermark: self.watermark,
            legacy: self.legacy.is_some(),
        };
        let shape: WindowShape = (self.assigner.size_ms, self.assigner.slide_ms);
        let meta = postcard::to_stdvec(&(meta, shape)).expect("window meta encodes");
        b.sections
            .push((self.info.section_name("window"), Section::Bytes(meta)));
        // As keyed state: captured in O(key groups), encoded by the snapshot writer.
        let snap = self.table.snapshot(b.id);
        b.refs.extend(snap.refs);
        b.sections.push((
            self.info.section_name("state"),
            Section::Deferred(snap.encode),
        ));
        if let Some((table, _)) = &mut self.legacy {
            let snap = table.snapshot(b.id);
            b.refs.extend(snap.refs);
            b.sections.push((
                self.info.section_name("legacy"),
                Section::Deferred(snap.encode),
            ));
        }
        self.out.barrier(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeSet;
    use std::rc::Rc;

    use proptest::prelude::*;

    use crate::checkpoint::RestoreSet;
    use crate::metrics::NodeMetrics;

    type Rec = (u32, i64);
    type Emitted = Vec<(Timestamp, WindowResult<u32, i64>)>;

    /// What a window operator emits.
    #[derive(Clone, Default)]
    struct Sink(Rc<RefCell<Emitted>>);

    impl Collector<WindowResult<u32, i64>> for Sink {
        fn batch(&mut self, batch: Batch<WindowResult<u32, i64>>) -> Result<(), JobError> {
            self.0.borrow_mut().extend(batch);
            Ok(())
        }
        fn watermark(&mut self, _wm: Timestamp) -> Result<(), JobError> {
            Ok(())
        }
        fn idle(&mut self, _idle: bool) -> Result<(), JobError> {
            Ok(())
        }
        fn finish(&mut self) -> Result<(), JobError> {
            Ok(())
        }
        fn barrier(&mut self, _b: &mut Barrier<'_>) -> Result<(), JobError> {
            Ok(())
        }
    }

    /// A sum that cannot merge: its operator keeps one accumulator per window, as every
    /// window operator did before slicing.
    #[derive(Clone)]
    struct Unmerged;

    impl AggregateFunction<Rec> for Unmerged {
        type Acc = i64;
        type Out = i64;
        fn create(&self) -> i64 {
            0
        }
        fn add(&self, acc: &mut i64, r: &Rec) -> Result<(), BoxError> {
            *acc += r.1;
            Ok(())
        }
        fn result(&self, acc: i64) -> i64 {
            acc
        }
    }

    fn key_of(r: &Rec) -> u32 {
        r.0
    }

    type KeyFn = fn(&Rec) -> u32;
    type TestOp<A> = WindowOp<Rec, u32, A, KeyFn>;

    /// One instance owning all 8 key groups, restored from `restore` if given.
    fn op<A: AggregateFunction<Rec, Out = i64>>(
        agg: A,
        assigner: WindowAssigner,
        restore: Option<RestoreSet>,
    ) -> Result<(TestOp<A>, Sink), JobError> {
        let info = TaskInfo {
            job: "test".into(),
            operator: "window".into(),
            subtask: 0,
            parallelism: 1,
            max_parallelism: 8,
            waker: crate::source::Waker::pair().0,
            metrics: Arc::new(NodeMetrics::new(
                "window".into(),
                false,
                false,
                1,
                vec![],
                0,
            )),
            stop: Default::default(),
            node: 1,
            restore: restore.map(Arc::new),
            checkpointing: true,
            stop_resumes: true,
            first_checkpoint: 1,
            incremental: None,
        };
        let sink = Sink::default();
        let key: Arc<KeyFn> = Arc::new(key_of as KeyFn);
        let w = WindowOp::new(key, agg, assigner, 0..8, info, Box::new(sink.clone()))?;
        Ok((w, sink))
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// A record: key, timestamp, value.
        Rec(u32, i64, i64),
        /// The watermark moves on by this much.
        Advance(i64),
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        let step = prop_oneof![
            6 => (0u32..6, 0i64..120, -50i64..50).prop_map(|(k, t, v)| Step::Rec(k, t, v)),
            1 => (1i64..25).prop_map(Step::Advance),
        ];
        prop::collection::vec(step, 0..120)
    }

    /// Feeds `steps` to `w`, whose watermark was `wm`; returns the watermark after them.
    fn run<A: AggregateFunction<Rec, Out = i64>>(
        w: &mut TestOp<A>,
        steps: &[Step],
        mut wm: Timestamp,
    ) -> Timestamp {
        for s in steps {
            match *s {
                Step::Rec(k, t, v) => w.batch(vec![(t, (k, v))]).unwrap(),
                Step::Advance(d) => {
                    wm = if wm == NO_TIMESTAMP { d - 1 } else { wm + d };
                    w.watermark(wm).unwrap();
                }
            }
        }
        wm
    }

    /// The sections `w` writes at a barrier, encoded.
    fn sections<A: AggregateFunction<Rec, Out = i64>>(
        w: &mut TestOp<A>,
        id: u64,
    ) -> Vec<(String, Vec<u8>)> {
        let (mut sections, mut durable, mut refs) = (Vec::new(), Vec::new(), BTreeSet::new());
        w.barrier(&mut Barrier {
            id,
            last: false,
            sections: &mut sections,
            durable: &mut durable,
            refs: &mut refs,
        })
        .unwrap();
        sections
            .into_iter()
            .map(|(name, s)| match s {
                Section::Bytes(b) => (name, b),
                Section::Deferred(f) => {
                    let mut b = Vec::new();
                    f(&mut b).unwrap();
                    (name, b)
                }
            })
            .collect()
    }

    /// `saved` with `f` applied to the bytes of its `window` section.
    fn edit_window(
        saved: &[(String, Vec<u8>)],
        f: impl Fn(&mut Vec<u8>),
    ) -> Vec<(String, Vec<u8>)> {
        let mut v = saved.to_vec();
        for (name, b) in &mut v {
            if name.ends_with("/window") {
                f(b);
            }
        }
        v
    }

    /// A window section as the first checkpoints of format 5 wrote it (no size and slide).
    fn without_shape(b: &mut Vec<u8>) {
        let (meta, _) = decode_meta(b).unwrap();
        *b = postcard::to_stdvec(&meta).unwrap();
    }

    fn sorted(sink: &Sink) -> Vec<(Timestamp, u32, i64, i64, i64)> {
        let mut v: Vec<_> = sink
            .0
            .borrow()
            .iter()
            .map(|(ts, r)| (*ts, r.key, r.start, r.end, r.value))
            .collect();
        v.sort();
        v
    }

    fn late<A: AggregateFunction<Rec>>(w: &TestOp<A>) -> u64 {
        w.info.metrics.late_records.load(Ordering::Relaxed)
    }

    fn sliding(size: i64, slide: i64) -> WindowAssigner {
        WindowAssigner::sliding(
            Duration::from_millis(size as u64),
            Duration::from_millis(slide as u64),
        )
    }

    /// Runs `steps` through one operator, and through another restored after `steps[..cut]`
    /// from the first's checkpoint: both emit the same and count the same records late.
    fn restores_exactly<A: AggregateFunction<Rec, Out = i64>>(
        agg: A,
        a: WindowAssigner,
        steps: &[Step],
        cut: usize,
    ) -> Result<(), TestCaseError> {
        let (mut reference, want) = op(agg.clone(), a, None).unwrap();
        run(&mut reference, steps, NO_TIMESTAMP);
        reference.watermark(Timestamp::MAX).unwrap();

        let (mut before, got_before) = op(agg.clone(), a, None).unwrap();
        let wm = run(&mut before, &steps[..cut], NO_TIMESTAMP);
        let saved = sections(&mut before, 3);
        let restore = RestoreSet::for_test(3, CHECKPOINT_FORMAT, &saved);
        let (mut after, got_after) = op(agg, a, Some(restore)).unwrap();
        run(&mut after, &steps[cut..], wm);
        after.watermark(Timestamp::MAX).unwrap();

        let mut got = sorted(&got_before);
        got.extend(sorted(&got_after));
        got.sort();
        prop_assert_eq!(got, sorted(&want));
        prop_assert_eq!(late(&before) + late(&after), late(&reference));
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Whatever records, watermarks and late records, a sliced operator emits exactly the
        /// windows, values and timestamps of one with an accumulator per window, and counts
        /// the same late records.
        #[test]
        fn sliced_windows_equal_per_window_accumulators(
            steps in steps(), size in 2i64..40, slide in 1i64..40,
        ) {
            let a = sliding(size, slide.min(size - 1));
            let (mut sliced, got) = op(Sum(|r: &Rec| r.1), a, None).unwrap();
            let (mut plain, want) = op(Unmerged, a, None).unwrap();
            prop_assert!(sliced.sliced && !plain.sliced);
            let wm = run(&mut sliced, &steps, NO_TIMESTAMP);
            run(&mut plain, &steps, NO_TIMESTAMP);
            prop_assert_eq!(sorted(&got), sorted(&want));
            prop_assert_eq!(late(&sliced), late(&plain));
            // Everything fires at the end, and no slice is left behind.
            sliced.watermark(Timestamp::MAX).unwrap();
            plain.watermark(Timestamp::MAX).unwrap();
            prop_assert_eq!(sorted(&got), sorted(&want));
            prop_assert_eq!(sliced.table.len(), 0);
            prop_assert!(wm == NO_TIMESTAMP || sliced.watermark == Timestamp::MAX);
        }

        /// An operator restored from its checkpoint (format 5: accumulators and watermark)
        /// goes on exactly as if it had never stopped: the same windows, and the same records
        /// late (records behind the stored watermark stay late). Sliced, per-window (an
        /// aggregate that cannot merge) and tumbling.
        #[test]
        fn windows_restore_exactly(
            steps in steps(), cut in any::<prop::sample::Index>(), size in 2i64..40, slide in 1i64..40,
        ) {
            let a = sliding(size, slide.min(size - 1));
            let cut = cut.index(steps.len() + 1);
            restores_exactly(Sum(|r: &Rec| r.1), a, &steps, cut)?;
            restores_exactly(Unmerged, a, &steps, cut)?;
            let tumbling = WindowAssigner::tumbling(Duration::from_millis(size as u64));
            restores_exactly(Sum(|r: &Rec| r.1), tumbling, &steps, cut)?;
        }

        /// Restored from a checkpoint of format 4 (one accumulator per window, no watermark),
        /// a sliced operator fires each restored window merged with its slices: the same
        /// results as the per-window operator that format 4 restored, and the restored
        /// windows are gone once they fired.
        #[test]
        fn windows_of_format_4_are_merged_into_slices(
            steps in steps(), cut in any::<prop::sample::Index>(), size in 2i64..40, slide in 1i64..40,
        ) {
            let a = sliding(size, slide.min(size - 1));
            let cut = cut.index(steps.len() + 1);
            let (mut old, got_old) = op(Unmerged, a, None).unwrap();
            let wm = run(&mut old, &steps[..cut], NO_TIMESTAMP);
            let saved: Vec<_> = sections(&mut old, 3)
                .into_iter()
                .filter(|(name, _)| name.ends_with("/state"))
                .collect();
            prop_assert_eq!(saved.len(), 1);

            // What format 4 did: per-window accumulators restored, the watermark not.
            let (mut reference, want) =
                op(Unmerged, a, Some(RestoreSet::for_test(3, 4, &saved))).unwrap();
            reference.watermark = NO_TIMESTAMP;
            let (mut sliced, got) =
                op(Sum(|r: &Rec| r.1), a, Some(RestoreSet::for_test(3, 4, &saved))).unwrap();
            prop_assert!(sliced.sliced);
            prop_assert_eq!(
                sliced.legacy.as_ref().map_or(0, |(t, _)| t.len()),
                old.table.len()
            );
            run(&mut reference, &steps[cut..], wm);
            run(&mut sliced, &steps[cut..], wm);
            prop_assert_eq!(sorted(&got), sorted(&want));
            // While restored windows are open, checkpoints keep them (section `legacy`).
            let open = sliced.legacy.is_some();
            let names: Vec<String> = sections(&mut sliced, 4).into_iter().map(|(n, _)| n).collect();
            prop_assert_eq!(names.iter().any(|n| n.ends_with("/legacy")), open);
            sliced.watermark(Timestamp::MAX).unwrap();
            reference.watermark(Timestamp::MAX).unwrap();
            prop_assert_eq!(sorted(&got), sorted(&want));
            prop_assert!(sliced.legacy.is_none());
            drop(got_old);
        }
    }

    /// Restored accumulators must be panes the job could have written: of the pane length,
    /// aligned, within the window time range (else firing overflows or never reaches them).
    #[test]
    fn misfit_panes_are_found() {
        let table = |entries: &[(Timestamp, Timestamp)]| {
            let mut t: PaneTable<u32, i64> = KeyGroups::new(0..2, None);
            for (i, &(start, end)) in entries.iter().enumerate() {
                t.insert(i % 2, (end, i as u32), (start, 1));
            }
            t
        };
        let good = [(0, 2), (-4, -2), (MAX_WINDOW_TIME - 2, MAX_WINDOW_TIME)];
        assert_eq!(misfit_pane(&table(&good), 0..2, 2, 2), None);
        for bad in [
            (1, 3),
            (0, 4),
            (-MAX_WINDOW_TIME - 2, -MAX_WINDOW_TIME),
            (i64::MIN, i64::MIN + 2),
        ] {
            let mut entries = good.to_vec();
            entries.push(bad);
            assert_eq!(
                misfit_pane(&table(&entries), 0..2, 2, 2),
                Some(bad),
                "{bad:?}"
            );
        }
        // A pane of a record at the lowest accepted time starts before it (60 s panes do not
        // divide 2^60): still one the job writes.
        let lowest = -MAX_WINDOW_TIME - (-MAX_WINDOW_TIME).rem_euclid(60_000);
        assert!(lowest < -MAX_WINDOW_TIME);
        assert_eq!(
            misfit_pane(&table(&[(lowest, lowest + 60_000)]), 0..2, 60_000, 60_000),
            None
        );
        // Whole sliding windows: window length, aligned to the slide.
        assert_eq!(misfit_pane(&table(&[(4, 14), (8, 18)]), 0..2, 10, 4), None);
        assert_eq!(
            misfit_pane(&table(&[(4, 14), (6, 16)]), 0..2, 10, 4),
            Some((6, 16))
        );
    }

    /// A checkpoint whose legacy section is open restores into an operator that keeps it; and
    /// a checkpoint taken with another slide is refused, naming what differs.
    #[test]
    fn restored_slices_must_match_the_windows() {
        let a = sliding(10, 4);
        let (mut old, _) = op(Unmerged, a, None).unwrap();
        old.batch(vec![(3, (1, 5)), (7, (2, 6))]).unwrap();
        let saved: Vec<_> = sections(&mut old, 3)
            .into_iter()
            .filter(|(name, _)| name.ends_with("/state"))
            .collect();
        let (mut sliced, _) = op(
            Sum(|r: &Rec| r.1),
            a,
            Some(RestoreSet::for_test(3, 4, &saved)),
        )
        .unwrap();
        assert_eq!(sliced.pane_ms, 2);
        sliced.batch(vec![(12, (1, 1))]).unwrap();
        let saved = sections(&mut sliced, 4);
        let restore = || RestoreSet::for_test(4, CHECKPOINT_FORMAT, &saved);
        let (mut again, got) = op(Sum(|r: &Rec| r.1), a, Some(restore())).unwrap();
        assert!(again.legacy.is_some());
        again.watermark(Timestamp::MAX).unwrap();
        // Key 1: 5 at 3 (restored windows [-4,6) and [0,10)), 1 at 12 (slice [12,14) of
        // [4,14), [8,18) and [12,22)); key 2: 6 at 7 (restored windows [0,10) and [4,14)).
        let got: Vec<_> = sorted(&got).into_iter().map(|r| (r.1, r.2, r.4)).collect();
        assert_eq!(
            got,
            vec![
                (1, -4, 5),
                (1, 0, 5),
                (2, 0, 6),
                (1, 4, 1),
                (2, 4, 6),
                (1, 8, 1),
                (1, 12, 1)
            ]
        );
        let e = op(Sum(|r: &Rec| r.1), sliding(10, 5), Some(restore()))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("windows of 10 ms every 4 ms") && e.contains("are 10 ms every 5 ms"),
            "{e}"
        );
        // A section without the windows' shape (the first format-5 checkpoints) is refused
        // for its slice length.
        let short = edit_window(&saved, without_shape);
        let e = op(
            Sum(|r: &Rec| r.1),
            sliding(10, 5),
            Some(RestoreSet::for_test(4, CHECKPOINT_FORMAT, &short)),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("accumulators of 2 ms each") && e.contains("need 5 ms"),
            "{e}"
        );
        let bad = edit_window(&saved, |b| b.truncate(1));
        let e = op(
            Sum(|r: &Rec| r.1),
            a,
            Some(RestoreSet::for_test(4, CHECKPOINT_FORMAT, &bad)),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("cannot decode window section"), "{e}");
    }

    /// The window section stores size and slide: a restore refuses other windows even with
    /// the same slice length, and still reads a section without them (the first format-5
    /// checkpoints).
    #[test]
    fn a_restore_refuses_changed_windows_with_the_same_slices() {
        let (mut w, _) = op(Sum(|r: &Rec| r.1), sliding(10, 4), None).unwrap();
        w.batch(vec![(3, (1, 5))]).unwrap();
        let saved = sections(&mut w, 3);
        let restore =
            |saved: &[(String, Vec<u8>)]| Some(RestoreSet::for_test(3, CHECKPOINT_FORMAT, saved));
        // 10 every 2 slices by 2 ms too.
        let e = op(Sum(|r: &Rec| r.1), sliding(10, 2), restore(&saved))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("windows of 10 ms every 4 ms") && e.contains("are 10 ms every 2 ms"),
            "{e}"
        );
        // Without the shape, only the slice length is checked.
        let short = edit_window(&saved, without_shape);
        let (mut again, got) = op(Sum(|r: &Rec| r.1), sliding(10, 4), restore(&short)).unwrap();
        again.watermark(Timestamp::MAX).unwrap();
        assert_eq!(sorted(&got).len(), 2, "windows [-4,6), [0,10) of key 1");
        // Slices (as `reduce` wrote them in those checkpoints) into an aggregate that does not
        // merge: refused, saying why.
        let e = op(Unmerged, sliding(10, 4), restore(&short))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("written by a build that sliced"), "{e}");
        // A section that says `legacy` follows when none does.
        let lying = edit_window(&saved, |b| {
            let (mut meta, shape) = decode_meta(b).unwrap();
            meta.legacy = true;
            *b = postcard::to_stdvec(&(meta, shape.unwrap())).unwrap();
        });
        let e = op(Sum(|r: &Rec| r.1), sliding(10, 4), restore(&lying))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("`legacy` section follows"), "{e}");
        // Bytes after the size and slide.
        let long = edit_window(&saved, |b| b.push(0));
        let e = op(Sum(|r: &Rec| r.1), sliding(10, 4), restore(&long))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("1 bytes left over"), "{e}");
    }

    /// Whole-window accumulators of a format-4 checkpoint must be this job's windows: ones of
    /// another slide would never fire in its order, and would stay in every checkpoint.
    #[test]
    fn format_4_windows_of_another_shape_are_refused() {
        let (mut old, _) = op(Unmerged, sliding(10, 5), None).unwrap();
        old.batch(vec![(3, (1, 5))]).unwrap();
        let saved: Vec<_> = sections(&mut old, 3)
            .into_iter()
            .filter(|(name, _)| name.ends_with("/state"))
            .collect();
        for new in [
            sliding(10, 4),
            WindowAssigner::tumbling(Duration::from_millis(10)),
        ] {
            let e = op(
                Sum(|r: &Rec| r.1),
                new,
                Some(RestoreSet::for_test(3, 4, &saved)),
            )
            .err()
            .unwrap()
            .to_string();
            assert!(e.contains("is not one of this job's windows"), "{e}");
        }
        let e = op(
            Unmerged,
            sliding(10, 4),
            Some(RestoreSet::for_test(3, 4, &saved)),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("is not one of this job's windows"), "{e}");
        // The same windows restore.
        assert!(op(
            Sum(|r: &Rec| r.1),
            sliding(10, 5),
            Some(RestoreSet::for_test(3, 4, &saved))
        )
        .is_ok());
    }

    /// Event times far from 1970 are an error naming the time, never a panic or an
    /// overflow; watermarks up to `i64::MAX` fire everything once.
    #[test]
    fn extreme_event_times_and_watermarks() {
        for a in [
            sliding(60_000, 10_000),
            WindowAssigner::tumbling(Duration::from_secs(60)),
        ] {
            for ts in [
                -9_223_372_036_854_775_000,
                i64::MAX - 5,
                MAX_WINDOW_TIME + 1,
                -MAX_WINDOW_TIME - 1,
            ] {
                let (mut w, _) = op(Sum(|r: &Rec| r.1), a, None).unwrap();
                w.watermark(0).unwrap();
                let e = w.batch(vec![(ts, (1, 1))]).unwrap_err().to_string();
                assert!(e.contains(&format!("event time {ts} ms is outside")), "{e}");
            }
            let (mut w, got) = op(Sum(|r: &Rec| r.1), a, None).unwrap();
            w.batch(vec![(MAX_WINDOW_TIME, (1, 1)), (-MAX_WINDOW_TIME, (2, 2))])
                .unwrap();
            w.watermark(i64::MAX - 3).unwrap();
            w.watermark(i64::MAX - 2).unwrap();
            w.watermark(i64::MAX).unwrap();
            let windows = (a.size_ms / a.slide_ms) as usize;
            assert_eq!(got.0.borrow().len(), 2 * windows);
            // Records now are late, not a panic.
            w.batch(vec![(MAX_WINDOW_TIME, (1, 1))]).unwrap();
            assert_eq!(got.0.borrow().len(), 2 * windows);
        }
        // Durations beyond the limit are clamped, not wrapped.
        let a = WindowAssigner::sliding(Duration::MAX, Duration::MAX);
        assert_eq!(
            (a.size_ms(), a.slide_ms()),
            (MAX_WINDOW_TIME, MAX_WINDOW_TIME)
        );
    }

    /// `reduce` applies its function in arrival order within a window, sliding or not (its
    /// accumulators are not merged, so the function need not be associative or commutative).
    #[test]
    fn window_reduce_keeps_arrival_order() {
        // The values as digits, appended in arrival order.
        let concat = ReduceAgg(Arc::new(|a: Rec, b: Rec| (a.0, a.1 * 10 + b.1)));
        assert!(!AggregateFunction::<Rec>::mergeable(&concat));
        let mut acc = AggregateFunction::<Rec>::create(&concat);
        for r in [(1, 7), (1, 2)] {
            concat.add(&mut acc, &r).unwrap();
        }
        assert_eq!(concat.result(acc), (1, 72));
    }

    const CHECKPOINT_FORMAT: u32 = weir_storage::CHECKPOINT_FORMAT_VERSION;

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
