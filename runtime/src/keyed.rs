//! Keys, key groups, keyed operators and event-time timers.
//!
//! A key's key group is `stable_hash(key) % max_parallelism`; subtask `s` of `p` owns the
//! contiguous key-group range given by [`key_group_range`] (Flink's assignment), and the hash
//! exchange sends key group `kg` to subtask `kg * p / max_parallelism`, so every key is
//! processed by the subtask that owns its state.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::Arc;

use crate::error::{BoxError, JobError};
use crate::operator::{Barrier, Batch, Collector, Out, Section};
use crate::source::TaskInfo;
use crate::state::{AnyTable, Incremental, KeyGroups, ListState, MapState, StateData, ValueState};
use crate::Timestamp;

/// A hasher whose output depends only on the bytes hashed: the same on every machine, run and
/// Rust release, so key-group assignment is stable across restarts.
struct StableHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl Hasher for StableHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.write_u64(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            self.write_u64(u64::from_le_bytes(buf) ^ ((rest.len() as u64) << 56));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(SEED);
    }
    fn write_u8(&mut self, n: u8) {
        self.write_u64(n as u64)
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(n as u64)
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64)
    }
    fn finish(&self) -> u64 {
        // murmur3 fmix64: spreads every input bit over the output.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// Hash of a key that is stable across processes and machines.
pub fn stable_hash<K: Hash + ?Sized>(key: &K) -> u64 {
    let mut h = StableHasher(0);
    key.hash(&mut h);
    h.finish()
}

/// The key group of a key.
#[inline]
pub fn key_group_for<K: Hash + ?Sized>(key: &K, max_parallelism: usize) -> u32 {
    (stable_hash(key) % max_parallelism as u64) as u32
}

/// Key groups owned by `subtask` of `parallelism`.
pub(crate) fn key_group_range(
    subtask: usize,
    parallelism: usize,
    max_parallelism: usize,
) -> Range<usize> {
    assert!(parallelism >= 1 && parallelism <= max_parallelism && subtask < parallelism);
    let start = (subtask * max_parallelism).div_ceil(parallelism);
    let end = ((subtask + 1) * max_parallelism).div_ceil(parallelism);
    start..end
}

/// Running keyed computation: for each record, `f(state_of_key, record)` may update the key's
/// state (`None` removes it) and emit one output. Backs sum/min/max/reduce and the JSON
/// aggregates.
pub(crate) struct KeyedFoldOp<T, K, S, O, KF: ?Sized, F> {
    pub(crate) key: Arc<KF>,
    pub(crate) f: Arc<F>,
    pub(crate) state: KeyGroups<K, Option<S>>,
    pub(crate) info: TaskInfo,
    pub(crate) out: Out<O>,
    pub(crate) _t: PhantomData<fn(T)>,
}

impl<T, K, S, O, KF, F> Collector<T> for KeyedFoldOp<T, K, S, O, KF, F>
where
    K: Hash + Eq + StateData,
    S: StateData,
    KF: Fn(&T) -> K + ?Sized,
    F: Fn(&mut Option<S>, T) -> Result<Option<O>, BoxError>,
{
    fn batch(&mut self, batch: Batch<T>) -> Result<(), JobError> {
        let (keyf, f) = (&*self.key, &*self.f);
        let max_p = self.info.max_parallelism;
        let mut out = Vec::with_capacity(batch.len());
        for (ts, r) in batch {
            let k = keyf(&r);
            let kg = key_group_for(&k, max_p) as usize;
            let emitted = if let Some(slot) = self.state.get_mut(kg, &k) {
                let o = f(slot, r);
                if slot.is_none() {
                    self.state.remove(kg, &k);
                }
                o
            } else {
                let mut slot = None;
                let o = f(&mut slot, r);
                if slot.is_some() {
                    self.state.insert(kg, k, slot);
                }
                o
            };
            match emitted {
                Ok(Some(o)) => out.push((ts, o)),
                Ok(None) => {}
                Err(e) => return Err(JobError::from_user(&self.info, e)),
            }
        }
        if out.is_empty() {
            return Ok(());
        }
        self.out.batch(out)
    }
    fn watermark(&mut self, wm: Timestamp) -> Result<(), JobError> {
        self.out.watermark(wm)
    }
    fn idle(&mut self, idle: bool) -> Result<(), JobError> {
        self.out.idle(idle)
    }
    fn finish(&mut self) -> Result<(), JobError> {
        tracing::debug!(operator = %self.info.operator, subtask = self.info.subtask, keys = self.state.len(), "keyed operator finished");
        self.out.finish()
    }
    fn barrier(&mut self, b: &mut Barrier<'_>) -> Result<(), JobError> {
        let snap = self.state.snapshot(b.id);
        b.refs.extend(snap.refs);
        b.sections.push((
            self.info.section_name("state"),
            Section::Deferred(snap.encode),
        ));
        self.out.barrier(b)
    }
}

/// The keyed state of an operator instance: restored from the checkpoint if there is one.
pub(crate) fn restored_groups<K: StateData + Hash + Eq, V: StateData>(
    info: &TaskInfo,
) -> Result<KeyGroups<K, V>, JobError> {
    restored_table(info, "state")
}

/// The keyed table stored in the instance's sections `kind`, restored from the checkpoint if
/// there is one.
pub(crate) fn restored_table<K: StateData + Hash + Eq, V: StateData>(
    info: &TaskInfo,
    kind: &str,
) -> Result<KeyGroups<K, V>, JobError> {
    let range = key_group_range(info.subtask, info.parallelism, info.max_parallelism);
    match (info.restored_section(kind), &info.restore) {
        (Some(bytes), Some(r)) => {
            let earlier = |id| info.earlier_section(id, kind);
            let threads = info.restore_threads();
            let inc = info.incremental.clone();
            let mut t =
                KeyGroups::decode(r.id, bytes, range, inc, &earlier, threads).map_err(|e| {
                    JobError::Restore(format!(
                        "operator `{}` subtask {}: {e}",
                        info.operator, info.subtask
                    ))
                })?;
            if r.foreign {
                t.forget_chains();
            }
            Ok(t)
        }
        _ => Ok(KeyGroups::new(range, info.incremental.clone())),
    }
}

/// A keyed process function: per-key state (value, map, list) and event-time timers, like
/// Flink's `KeyedProcessFunction`. One clone runs per parallel instance.
pub trait KeyedProcessFunction<K, I, O>: Clone + Send + Sync + 'static {
    /// Declares state; called once per parallel instance before the first record.
    fn open(&mut self, _ctx: &mut OpenContext<'_, K>) -> Result<(), BoxError> {
        Ok(())
    }
    /// Handles one record of key `ctx.key()`.
    fn process(&mut self, value: I, ctx: &mut KeyedContext<'_, K, O>) -> Result<(), BoxError>;
    /// An event-time timer of `ctx.key()` registered for `ctx.timestamp()` fired.
    fn on_timer(&mut self, _ctx: &mut KeyedContext<'_, K, O>) -> Result<(), BoxError> {
        Ok(())
    }
}

/// Declares keyed state in [`KeyedProcessFunction::open`].
pub struct OpenContext<'a, K> {
    tables: &'a mut Vec<Box<dyn AnyTable>>,
    range: Range<usize>,
    info: &'a TaskInfo,
    _k: PhantomData<fn() -> K>,
}

impl<K: Hash + Eq + Clone + StateData> OpenContext<'_, K> {
    /// Which parallel instance this is.
    pub fn info(&self) -> &TaskInfo {
        self.info
    }
    /// Declares a value per key.
    pub fn value_state<V: StateData>(&mut self, name: &'static str) -> ValueState<V> {
        self.tables.push(Box::new(KeyGroups::<K, V>::new(
            self.range.clone(),
            self.info.incremental.clone(),
        )));
        ValueState {
            idx: self.tables.len() - 1,
            name,
            _v: PhantomData,
        }
    }
    /// Declares a map per key.
    pub fn map_state<UK: Hash + Eq + StateData, UV: StateData>(
        &mut self,
        name: &'static str,
    ) -> MapState<UK, UV> {
        self.tables.push(Box::new(
            KeyGroups::<K, rustc_hash::FxHashMap<UK, UV>>::new(
                self.range.clone(),
                self.info.incremental.clone(),
            ),
        ));
        MapState {
            idx: self.tables.len() - 1,
            name,
            _v: PhantomData,
        }
    }
    /// Declares a list per key.
    pub fn list_state<V: StateData>(&mut self, name: &'static str) -> ListState<V> {
        self.tables.push(Box::new(KeyGroups::<K, Vec<V>>::new(
            self.range.clone(),
            self.info.incremental.clone(),
        )));
        ListState {
            idx: self.tables.len() - 1,
            name,
            _v: PhantomData,
        }
    }
}

/// The timers of an instance as a keyed table: `(time, key) -> ()`.
type TimerTable<K> = KeyGroups<(Timestamp, K), ()>;

/// Event-time timers of one operator instance, deduplicated per (time, key).
///
/// Every timer is an entry `(time, key) -> ()` of a keyed table in its key's group: the set
/// that deduplicates registrations, and what checkpoints store, like keyed state (captured in
/// O(key groups) at the barrier, encoded by the snapshot writer, incremental: a checkpoint
/// writes the timers registered or removed since the last one). Until checkpoint format 4
/// the timers were encoded in full at every barrier, on the worker: Nexmark q4 spent 31 ms of
/// each barrier there, and three quarters of its checkpoints' bytes. Beside the table, the
/// firing order (time -> keys), which is not checkpointed but rebuilt from the table on
/// restore.
pub(crate) struct Timers<K> {
    table: TimerTable<K>,
    queue: BTreeMap<Timestamp, Vec<K>>,
    max_parallelism: usize,
}

impl<K: Hash + Eq + Clone> Timers<K> {
    /// The timers of an instance owning key groups `range`: none, or those of `table` (as
    /// restored).
    fn new(table: TimerTable<K>, range: Range<usize>, max_parallelism: usize) -> Self {
        let mut queue: BTreeMap<Timestamp, Vec<K>> = BTreeMap::new();
        for kg in range {
            for (ts, k) in table.keys(kg) {
                queue.entry(*ts).or_default().push(k.clone());
            }
        }
        Timers {
            table,
            queue,
            max_parallelism,
        }
    }

    /// Registers a timer of `key` (in key group `kg`) for `ts`, unless it exists.
    fn register(&mut self, ts: Timestamp, key: &K, kg: usize) {
        if self.table.insert_new(kg, (ts, key.clone()), ()) {
            self.queue.entry(ts).or_default().push(key.clone());
        }
    }

    fn delete(&mut self, ts: Timestamp, key: &K, kg: usize) {
        if self.table.remove(kg, &(ts, key.clone())).is_some() {
            if let Some(v) = self.queue.get_mut(&ts) {
                v.retain(|k| k != key);
                if v.is_empty() {
                    self.queue.remove(&ts);
                }
            }
        }
    }

    /// Pops the earliest timer at or before `wm`, with its key's group.
    fn pop_due(&mut self, wm: Timestamp) -> Option<(Timestamp, K, usize)> {
        let mut entry = self.queue.first_entry()?;
        let ts = *entry.key();
        if ts > wm {
            return None;
        }
        let key = entry.get_mut().pop().expect("timer lists are never empty");
        if entry.get().is_empty() {
            entry.remove();
        }
        let kg = key_group_for(&key, self.max_parallelism) as usize;
        let entry = (ts, key);
        let removed = self.table.remove(kg, &entry);
        debug_assert!(removed.is_some(), "a queued timer is in the table");
        Some((entry.0, entry.1, kg))
    }
}

/// What a [`KeyedProcessFunction`] sees while handling a record or a timer.
pub struct KeyedContext<'a, K, O> {
    pub(crate) key: &'a K,
    pub(crate) key_group: usize,
    pub(crate) timestamp: Timestamp,
    pub(crate) watermark: Timestamp,
    pub(crate) tables: &'a mut [Box<dyn AnyTable>],
    pub(crate) timers: &'a mut Timers<K>,
    pub(crate) out: &'a mut Batch<O>,
}

impl<K: Hash + Eq + Clone, O> KeyedContext<'_, K, O> {
    /// The current key.
    pub fn key(&self) -> &K {
        self.key
    }
    /// Timestamp of the current record, or the time of the firing timer.
    pub fn timestamp(&self) -> Timestamp {
        self.timestamp
    }
    /// The operator's current event-time watermark.
    pub fn watermark(&self) -> Timestamp {
        self.watermark
    }
    /// Emits a record with the current timestamp.
    pub fn emit(&mut self, value: O) {
        self.out.push((self.timestamp, value));
    }
    /// Emits a record with the given timestamp.
    pub fn emit_at(&mut self, timestamp: Timestamp, value: O) {
        self.out.push((timestamp, value));
    }
    /// Calls [`KeyedProcessFunction::on_timer`] for the current key once the watermark reaches
    /// `time`. Registering the same (time, key) twice fires once.
    pub fn register_event_time_timer(&mut self, time: Timestamp) {
        self.timers.register(time, self.key, self.key_group);
    }
    /// Removes a timer of the current key.
    pub fn delete_event_time_timer(&mut self, time: Timestamp) {
        self.timers.delete(time, self.key, self.key_group);
    }
}

pub(crate) struct KeyedProcessOp<T, K, O, KF: ?Sized, P> {
    key: Arc<KF>,
    f: P,
    tables: Vec<Box<dyn AnyTable>>,
    timers: Timers<K>,
    watermark: Timestamp,
    info: TaskInfo,
    out: Out<O>,
    _t: PhantomData<fn(T)>,
}

impl<T, K, O, KF, P> KeyedProcessOp<T, K, O, KF, P>
where
    K: Hash + Eq + Clone + StateData,
    KF: Fn(&T) -> K + ?Sized,
    P: KeyedProcessFunction<K, T, O>,
{
    pub(crate) fn new(
        key: Arc<KF>,
        mut f: P,
        info: TaskInfo,
        out: Out<O>,
    ) -> Result<Self, JobError> {
        let mut tables = Vec::new();
        let range = key_group_range(info.subtask, info.parallelism, info.max_parallelism);
        f.open(&mut OpenContext {
            tables: &mut tables,
            range: range.clone(),
            info: &info,
            _k: PhantomData,
        })
        .map_err(|e| JobError::from_user(&info, e))?;
        let mut timers = None;
        if let Some(bytes) = info.restored_section("state") {
            let fail = |e: String| {
                JobError::Restore(format!(
                    "operator `{}` subtask {}: {e}",
                    info.operator, info.subtask
                ))
            };
            let r = info
                .restore
                .as_ref()
                .expect("a restored section implies a restore");
            // Format 4: the number of tables; the timers are a table of their own. Before:
            // the number of tables and every timer.
            let (count, legacy) = if r.format_version < 4 {
                let (count, table) = legacy_timers(
                    bytes,
                    range.clone(),
                    info.max_parallelism,
                    info.incremental.clone(),
                )
                .map_err(&fail)?;
                (count, Some(table))
            } else {
                let count: u32 = postcard::from_bytes(bytes)
                    .map_err(|e| fail(format!("cannot decode state: {e}")))?;
                (count, None)
            };
            if count as usize != tables.len() {
                return Err(fail(format!(
                    "the checkpoint holds {count} state tables but the function declares {} in open()",
                    tables.len()
                )));
            }
            for (i, t) in tables.iter_mut().enumerate() {
                let kind = format!("table-{i}");
                let own = info.earlier_section(r.id, &kind).map_err(&fail)?;
                let earlier = |id| info.earlier_section(id, &kind);
                t.restore(r.id, own, &earlier, info.restore_threads())
                    .map_err(&fail)?;
                if r.foreign {
                    t.forget_chains();
                }
            }
            timers = Some(match legacy {
                Some(table) => table,
                None => {
                    // Written at every barrier beside the state section.
                    info.earlier_section(r.id, "timers").map_err(&fail)?;
                    restored_table(&info, "timers")?
                }
            });
        }
        let table =
            timers.unwrap_or_else(|| KeyGroups::new(range.clone(), info.incremental.clone()));
        let timers = Timers::new(table, range, info.max_parallelism);
        Ok(KeyedProcessOp {
            key,
            f,
            tables,
            timers,
            watermark: crate::NO_TIMESTAMP,
            info,
            out,
            _t: PhantomData,
        })
    }
}

/// The `state` section of a keyed process function in a checkpoint of format version 1 to 3:
/// the number of state tables and every timer, as `(u32, Vec<(Timestamp, K)>)`. The timers
/// become a table without chains, so the next checkpoint writes it in full.
fn legacy_timers<K: StateData + Hash + Eq>(
    bytes: &[u8],
    range: Range<usize>,
    max_parallelism: usize,
    inc: Option<Arc<Incremental>>,
) -> Result<(u32, TimerTable<K>), String> {
    let (count, saved): (u32, Vec<(Timestamp, K)>) =
        postcard::from_bytes(bytes).map_err(|e| format!("cannot decode state: {e}"))?;
    let mut table = KeyGroups::new(range.clone(), inc);
    for (ts, k) in saved {
        let kg = key_group_for(&k, max_parallelism) as usize;
        if !range.contains(&kg) {
            return Err(format!(
                "a timer's key belongs to key group {kg}, outside this instance's {range:?}"
            ));
        }
        table.insert(kg, (ts, k), ());
    }
    Ok((count, table))
}

impl<T, K, O, KF, P> Collector<T> for KeyedProcessOp<T, K, O, KF, P>
where
    K: Hash + Eq + Clone + StateData,
    KF: Fn(&T) -> K + ?Sized,
    P: KeyedProcessFunction<K, T, O>,
{
    fn batch(&mut self, batch: Batch<T>) -> Result<(), JobError> {
        let max_p = self.info.max_parallelism;
        let mut out = Vec::with_capacity(batch.len());
        for (ts, r) in batch {
            let k = (self.key)(&r);
            let kg = key_group_for(&k, max_p) as usize;
            let mut ctx = KeyedContext {
                key: &k,
                key_group: kg,
                timestamp: ts,
                watermark: self.watermark,
                tables: &mut self.tables,
                timers: &mut self.timers,
                out: &mut out,
            };
            self.f
                .process(r, &mut ctx)
                .map_err(|e| JobError::from_user(&self.info, e))?;
        }
        if out.is_empty() {
            return Ok(());
        }
        self.out.batch(out)
    }

    fn watermark(&mut self, wm: Timestamp) -> Result<(), JobError> {
        self.watermark = wm;
        let mut out = Vec::new();
        while let Some((ts, k, kg)) = self.timers.pop_due(wm) {
            let mut ctx = KeyedContext {
                key: &k,
                key_group: kg,
                timestamp: ts,
                watermark: wm,
                tables: &mut self.tables,
                timers: &mut self.timers,
                out: &mut out,
            };
            self.f
                .on_timer(&mut ctx)
                .map_err(|e| JobError::from_user(&self.info, e))?;
            if out.len() >= 4096 {
                self.out.batch(std::mem::take(&mut out))?;
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
        self.out.finish()
    }

    fn barrier(&mut self, b: &mut Barrier<'_>) -> Result<(), JobError> {
        // One section per table (so incremental checkpoints can reference each on its own),
        // the timers as a table too, and the number of tables.
        for (i, t) in self.tables.iter_mut().enumerate() {
            let snap = t.snapshot(b.id);
            b.refs.extend(snap.refs);
            b.sections.push((
                self.info.section_name(&format!("table-{i}")),
                Section::Deferred(snap.encode),
            ));
        }
        let snap = self.timers.table.snapshot(b.id);
        b.refs.extend(snap.refs);
        b.sections.push((
            self.info.section_name("timers"),
            Section::Deferred(snap.encode),
        ));
        let count = postcard::to_stdvec(&(self.tables.len() as u32))
            .map_err(|e| JobError::Checkpoint(format!("cannot encode the table count: {e}")))?;
        b.sections
            .push((self.info.section_name("state"), Section::Bytes(count)));
        self.out.barrier(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_group_ranges_partition_all_groups_and_match_routing() {
        for max_p in [1usize, 7, 128, 1000] {
            for p in 1..=max_p.min(9) {
                let mut next = 0;
                for s in 0..p {
                    let r = key_group_range(s, p, max_p);
                    assert_eq!(r.start, next);
                    next = r.end;
                    for kg in r {
                        assert_eq!(kg * p / max_p, s, "kg {kg} p {p} max {max_p}");
                    }
                }
                assert_eq!(next, max_p);
            }
        }
    }

    /// Timers fire in time order, each (time, key) once however often it was registered, and
    /// the table a checkpoint stores holds exactly the timers still queued.
    #[test]
    fn timers_fire_in_time_order_once_each_and_the_table_mirrors_the_queue() {
        let max_p = 8;
        let range = 0..max_p;
        let mut t: Timers<u32> = Timers::new(KeyGroups::new(range.clone(), None), range, max_p);
        let kg = |k: &u32| key_group_for(k, max_p) as usize;
        for (ts, k) in [(30, 1), (10, 2), (30, 3), (10, 2), (20, 1), (30, 1)] {
            t.register(ts, &k, kg(&k));
        }
        t.delete(20, &1, kg(&1));
        t.delete(40, &1, kg(&1));
        let stored = |t: &Timers<u32>| {
            let mut v: Vec<(Timestamp, u32)> = (0..max_p)
                .flat_map(|g| t.table.keys(g).copied().collect::<Vec<_>>())
                .collect();
            v.sort_unstable();
            v
        };
        assert_eq!(stored(&t), vec![(10, 2), (30, 1), (30, 3)]);
        assert_eq!(t.pop_due(5), None);
        assert_eq!(t.pop_due(10), Some((10, 2, kg(&2))));
        assert_eq!(t.pop_due(29), None);
        assert_eq!(stored(&t), vec![(30, 1), (30, 3)]);
        // A fired timer can be registered again.
        t.register(10, &2, kg(&2));
        let mut rest = Vec::new();
        while let Some((ts, k, g)) = t.pop_due(100) {
            assert_eq!(g, kg(&k));
            rest.push((ts, k));
        }
        rest[1..].sort_unstable();
        assert_eq!(rest, vec![(10, 2), (30, 1), (30, 3)]);
        assert_eq!(stored(&t), vec![]);
    }

    /// A restored table of timers is queued again in time order.
    #[test]
    fn restored_timers_are_queued_in_time_order() {
        let max_p = 4;
        let mut table = KeyGroups::new(2..4, None);
        let keys: Vec<u32> = (0..200)
            .filter(|k| (2..4).contains(&(key_group_for(k, max_p) as usize)))
            .take(20)
            .collect();
        for (i, k) in keys.iter().enumerate() {
            let ts = 100 - i as Timestamp % 7;
            table.insert(key_group_for(k, max_p) as usize, (ts, *k), ());
        }
        let mut t = Timers::new(table, 2..4, max_p);
        let mut fired = Vec::new();
        while let Some((ts, k, _)) = t.pop_due(Timestamp::MAX) {
            fired.push((ts, k));
        }
        assert_eq!(fired.len(), keys.len());
        assert!(fired.windows(2).all(|w| w[0].0 <= w[1].0), "{fired:?}");
    }

    /// The timers of a checkpoint of format version 3 (every timer in the state section)
    /// become a table; timers of another instance's key groups and damaged bytes are errors.
    #[test]
    fn timers_of_format_version_3_are_read_into_a_table() {
        let max_p = 4;
        let own: Vec<u32> = (0..100)
            .filter(|k| key_group_for(k, max_p) < 2)
            .take(3)
            .collect();
        let saved: Vec<(Timestamp, u32)> = own.iter().map(|&k| (k as Timestamp * 10, k)).collect();
        let bytes = postcard::to_stdvec(&(2u32, &saved)).unwrap();
        let (count, table) = legacy_timers::<u32>(&bytes, 0..2, max_p, None).unwrap();
        assert_eq!(count, 2);
        assert_eq!(table.len(), 3);
        for (ts, k) in &saved {
            assert_eq!(
                table.get(key_group_for(k, max_p) as usize, &(*ts, *k)),
                Some(&())
            );
        }
        let e = legacy_timers::<u32>(&bytes, 2..4, max_p, None)
            .err()
            .unwrap();
        assert!(e.contains("outside this instance"), "{e}");
        let e = legacy_timers::<u32>(&bytes[..bytes.len() - 1], 0..2, max_p, None)
            .err()
            .unwrap();
        assert!(e.contains("cannot decode state"), "{e}");
    }

    const GOLDEN: [u32; 4] = [0, 85, 10, 3076];

    #[test]
    fn stable_hash_is_stable_and_spreads() {
        // Pinned values: changing them moves keys to other key groups and breaks restoring
        // state written by earlier versions.
        assert_eq!(key_group_for(&0u64, 128), GOLDEN[0]);
        assert_eq!(key_group_for(&12345u64, 128), GOLDEN[1]);
        assert_eq!(key_group_for("key-7", 128), GOLDEN[2]);
        assert_eq!(key_group_for(&(3u32, "x".to_string()), 32768), GOLDEN[3]);
        let mut counts = [0usize; 128];
        for i in 0..128_000u64 {
            counts[key_group_for(&i, 128) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800 && c < 1200), "{counts:?}");
        let mut counts = [0usize; 16];
        for i in 0..16_000u64 {
            counts[key_group_for(&format!("key-{i}"), 16) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800 && c < 1200), "{counts:?}");
    }
}
