//! Keyed state: tables partitioned by key group, and typed handles scoped to the current key.
//!
//! Every keyed table holds one hash map per key group owned by the subtask, so a subtask's
//! state can later be split or merged by key group (rescaling, incremental checkpoints).
//! Handles ([`ValueState`], [`MapState`], [`ListState`]) are obtained in
//! [`crate::KeyedProcessFunction::open`] and read or write the entry of the key being
//! processed.

use std::any::Any;
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::hash::Hash;
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};

use crate::keyed::KeyedContext;

/// Settings and progress shared by every keyed table of a job run that takes incremental
/// checkpoints.
#[derive(Debug)]
pub(crate) struct Incremental {
    /// Id of the newest completed checkpoint: stored by the coordinator right after the
    /// checkpoint's metadata is durable, before the next trigger, so a capture always sees
    /// the completions that happened before its barrier.
    pub(crate) completed: AtomicU64,
    /// [`crate::CheckpointConfig::max_delta_chain`].
    pub(crate) max_chain: usize,
    /// [`crate::CheckpointConfig::max_concurrent`]: only the newest this many captures can
    /// still complete when a new one is taken.
    pub(crate) max_concurrent: usize,
}

/// One key group's map: owned, or frozen by a checkpoint and shared with its encoder.
enum Slot<K, V> {
    Owned(FxHashMap<K, V>),
    Frozen(Arc<FxHashMap<K, V>>),
}

/// How a checkpoint stores one key group: a full copy written by checkpoint `ids[0]`, then the
/// deltas written by `ids[1..]`, applied in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Chain {
    ids: Vec<u64>,
    /// Entries of the full copy.
    base_len: u64,
    /// Entries of all deltas together (what a restore applies on top of the full copy).
    delta_entries: u64,
}

/// A capture of a key group by a checkpoint that is not known to be complete yet.
struct Capture<K> {
    id: u64,
    chain: Chain,
    /// Keys written between the previous capture and this one; `None` when not tracked
    /// (too many): a later capture can then not be a delta until this one is settled.
    keys: Option<Vec<K>>,
}

/// A key group: its map and what incremental checkpoints know about its changes.
struct Group<K, V> {
    slot: Slot<K, V>,
    /// Keys written since the last capture (incremental tracking on, not overflowed).
    dirty: FxHashSet<K>,
    /// Too many keys changed to track them: the next capture writes the group in full.
    overflow: bool,
    /// How the newest completed checkpoint stores this group (empty: none does).
    committed: Chain,
    /// Captures of checkpoints that may still complete, oldest first.
    pending: Vec<Capture<K>>,
}

impl<K, V> Group<K, V> {
    fn map(&self) -> &FxHashMap<K, V> {
        match &self.slot {
            Slot::Owned(m) => m,
            Slot::Frozen(a) => a,
        }
    }
}

/// Below this many tracked keys a group never overflows.
const DIRTY_MIN: usize = 1024;

/// A group with more changed keys than 1/`FULL_FRACTION` of its entries is written in full:
/// a delta would copy (at the barrier) and write nearly as much.
const FULL_FRACTION: usize = 8;

/// Most entries one table copies at a barrier for its deltas: bounds the synchronous pause
/// (about 50 ns an entry); beyond it the groups with the most changes are written in full.
const SYNC_BUDGET: u64 = 1 << 17;

/// One hash map per key group of a subtask's key-group range.
///
/// Copy-on-write at key-group granularity: a checkpoint freezes the maps it writes in full in
/// O(1) each (the synchronous part) and encodes them on the writer thread; the first write to
/// a key group afterwards takes its map back, copying it only if the encoder still holds it.
///
/// Incremental checkpoints: writes record their key in the group's dirty set; a checkpoint
/// writes a group as a delta (the current values of the keys changed since the newest
/// completed checkpoint, `None` for removed ones, copied at the barrier) on top of the
/// group's chain, or in full when the chain grew too long, the delta is large or the changes
/// were not tracked. Unchanged groups are not written at all.
pub(crate) struct KeyGroups<K, V> {
    first: usize,
    groups: Vec<Group<K, V>>,
    inc: Option<Arc<Incremental>>,
}

impl<K: Hash + Eq + Clone, V: Clone> KeyGroups<K, V> {
    pub(crate) fn new(range: Range<usize>, inc: Option<Arc<Incremental>>) -> Self {
        KeyGroups {
            first: range.start,
            groups: range
                .map(|_| Group {
                    slot: Slot::Owned(FxHashMap::default()),
                    dirty: FxHashSet::default(),
                    overflow: false,
                    committed: Chain::default(),
                    pending: Vec::new(),
                })
                .collect(),
            inc,
        }
    }

    /// The map of key group `kg` (an absolute key-group index inside this subtask's range).
    /// Whoever changes an entry through it must call [`KeyGroups::touch`] with its key.
    #[inline]
    pub(crate) fn group(&mut self, kg: usize) -> &mut FxHashMap<K, V> {
        debug_assert!(kg >= self.first && kg < self.first + self.groups.len());
        let slot = &mut self.groups[kg - self.first].slot;
        if let Slot::Frozen(arc) = slot {
            let arc = std::mem::replace(arc, Arc::new(FxHashMap::default()));
            *slot = Slot::Owned(Arc::try_unwrap(arc).unwrap_or_else(|shared| (*shared).clone()));
        }
        match slot {
            Slot::Owned(m) => m,
            Slot::Frozen(_) => unreachable!("thawed above"),
        }
    }

    /// Records that the entry of `key` in key group `kg` changed (was written or removed),
    /// for the next incremental checkpoint. Free when incremental checkpoints are off.
    #[inline]
    pub(crate) fn touch(&mut self, kg: usize, key: &K) {
        if self.inc.is_none() {
            return;
        }
        let g = &mut self.groups[kg - self.first];
        if g.overflow || g.dirty.contains(key) {
            return;
        }
        g.dirty.insert(key.clone());
        if g.dirty.len() > DIRTY_MIN && g.dirty.len() > g.map().len() / FULL_FRACTION {
            // Most of the group changed: writing it in full is as cheap as a delta, and not
            // tracking the keys keeps memory bounded.
            g.overflow = true;
            g.dirty = FxHashSet::default();
        }
    }

    #[inline]
    pub(crate) fn group_ref(&self, kg: usize) -> &FxHashMap<K, V> {
        self.groups[kg - self.first].map()
    }

    /// Forgets how earlier checkpoints store the groups: the next checkpoint writes every
    /// group in full (after a restore from another job's storage, whose files later
    /// checkpoints cannot reference).
    pub(crate) fn forget_chains(&mut self) {
        for g in &mut self.groups {
            g.committed = Chain::default();
            g.pending.clear();
        }
    }

    /// Number of entries over all key groups.
    pub(crate) fn len(&self) -> usize {
        self.groups.iter().map(|g| g.map().len()).sum()
    }
}

/// What a checkpoint writes for one key group.
enum Part<K, V> {
    Unchanged,
    Full(Arc<FxHashMap<K, V>>),
    Delta(Vec<(K, Option<V>)>),
}

/// A key group as captured at a barrier, encoded later.
struct Captured<K, V> {
    chain: Chain,
    part: Part<K, V>,
}

/// The encoded form of a key group (postcard): its chain, then what this checkpoint wrote.
#[derive(Serialize)]
struct GroupOut<'a, K, V> {
    ids: &'a [u64],
    base_len: u64,
    delta_entries: u64,
    part: PartOut<'a, K, V>,
}

#[derive(Serialize)]
enum PartOut<'a, K, V> {
    Unchanged,
    Full(&'a FxHashMap<K, V>),
    Delta(&'a [(K, Option<V>)]),
}

#[derive(Deserialize)]
#[serde(bound(deserialize = "K: Deserialize<'de> + Hash + Eq, V: Deserialize<'de>"))]
struct GroupIn<K, V> {
    ids: Vec<u64>,
    base_len: u64,
    delta_entries: u64,
    part: PartIn<K, V>,
}

#[derive(Deserialize)]
#[serde(bound(deserialize = "K: Deserialize<'de> + Hash + Eq, V: Deserialize<'de>"))]
enum PartIn<K, V> {
    Unchanged,
    Full(Sized<K, V>),
    Delta(Vec<(K, Option<V>)>),
}

/// Serializes captured groups like a `Vec`, releasing each as soon as it is encoded: a worker
/// that writes to that key group afterwards takes its map back without a copy.
struct Encoding<K, V>(RefCell<Vec<Captured<K, V>>>);

impl<K: Serialize, V: Serialize> Serialize for Encoding<K, V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut groups = self.0.borrow_mut();
        let mut seq = s.serialize_seq(Some(groups.len()))?;
        for g in groups.drain(..) {
            let part = match &g.part {
                Part::Unchanged => PartOut::Unchanged,
                Part::Full(m) => PartOut::Full(m),
                Part::Delta(d) => PartOut::Delta(d),
            };
            seq.serialize_element(&GroupOut {
                ids: &g.chain.ids,
                base_len: g.chain.base_len,
                delta_entries: g.chain.delta_entries,
                part,
            })?;
        }
        seq.end()
    }
}

/// Reads the same table in the files of an earlier checkpoint (by id), for restores of
/// incremental checkpoints.
pub(crate) type Earlier<'a> = dyn Fn(u64) -> Result<&'a [u8], String> + 'a;

/// A table's capture for one checkpoint: the encoder to run off the worker, and the earlier
/// checkpoints whose files it references.
pub(crate) struct TableSnapshot {
    pub(crate) encode: Box<dyn FnOnce() -> Result<Vec<u8>, String> + Send>,
    pub(crate) refs: BTreeSet<u64>,
}

impl<K: StateData + Hash + Eq, V: StateData> KeyGroups<K, V> {
    /// Captures the tables for checkpoint `id`: O(key groups) plus a copy of the values of
    /// the keys changed since the newest completed checkpoint for groups written as deltas.
    pub(crate) fn snapshot(&mut self, id: u64) -> TableSnapshot {
        let Some(inc) = self.inc.clone() else {
            // Full checkpoints: every group in full, nothing referenced.
            let captured = self
                .groups
                .iter_mut()
                .map(|g| {
                    let map = freeze(&mut g.slot);
                    Captured {
                        chain: Chain {
                            ids: vec![id],
                            base_len: map.len() as u64,
                            delta_entries: 0,
                        },
                        part: Part::Full(map),
                    }
                })
                .collect();
            return self.encoder(captured, BTreeSet::new());
        };
        let completed = inc.completed.load(Ordering::Acquire);
        let max_chain = inc.max_chain as u64;
        // Settle what completed, and decide which groups must or may be rewritten in full.
        let mut optional = Vec::new();
        let mut deltas_by_size = Vec::new();
        let mut full = vec![false; self.groups.len()];
        for (i, g) in self.groups.iter_mut().enumerate() {
            if let Some(pos) = g.pending.iter().position(|c| c.id == completed) {
                g.committed = g.pending[pos].chain.clone();
                g.pending.drain(..=pos);
            }
            let keys_known = !g.overflow && g.pending.iter().all(|c| c.keys.is_some());
            let deltas = g.committed.ids.len().saturating_sub(1) as u64;
            let changed = g.dirty.len() as u64
                + g.pending
                    .iter()
                    .map(|c| c.keys.as_ref().map_or(0, |k| k.len() as u64))
                    .sum::<u64>();
            let entries = g.committed.delta_entries + changed;
            if g.committed.ids.is_empty()
                || !keys_known
                || deltas >= max_chain
                // A restore would apply more delta entries than the group has.
                || entries > g.committed.base_len + DIRTY_MIN as u64
                || (changed > DIRTY_MIN as u64
                    && changed > (g.map().len() / FULL_FRACTION) as u64)
            {
                full[i] = true;
            } else {
                if changed > 0 && (2 * deltas >= max_chain || 2 * entries > g.committed.base_len) {
                    optional.push((deltas, entries, i));
                }
                deltas_by_size.push((changed, i));
            }
        }
        // Rewrite a few of the groups whose chains grew long, longest first, so that full
        // rewrites are spread over checkpoints instead of all coming due at once.
        let budget = self.groups.len().div_ceil(inc.max_chain);
        let forced = full.iter().filter(|f| **f).count();
        optional.sort_unstable_by(|a, b| b.cmp(a));
        for &(_, _, i) in optional.iter().take(budget.saturating_sub(forced)) {
            full[i] = true;
        }
        // Keep the copy at the barrier short: the largest deltas beyond the budget are
        // written in full instead (frozen in O(1), encoded off the worker).
        let mut copied: u64 = deltas_by_size
            .iter()
            .filter(|(_, i)| !full[*i])
            .map(|(n, _)| n)
            .sum();
        deltas_by_size.sort_unstable_by(|a, b| b.cmp(a));
        for &(n, i) in &deltas_by_size {
            if copied <= SYNC_BUDGET {
                break;
            }
            if !full[i] {
                full[i] = true;
                copied -= n;
            }
        }
        let mut refs = BTreeSet::new();
        let mut captured = Vec::with_capacity(self.groups.len());
        for (i, g) in self.groups.iter_mut().enumerate() {
            let keys: Option<Vec<K>> = if g.overflow {
                None
            } else {
                Some(std::mem::take(&mut g.dirty).into_iter().collect())
            };
            g.overflow = false;
            let (chain, part) = if full[i] {
                let map = freeze(&mut g.slot);
                let chain = Chain {
                    ids: vec![id],
                    base_len: map.len() as u64,
                    delta_entries: 0,
                };
                (chain, Part::Full(map))
            } else {
                // Every key changed since the committed chain: this capture's and those of
                // captures that may not complete.
                let mut seen = FxHashSet::default();
                let all = keys
                    .iter()
                    .chain(g.pending.iter().filter_map(|c| c.keys.as_ref()))
                    .flatten();
                let map = g.map();
                let mut delta = Vec::new();
                for k in all {
                    if seen.insert(k) {
                        delta.push((k.clone(), map.get(k).cloned()));
                    }
                }
                if delta.is_empty() {
                    (g.committed.clone(), Part::Unchanged)
                } else {
                    let mut chain = g.committed.clone();
                    chain.ids.push(id);
                    chain.delta_entries += delta.len() as u64;
                    (chain, Part::Delta(delta))
                }
            };
            refs.extend(chain.ids.iter().copied().filter(|&c| c != id));
            g.pending.push(Capture {
                id,
                chain: chain.clone(),
                keys,
            });
            // Captures older than the newest `max_concurrent` can no longer complete (a new
            // checkpoint is only triggered when fewer are in flight): fold their keys into
            // the next one, which keeps every delta complete and memory bounded.
            while g.pending.len() > inc.max_concurrent {
                let old = g.pending.remove(0);
                let next = &mut g.pending[0];
                next.keys = match (old.keys, next.keys.take()) {
                    (Some(a), Some(b)) => {
                        let set: FxHashSet<K> = a.into_iter().chain(b).collect();
                        Some(set.into_iter().collect())
                    }
                    _ => None,
                };
            }
            captured.push(Captured { chain, part });
        }
        self.encoder(captured, refs)
    }

    fn encoder(&self, captured: Vec<Captured<K, V>>, refs: BTreeSet<u64>) -> TableSnapshot {
        let first = self.first as u32;
        TableSnapshot {
            encode: Box::new(move || {
                postcard::to_stdvec(&(first, Encoding(RefCell::new(captured))))
                    .map_err(|e| format!("cannot encode keyed state: {e}"))
            }),
            refs,
        }
    }

    /// Restores tables written by [`KeyGroups::snapshot`] for the same key-group range:
    /// `bytes` is the table of the restored checkpoint, `earlier(id)` the same table in the
    /// files of an earlier checkpoint its chains reference.
    pub(crate) fn decode(
        id: u64,
        bytes: &[u8],
        range: Range<usize>,
        inc: Option<Arc<Incremental>>,
        earlier: &Earlier<'_>,
    ) -> Result<Self, String> {
        let (first, own) = decode_table::<K, V>(bytes, &range)?;
        let mut chains: Vec<Chain> = own
            .iter()
            .map(|g| Chain {
                ids: g.ids.clone(),
                base_len: g.base_len,
                delta_entries: g.delta_entries,
            })
            .collect();
        if let Some(c) = chains.iter().find(|c| c.ids.last() > Some(&id)) {
            return Err(format!(
                "checkpoint {id} references a newer checkpoint (chain {:?})",
                c.ids
            ));
        }
        let mut maps: Vec<Option<FxHashMap<K, V>>> = (0..chains.len()).map(|_| None).collect();
        let needed: BTreeSet<u64> = chains.iter().flat_map(|c| c.ids.clone()).collect();
        let mut own = Some(own);
        // Oldest first, so that each group's full copy comes before its deltas.
        for at in needed {
            let groups = if at == id {
                own.take().expect("the newest id comes last, once")
            } else {
                decode_table::<K, V>(earlier(at)?, &range)?.1
            };
            for (i, g) in groups.into_iter().enumerate() {
                let Some(pos) = chains[i].ids.iter().position(|&c| c == at) else {
                    continue;
                };
                let kg = first + i;
                match (pos, g.part) {
                    (0, PartIn::Full(m)) => maps[i] = Some(m.0),
                    (p, PartIn::Delta(d)) if p > 0 => {
                        let m = maps[i].as_mut().ok_or_else(|| {
                            format!("key group {kg}: delta of checkpoint {at} before its full copy")
                        })?;
                        for (k, v) in d {
                            match v {
                                Some(v) => {
                                    m.insert(k, v);
                                }
                                None => {
                                    m.remove(&k);
                                }
                            }
                        }
                    }
                    _ => {
                        return Err(format!(
                            "key group {kg}: checkpoint {at} does not hold the {} its chain {:?} expects",
                            if pos == 0 { "full copy" } else { "delta" },
                            chains[i].ids
                        ))
                    }
                }
            }
        }
        let mut groups = Vec::with_capacity(chains.len());
        for (i, map) in maps.into_iter().enumerate() {
            let map =
                map.ok_or_else(|| format!("key group {}: no full copy in its chain", first + i))?;
            let committed = std::mem::take(&mut chains[i]);
            groups.push(Group {
                slot: Slot::Owned(map),
                dirty: FxHashSet::default(),
                overflow: false,
                committed,
                pending: Vec::new(),
            });
        }
        Ok(KeyGroups {
            first: range.start,
            groups,
            inc,
        })
    }
}

/// Decodes one table part and checks it covers `range`.
#[allow(clippy::type_complexity)]
fn decode_table<K: StateData + Hash + Eq, V: StateData>(
    bytes: &[u8],
    range: &Range<usize>,
) -> Result<(usize, Vec<GroupIn<K, V>>), String> {
    let (first, groups): (u32, Vec<GroupIn<K, V>>) =
        postcard::from_bytes(bytes).map_err(|e| format!("cannot decode keyed state: {e}"))?;
    if first as usize != range.start || groups.len() != range.len() {
        return Err(format!(
            "keyed state covers key groups {first}..{} but this instance owns {}..{}",
            first as usize + groups.len(),
            range.start,
            range.end
        ));
    }
    for (i, g) in groups.iter().enumerate() {
        let sorted = g.ids.windows(2).all(|w| w[0] < w[1]);
        if g.ids.is_empty() || !sorted || g.ids.len() > 100_000 {
            return Err(format!(
                "key group {}: invalid checkpoint chain {:?}",
                first as usize + i,
                g.ids
            ));
        }
    }
    Ok((first as usize, groups))
}

/// Freezes a slot (no copy) and returns the frozen map.
fn freeze<K, V>(slot: &mut Slot<K, V>) -> Arc<FxHashMap<K, V>> {
    if let Slot::Owned(m) = slot {
        *slot = Slot::Frozen(Arc::new(std::mem::take(m)));
    }
    match slot {
        Slot::Frozen(a) => a.clone(),
        Slot::Owned(_) => unreachable!("frozen above"),
    }
}

/// A map decoded with its table sized up front from the encoded length (serde's own `HashMap`
/// impl grows from a small cautious size, rehashing many times for large state). The
/// reservation is capped, so a damaged length cannot ask for a huge allocation.
struct Sized<K, V>(FxHashMap<K, V>);

/// Largest number of entries reserved up front for one key group.
const MAX_RESERVE: usize = 1 << 22;

impl<'de, K: serde::Deserialize<'de> + Hash + Eq, V: serde::Deserialize<'de>>
    serde::Deserialize<'de> for Sized<K, V>
{
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<K, V>(std::marker::PhantomData<(K, V)>);
        impl<'de, K: serde::Deserialize<'de> + Hash + Eq, V: serde::Deserialize<'de>>
            serde::de::Visitor<'de> for Visit<K, V>
        {
            type Value = Sized<K, V>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of keyed state")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Self::Value, A::Error> {
                let n = a.size_hint().unwrap_or(0).min(MAX_RESERVE);
                let mut m = FxHashMap::with_capacity_and_hasher(n, Default::default());
                while let Some((k, v)) = a.next_entry()? {
                    m.insert(k, v);
                }
                Ok(Sized(m))
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// Types that can live in checkpointed state (keys, values, accumulators): postcard-encoded
/// (so they must not rely on `deserialize_any`: `serde_json::Value` cannot be state), cloned
/// when a key group is written while a checkpoint still encodes it, and encoded on the
/// snapshot writer thread (hence `Send + Sync`).
pub trait StateData:
    serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static
{
}
impl<T: serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static> StateData
    for T
{
}

/// A keyed table of any type, owned by a process operator.
pub(crate) trait AnyTable {
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn snapshot(&mut self, id: u64) -> TableSnapshot;
    fn restore(&mut self, id: u64, bytes: &[u8], earlier: &Earlier<'_>) -> Result<(), String>;
    fn forget_chains(&mut self);
}

impl<K: StateData + Hash + Eq, V: StateData> AnyTable for KeyGroups<K, V> {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn snapshot(&mut self, id: u64) -> TableSnapshot {
        KeyGroups::snapshot(self, id)
    }
    fn restore(&mut self, id: u64, bytes: &[u8], earlier: &Earlier<'_>) -> Result<(), String> {
        let range = self.first..self.first + self.groups.len();
        *self = KeyGroups::decode(id, bytes, range, self.inc.clone(), earlier)?;
        Ok(())
    }
    fn forget_chains(&mut self) {
        KeyGroups::forget_chains(self)
    }
}

fn table<'c, K: 'static, V: 'static>(
    tables: &'c [Box<dyn AnyTable>],
    idx: usize,
    name: &str,
) -> &'c KeyGroups<K, V> {
    tables[idx]
        .as_any()
        .downcast_ref::<KeyGroups<K, V>>()
        .unwrap_or_else(|| {
            panic!("state handle `{name}` used with an operator that did not create it")
        })
}

fn table_mut<'c, K: 'static, V: 'static>(
    tables: &'c mut [Box<dyn AnyTable>],
    idx: usize,
    name: &str,
) -> &'c mut KeyGroups<K, V> {
    tables[idx]
        .as_any_mut()
        .downcast_mut::<KeyGroups<K, V>>()
        .unwrap_or_else(|| {
            panic!("state handle `{name}` used with an operator that did not create it")
        })
}

/// A single value per key.
pub struct ValueState<V> {
    pub(crate) idx: usize,
    pub(crate) name: &'static str,
    pub(crate) _v: PhantomData<fn() -> V>,
}

impl<V> Clone for ValueState<V> {
    fn clone(&self) -> Self {
        ValueState {
            idx: self.idx,
            name: self.name,
            _v: PhantomData,
        }
    }
}

impl<V: StateData> ValueState<V> {
    /// The current key's value.
    pub fn get<'c, K: Hash + Eq + StateData, O>(
        &self,
        ctx: &'c KeyedContext<'_, K, O>,
    ) -> Option<&'c V> {
        table::<K, V>(ctx.tables, self.idx, self.name)
            .group_ref(ctx.key_group)
            .get(ctx.key)
    }

    /// The current key's value, mutable.
    pub fn get_mut<'c, K: Hash + Eq + StateData, O>(
        &self,
        ctx: &'c mut KeyedContext<'_, K, O>,
    ) -> Option<&'c mut V> {
        let key = ctx.key;
        let t = table_mut::<K, V>(ctx.tables, self.idx, self.name);
        t.touch(ctx.key_group, key);
        t.group(ctx.key_group).get_mut(key)
    }

    /// Sets the current key's value.
    pub fn set<K: Hash + Eq + StateData, O>(&self, ctx: &mut KeyedContext<'_, K, O>, value: V) {
        let key = ctx.key;
        let t = table_mut::<K, V>(ctx.tables, self.idx, self.name);
        t.touch(ctx.key_group, key);
        let map = t.group(ctx.key_group);
        match map.get_mut(key) {
            Some(v) => *v = value,
            None => {
                map.insert(key.clone(), value);
            }
        }
    }

    /// Removes and returns the current key's value.
    pub fn clear<K: Hash + Eq + StateData, O>(
        &self,
        ctx: &mut KeyedContext<'_, K, O>,
    ) -> Option<V> {
        let key = ctx.key;
        let t = table_mut::<K, V>(ctx.tables, self.idx, self.name);
        t.touch(ctx.key_group, key);
        t.group(ctx.key_group).remove(key)
    }
}

/// A map per key.
pub struct MapState<UK, UV> {
    pub(crate) idx: usize,
    pub(crate) name: &'static str,
    pub(crate) _v: PhantomData<fn() -> (UK, UV)>,
}

impl<UK, UV> Clone for MapState<UK, UV> {
    fn clone(&self) -> Self {
        MapState {
            idx: self.idx,
            name: self.name,
            _v: PhantomData,
        }
    }
}

impl<UK: Hash + Eq + StateData, UV: StateData> MapState<UK, UV> {
    fn map<'c, K: Hash + Eq + StateData, O>(
        &self,
        ctx: &'c KeyedContext<'_, K, O>,
    ) -> Option<&'c FxHashMap<UK, UV>> {
        table::<K, FxHashMap<UK, UV>>(ctx.tables, self.idx, self.name)
            .group_ref(ctx.key_group)
            .get(ctx.key)
    }

    fn table_mut<'c, K: Hash + Eq + StateData, O>(
        &self,
        ctx: &'c mut KeyedContext<'_, K, O>,
    ) -> &'c mut FxHashMap<K, FxHashMap<UK, UV>> {
        let t = table_mut::<K, FxHashMap<UK, UV>>(ctx.tables, self.idx, self.name);
        t.touch(ctx.key_group, ctx.key);
        t.group(ctx.key_group)
    }

    /// The current key's entry for `user_key`.
    pub fn get<'c, K: Hash + Eq + StateData, O>(
        &self,
        ctx: &'c KeyedContext<'_, K, O>,
        user_key: &UK,
    ) -> Option<&'c UV> {
        table::<K, FxHashMap<UK, UV>>(ctx.tables, self.idx, self.name)
            .group_ref(ctx.key_group)
            .get(ctx.key)
            .and_then(|m| m.get(user_key))
    }

    /// Inserts an entry for the current key; returns the previous value.
    pub fn insert<K: Hash + Eq + StateData, O>(
        &self,
        ctx: &mut KeyedContext<'_, K, O>,
        user_key: UK,
        value: UV,
    ) -> Option<UV> {
        let key = ctx.key;
        let map = self.table_mut(ctx);
        if let Some(m) = map.get_mut(key) {
            return m.insert(user_key, value);
        }
        let mut m = FxHashMap::default();
        m.insert(user_key, value);
        map.insert(key.clone(), m);
        None
    }

    /// Removes an entry of the current key.
    pub fn remove<K: Hash + Eq + StateData, O>(
        &self,
        ctx: &mut KeyedContext<'_, K, O>,
        user_key: &UK,
    ) -> Option<UV> {
        let key = ctx.key;
        self.map(ctx)?.get(user_key)?;
        let map = self.table_mut(ctx);
        let m = map.get_mut(key)?;
        let v = m.remove(user_key);
        if m.is_empty() {
            map.remove(key);
        }
        v
    }

    /// Number of entries of the current key.
    pub fn len<K: Hash + Eq + StateData, O>(&self, ctx: &KeyedContext<'_, K, O>) -> usize {
        self.map(ctx).map_or(0, |m| m.len())
    }

    /// Visits every entry of the current key (in no particular order).
    pub fn for_each<K: Hash + Eq + StateData, O>(
        &self,
        ctx: &KeyedContext<'_, K, O>,
        mut f: impl FnMut(&UK, &UV),
    ) {
        if let Some(m) = self.map(ctx) {
            m.iter().for_each(|(k, v)| f(k, v));
        }
    }

    /// Removes every entry of the current key.
    pub fn clear<K: Hash + Eq + StateData, O>(&self, ctx: &mut KeyedContext<'_, K, O>) {
        let key = ctx.key;
        if self.map(ctx).is_some() {
            self.table_mut(ctx).remove(key);
        }
    }
}

/// A list per key.
pub struct ListState<V> {
    pub(crate) idx: usize,
    pub(crate) name: &'static str,
    pub(crate) _v: PhantomData<fn() -> V>,
}

impl<V> Clone for ListState<V> {
    fn clone(&self) -> Self {
        ListState {
            idx: self.idx,
            name: self.name,
            _v: PhantomData,
        }
    }
}

impl<V: StateData> ListState<V> {
    /// Appends to the current key's list.
    pub fn push<K: Hash + Eq + StateData, O>(&self, ctx: &mut KeyedContext<'_, K, O>, value: V) {
        let key = ctx.key;
        let t = table_mut::<K, Vec<V>>(ctx.tables, self.idx, self.name);
        t.touch(ctx.key_group, key);
        let map = t.group(ctx.key_group);
        match map.get_mut(key) {
            Some(l) => l.push(value),
            None => {
                map.insert(key.clone(), vec![value]);
            }
        }
    }

    /// The current key's list (empty if none).
    pub fn get<'c, K: Hash + Eq + StateData, O>(&self, ctx: &'c KeyedContext<'_, K, O>) -> &'c [V] {
        table::<K, Vec<V>>(ctx.tables, self.idx, self.name)
            .group_ref(ctx.key_group)
            .get(ctx.key)
            .map_or(&[], |l| l.as_slice())
    }

    /// Removes and returns the current key's list.
    pub fn take<K: Hash + Eq + StateData, O>(&self, ctx: &mut KeyedContext<'_, K, O>) -> Vec<V> {
        let key = ctx.key;
        let t = table_mut::<K, Vec<V>>(ctx.tables, self.idx, self.name);
        if !t.group_ref(ctx.key_group).contains_key(key) {
            return Vec::new();
        }
        t.touch(ctx.key_group, key);
        t.group(ctx.key_group).remove(key).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use proptest::prelude::*;

    use super::*;

    fn no_earlier(id: u64) -> Result<&'static [u8], String> {
        Err(format!("no checkpoint {id}"))
    }

    fn inc(max_chain: usize, max_concurrent: usize) -> Option<Arc<Incremental>> {
        Some(Arc::new(Incremental {
            completed: AtomicU64::new(0),
            max_chain,
            max_concurrent,
        }))
    }

    /// A snapshot sees the state at its barrier, whatever is written afterwards, and writes
    /// after it never lose data (the frozen copy is taken back or copied).
    #[test]
    fn copy_on_write_snapshot_is_isolated_from_later_writes() {
        let mut t: KeyGroups<u64, u64> = KeyGroups::new(0..4, None);
        for k in 0..100u64 {
            t.group((k % 4) as usize).insert(k, k);
        }
        let snap = t.snapshot(1);
        assert!(snap.refs.is_empty(), "a full checkpoint references nothing");
        for k in 0..100u64 {
            *t.group((k % 4) as usize).get_mut(&k).unwrap() += 1000;
        }
        t.group(1).insert(999, 1);
        let bytes = (snap.encode)().unwrap();
        let restored: KeyGroups<u64, u64> =
            KeyGroups::decode(1, &bytes, 0..4, None, &no_earlier).unwrap();
        for k in 0..100u64 {
            assert_eq!(restored.group_ref((k % 4) as usize)[&k], k);
            assert_eq!(t.group_ref((k % 4) as usize)[&k], k + 1000);
        }
        assert_eq!(restored.len(), 100);
        assert_eq!(t.len(), 101);
        // Once the encoder dropped its copy, taking a group back does not copy it.
        let snap = t.snapshot(2);
        drop(snap);
        t.group(2).insert(5000, 5);
        assert_eq!(t.len(), 102);
        // Decoding into another key-group range is refused.
        let e = KeyGroups::<u64, u64>::decode(1, &bytes, 0..3, None, &no_earlier)
            .err()
            .unwrap();
        assert!(e.contains("key groups 0..4"), "{e}");
    }

    /// An unchanged table writes next to nothing and references the checkpoint holding it;
    /// a small change writes only the changed key.
    #[test]
    fn incremental_checkpoints_write_only_what_changed() {
        let inc = inc(64, 1);
        let mut t: KeyGroups<u64, u64> = KeyGroups::new(0..8, inc.clone());
        for k in 0..10_000u64 {
            t.touch((k % 8) as usize, &k);
            t.group((k % 8) as usize).insert(k, k);
        }
        let s1 = t.snapshot(1);
        let full = (s1.encode)().unwrap();
        assert!(full.len() > 20_000, "{}", full.len());
        inc.as_ref().unwrap().completed.store(1, Ordering::Release);
        let s2 = t.snapshot(2);
        let unchanged = (s2.encode)().unwrap();
        assert!(unchanged.len() < 100, "{}", unchanged.len());
        assert_eq!(s2.refs, BTreeSet::from([1]));
        inc.as_ref().unwrap().completed.store(2, Ordering::Release);
        t.touch(3, &3);
        *t.group(3).get_mut(&3).unwrap() = 33;
        let s3 = t.snapshot(3);
        let delta = (s3.encode)().unwrap();
        assert!(delta.len() < 120, "{}", delta.len());
        assert_eq!(s3.refs, BTreeSet::from([1]));
        let files: HashMap<u64, Vec<u8>> = HashMap::from([(1, full), (2, unchanged)]);
        let earlier = |id: u64| {
            files
                .get(&id)
                .map(|b| b.as_slice())
                .ok_or_else(|| format!("no checkpoint {id}"))
        };
        let r: KeyGroups<u64, u64> = KeyGroups::decode(3, &delta, 0..8, None, &earlier).unwrap();
        assert_eq!(r.len(), 10_000);
        assert_eq!(r.group_ref(3)[&3], 33);
        assert_eq!(r.group_ref(4)[&4], 4);
        // A chain that names a missing checkpoint is an error, not empty state.
        let e = KeyGroups::<u64, u64>::decode(3, &delta, 0..8, None, &no_earlier)
            .err()
            .unwrap();
        assert!(e.contains("no checkpoint 1"), "{e}");
    }

    /// A checkpoint in flight in the model: expected state, encoded table, references.
    type InFlight = (BTreeMap<u16, u32>, Vec<u8>, BTreeSet<u64>);

    #[derive(Debug, Clone)]
    enum Op {
        Put(u16, u32),
        Remove(u16),
        Checkpoint,
        Complete,
        Abort,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u16..300, any::<u32>()).prop_map(|(k, v)| Op::Put(k, v)),
            2 => (0u16..300).prop_map(Op::Remove),
            2 => Just(Op::Checkpoint),
            2 => Just(Op::Complete),
            1 => Just(Op::Abort),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Reference model: whatever sequence of writes, checkpoints, completions and aborts
        /// (with up to `max_concurrent` checkpoints in flight), restoring any completed
        /// checkpoint gives exactly the state at its barrier, chains stay bounded, and a
        /// checkpoint only references completed checkpoints that the newest `max_concurrent`
        /// completed ones still hold.
        #[test]
        fn incremental_restore_matches_the_model(
            ops in proptest::collection::vec(op(), 1..400),
            max_chain in 1usize..6,
            max_concurrent in 1usize..3,
        ) {
            let inc = inc(max_chain, max_concurrent);
            let mut t: KeyGroups<u16, u32> = KeyGroups::new(2..6, inc.clone());
            let mut model: BTreeMap<u16, u32> = BTreeMap::new();
            let kg = |k: u16| 2 + (k as usize % 4);
            // In flight: id -> (expected state, encoded bytes, refs).
            let mut in_flight: BTreeMap<u64, InFlight> = BTreeMap::new();
            let mut completed: Vec<(u64, BTreeMap<u16, u32>)> = Vec::new();
            let mut files: HashMap<u64, Vec<u8>> = HashMap::new();
            // Files a completed checkpoint needs (its own and the ones it references).
            let mut needs: HashMap<u64, BTreeSet<u64>> = HashMap::new();
            let mut next = 1u64;
            for op in ops {
                match op {
                    Op::Put(k, v) => {
                        t.touch(kg(k), &k);
                        t.group(kg(k)).insert(k, v);
                        model.insert(k, v);
                    }
                    Op::Remove(k) => {
                        t.touch(kg(k), &k);
                        t.group(kg(k)).remove(&k);
                        model.remove(&k);
                    }
                    Op::Checkpoint => {
                        if in_flight.len() < max_concurrent {
                            let s = t.snapshot(next);
                            let bytes = (s.encode)().unwrap();
                            in_flight.insert(next, (model.clone(), bytes, s.refs));
                            next += 1;
                        }
                    }
                    Op::Complete | Op::Abort => {
                        if let Some((id, (state, bytes, refs))) = in_flight.pop_first() {
                            if matches!(op, Op::Complete) {
                                // Everything it references is a completed checkpoint whose
                                // files one of the newest `max_concurrent` completed
                                // checkpoints still needs (what retention keeps).
                                let recent: BTreeSet<u64> = completed
                                    .iter()
                                    .rev()
                                    .take(max_concurrent)
                                    .flat_map(|(c, _)| needs[c].iter().copied())
                                    .collect();
                                for r in &refs {
                                    prop_assert!(recent.contains(r), "checkpoint {} references {} (kept: {:?})", id, r, recent);
                                }
                                let mut need = refs.clone();
                                need.insert(id);
                                needs.insert(id, need);
                                files.insert(id, bytes);
                                completed.push((id, state));
                                inc.as_ref().unwrap().completed.store(id, Ordering::Release);
                            }
                        }
                    }
                }
            }
            for (id, state) in &completed {
                let earlier = |c: u64| -> Result<&[u8], String> {
                    if !needs[id].contains(&c) {
                        return Err(format!("checkpoint {id} reads {c}, which it does not list"));
                    }
                    files
                        .get(&c)
                        .map(|b| b.as_slice())
                        .ok_or_else(|| format!("no checkpoint {c}"))
                };
                let r = KeyGroups::<u16, u32>::decode(*id, &files[id], 2..6, None, &earlier)
                    .map_err(TestCaseError::fail)?;
                let got: BTreeMap<u16, u32> = (2..6)
                    .flat_map(|g| r.group_ref(g).iter().map(|(k, v)| (*k, *v)))
                    .collect();
                prop_assert_eq!(&got, state, "checkpoint {}", id);
                for g in &r.groups {
                    prop_assert!(g.committed.ids.len() <= max_chain + 1, "{:?}", g.committed);
                }
            }
        }
    }
}
