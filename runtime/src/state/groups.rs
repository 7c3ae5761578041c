//! Keyed tables: one hash map per key group, copy-on-write snapshots, incremental checkpoints.
//!
//! **Copy-on-write with an overlay.** A key group's map lives in an `Arc`. A checkpoint
//! freezes the groups it writes by cloning that `Arc` (O(1) each: the synchronous part) and
//! hands them to the snapshot writer thread. Until the writer drops its reference, writes to
//! such a group go to a small *overlay* map (`None` marks a removed key) and reads look there
//! first; the first access after the writer is done folds the overlay back into the map. So
//! no key group is ever copied whole because a checkpoint is being written, and a snapshot
//! sees each group exactly as it was at its barrier.
//!
//! **Incremental checkpoints.** Every write records its key in the group's dirty-key log, once
//! per checkpoint: entries carry the epoch (capture number) in which their key was last
//! recorded, so repeated writes of a key between two checkpoints cost a comparison, and the
//! first one a push onto a vector. At a
//! barrier a group is written as `Unchanged` (nothing), as a `Delta` (the keys changed since
//! the newest *completed* checkpoint, looked up in the frozen map by the writer thread, `None`
//! for removed ones) on top of its *chain* (the checkpoint holding its full copy, then those
//! holding deltas), or `Full`. Deltas are relative to the committed chain, not to the previous
//! capture, so an aborted checkpoint never breaks a chain: the keys of captures that may still
//! fail are carried into the next delta. Groups are rewritten in full when their chains grow
//! long, when much of them changed, and so that a restore never applies more than
//! 1/`RESTORE_DELTA_FRACTION` as many entries in vain (overwritten or removed by a later delta)
//! as the table has live entries. Inserts are never applied in vain: a growing state is
//! written about once.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};

use super::StateData;
use crate::encoding::{Deferred, SectionOut, Stream};

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

/// How a checkpoint stores one key group: a full copy written by checkpoint `ids[0]`, then the
/// deltas written by `ids[1..]`, applied in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Chain {
    ids: Vec<u64>,
    /// Entries of the full copy.
    base_len: u64,
    /// Entries of all deltas together (what a restore applies on top of the full copy).
    delta_entries: u64,
    /// Entries of the group when the chain's newest checkpoint captured it (not stored in
    /// the files: a restored group's length). What it grew by since counts as inserted keys.
    live: u64,
}

/// A capture of a key group by a checkpoint that is not known to be complete yet.
struct Capture<K> {
    id: u64,
    chain: Chain,
    /// Keys written between the previous capture and this one; `None` when not tracked
    /// (too many): a later capture can then not be a delta until this one is settled.
    keys: Option<Arc<Vec<K>>>,
}

/// A value and the capture epoch in which its key was last recorded as changed (Flink's
/// copy-on-write state map keeps a version per entry the same way). A write that finds its
/// entry stamped with the current epoch knows the key is already in the dirty-key log, so the
/// common case - a key written many times between two checkpoints - costs one comparison on
/// the entry it changes anyway.
///
/// The stamp comes first (`repr(C)`): the hash table stores `(key, entry)` pairs, so it sits
/// right after the key, on the cache line the lookup has just loaded, instead of behind a
/// large value on a line of its own (that second miss cost ~4% of a keyed job's time).
#[derive(Clone)]
#[repr(C)]
struct Entry<V> {
    epoch: u64,
    value: V,
}

impl<V> Entry<V> {
    /// Stamps the entry with `track`'s epoch; true if it was not stamped with it yet, i.e. its
    /// key must be recorded as changed.
    #[inline]
    fn restamp(&mut self, track: Option<u64>) -> bool {
        match track {
            Some(epoch) if self.epoch != epoch => {
                self.epoch = epoch;
                true
            }
            _ => false,
        }
    }

    /// A value stamped with `track`'s epoch (or 0 when nothing is tracked).
    #[inline]
    fn new(value: V, track: Option<u64>) -> Self {
        Entry {
            value,
            epoch: track.unwrap_or(0),
        }
    }
}

/// A key group's map: owned, or shared with the snapshot writer (then writes go to the
/// group's overlay).
enum Slot<K, V> {
    Owned(FxHashMap<K, Entry<V>>),
    Shared(Arc<FxHashMap<K, Entry<V>>>),
}

/// Writes made while a group's map is shared (`None`: removed).
type Overlay<K, V> = FxHashMap<K, Option<Entry<V>>>;

/// The keys of a group written since the last capture, in the order they were first written
/// in this epoch: a log, not a set. Entry stamps keep a key from being logged twice while its
/// entry lives, and `removed` while it is taken out and put back, so a key repeats only
/// when it was removed and inserted again within one epoch with another key removed between
/// (or while a checkpoint encodes its group: writes to the overlay do not look at stamps); a
/// delta then lists it twice with the same value, which a restore applies idempotently. (A
/// set cost every insert of a new key a probe and an insert into a second hash table: 4.5% of
/// Nexmark q4's CPU time, whose state is mostly keys inserted once and removed later.)
///
/// Repeats are removed whenever the log grows past `check_at` (twice its length after the last
/// removal, at least the overflow bound), so a key taken out and put back many times within an
/// epoch (a list drained and refilled) costs amortized O(1) per write and memory stays within
/// twice the distinct keys. The overflow bound applies to distinct keys.
struct Dirty<K> {
    keys: Vec<K>,
    /// Entries of the group when this epoch began: what it grew by since are inserted keys,
    /// which never count toward the overflow bound (a delta holds them, but so would a full
    /// copy, besides every older entry).
    start_len: usize,
    /// Too many keys changed to track them: the next capture writes the group in full.
    overflow: bool,
    /// Log length from which repeats are removed (and the overflow bound checked).
    check_at: usize,
    /// The key last removed from the owned map in this epoch: it is in `keys` (or the log
    /// overflowed), so inserting it again need not log it twice. Code that takes a value out
    /// and puts it back (`ValueState::clear`, change, `set`) would otherwise push every
    /// write onto the log, not every key. The log is replaced when the epoch changes, and
    /// this with it.
    removed: Option<K>,
}

impl<K> Default for Dirty<K> {
    fn default() -> Self {
        Dirty {
            keys: Vec::new(),
            start_len: 0,
            overflow: false,
            check_at: 0,
            removed: None,
        }
    }
}

impl<K: Hash + Eq + Clone> Dirty<K> {
    /// Records `key` (of a group with `len` entries) as changed.
    #[inline]
    fn record(&mut self, key: &K, len: usize) {
        if self.overflow {
            return;
        }
        self.keys.push(key.clone());
        let bound = DIRTY_MIN.max(len / FULL_FRACTION) + len.saturating_sub(self.start_len);
        if self.keys.len() <= self.check_at.max(bound) {
            return;
        }
        let distinct = without_repeats(self.keys.iter());
        if distinct.len() > bound {
            // Much of what the group held changed: writing it in full costs about what a
            // delta would, and not tracking the keys keeps memory bounded (within 1/4 of the
            // group plus the keys it grew by).
            self.overflow = true;
            self.keys = Vec::new();
            return;
        }
        if distinct.len() < self.keys.len() {
            self.keys = distinct.into_iter().cloned().collect();
        }
        self.check_at = 2 * self.keys.len();
    }
}

/// The keys of `keys`, each once, in the order of their first occurrence.
fn without_repeats<'a, K: Hash + Eq>(keys: impl Iterator<Item = &'a K>) -> Vec<&'a K> {
    let mut seen = FxHashSet::with_capacity_and_hasher(keys.size_hint().0, Default::default());
    keys.filter(|k| seen.insert(*k)).collect()
}

/// A key group: its map and what incremental checkpoints know about its changes.
struct Group<K, V> {
    /// The entries.
    slot: Slot<K, V>,
    /// Writes made while the map is shared. Empty whenever it is owned.
    overlay: Overlay<K, V>,
    /// Keys written since the last capture (when incremental tracking is on). Invariant: an
    /// entry stamped with the current epoch has its key here (or `overflow` is set).
    dirty: Dirty<K>,
    /// How the newest completed checkpoint stores this group (empty: none does).
    committed: Chain,
    /// Captures of checkpoints that may still complete, oldest first.
    pending: Vec<Capture<K>>,
}

fn apply<K: Hash + Eq, V>(map: &mut FxHashMap<K, Entry<V>>, overlay: &mut Overlay<K, V>) {
    for (k, v) in overlay.drain() {
        match v {
            Some(v) => map.insert(k, v),
            None => map.remove(&k),
        };
    }
}

/// The map to write to directly, unless a checkpoint still holds it. Once the writer released
/// it, it is taken back (no copy) and the overlay folded in.
#[inline]
fn owned<'a, K: Hash + Eq, V>(
    slot: &'a mut Slot<K, V>,
    overlay: &mut Overlay<K, V>,
) -> Option<&'a mut FxHashMap<K, Entry<V>>> {
    if let Slot::Shared(arc) = slot {
        Arc::get_mut(arc)?;
        let arc = std::mem::replace(arc, Arc::new(FxHashMap::default()));
        let mut map = Arc::try_unwrap(arc).ok().expect("unique: checked above");
        apply(&mut map, overlay);
        *slot = Slot::Owned(map);
    }
    match slot {
        Slot::Owned(m) => Some(m),
        Slot::Shared(_) => unreachable!("taken back above"),
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Group<K, V> {
    fn new(map: FxHashMap<K, Entry<V>>) -> Self {
        Group {
            slot: Slot::Owned(map),
            overlay: FxHashMap::default(),
            dirty: Dirty::default(),
            committed: Chain::default(),
            pending: Vec::new(),
        }
    }

    /// The map (owned or shared), without the overlay.
    #[inline]
    fn map(&self) -> &FxHashMap<K, Entry<V>> {
        self_map(&self.slot)
    }

    /// The map as it is now, in one piece, for a checkpoint to share: O(1) unless an earlier
    /// checkpoint still holds it and writes went to the overlay since (then it is copied).
    fn freeze(&mut self) -> Arc<FxHashMap<K, Entry<V>>> {
        if owned(&mut self.slot, &mut self.overlay).is_none() && !self.overlay.is_empty() {
            let mut map = self.map().clone();
            apply(&mut map, &mut self.overlay);
            self.slot = Slot::Shared(Arc::new(map));
        }
        if let Slot::Owned(m) = &mut self.slot {
            self.slot = Slot::Shared(Arc::new(std::mem::take(m)));
        }
        match &self.slot {
            Slot::Shared(a) => a.clone(),
            Slot::Owned(_) => unreachable!("shared above"),
        }
    }

    #[inline]
    fn get(&self, k: &K) -> Option<&V> {
        if !self.overlay.is_empty() {
            if let Some(v) = self.overlay.get(k) {
                return v.as_ref().map(|e| &e.value);
            }
        }
        self.map().get(k).map(|e| &e.value)
    }

    /// The number of entries of the map, and the fields a write changes, borrowed apart.
    #[inline]
    fn parts(&mut self) -> (usize, &mut Slot<K, V>, &mut Overlay<K, V>, &mut Dirty<K>) {
        let len = self.map().len();
        (len, &mut self.slot, &mut self.overlay, &mut self.dirty)
    }

    #[inline]
    fn get_mut(&mut self, k: &K, track: Option<u64>) -> Option<&mut V> {
        let (len, slot, overlay, dirty) = self.parts();
        let entry = if owned(slot, overlay).is_some() {
            match slot {
                Slot::Owned(map) => map.get_mut(k)?,
                Slot::Shared(_) => unreachable!("owned"),
            }
        } else {
            if !overlay.contains_key(k) {
                let e = self_map(slot).get(k)?.clone();
                overlay.insert(k.clone(), Some(e));
            }
            overlay.get_mut(k)?.as_mut()?
        };
        if entry.restamp(track) {
            dirty.record(k, len);
        }
        Some(&mut entry.value)
    }

    #[inline]
    fn insert(&mut self, k: K, v: V, track: Option<u64>) {
        let (len, slot, overlay, dirty) = self.parts();
        match owned(slot, overlay) {
            Some(map) => match map.entry(k) {
                std::collections::hash_map::Entry::Occupied(mut o) => {
                    if o.get_mut().restamp(track) {
                        dirty.record(o.key(), len);
                    }
                    o.get_mut().value = v;
                }
                std::collections::hash_map::Entry::Vacant(slot) => {
                    fill(slot, v, track, dirty, len);
                }
            },
            // Rare (only while a checkpoint encodes this group).
            None => overlay_insert(overlay, k, v, track, dirty, len),
        }
    }

    /// Inserts `k` unless it is present; true if it was inserted.
    #[inline]
    fn insert_new(&mut self, k: K, v: V, track: Option<u64>) -> bool {
        let (len, slot, overlay, dirty) = self.parts();
        match owned(slot, overlay) {
            Some(map) => match map.entry(k) {
                std::collections::hash_map::Entry::Occupied(_) => false,
                std::collections::hash_map::Entry::Vacant(slot) => {
                    fill(slot, v, track, dirty, len);
                    true
                }
            },
            None => {
                let present = match overlay.get(&k) {
                    Some(e) => e.is_some(),
                    None => self_map(slot).contains_key(&k),
                };
                if !present {
                    overlay_insert(overlay, k, v, track, dirty, len);
                }
                !present
            }
        }
    }

    #[inline]
    fn remove(&mut self, k: &K, track: Option<u64>) -> Option<V> {
        let (len, slot, overlay, dirty) = self.parts();
        if let Some(map) = owned(slot, overlay) {
            let (key, mut e) = map.remove_entry(k)?;
            if e.restamp(track) {
                dirty.record(&key, len);
            }
            // The key is logged in this epoch now; the removed key is kept (no clone) to
            // recognise it when it is inserted again.
            if track.is_some() {
                dirty.removed = Some(key);
            }
            return Some(e.value);
        }
        let old = match overlay.get_mut(k) {
            Some(slot) => slot.take(),
            None => {
                let old = self_map(slot).get(k).cloned();
                if old.is_some() {
                    overlay.insert(k.clone(), None);
                }
                old
            }
        };
        if old.is_some() && track.is_some() {
            dirty.record(k, len);
        }
        old.map(|e| e.value)
    }

    fn len(&self) -> usize {
        let map = self.map();
        let mut n = map.len();
        for (k, v) in &self.overlay {
            match (map.contains_key(k), v.is_some()) {
                (false, true) => n += 1,
                (true, false) => n -= 1,
                _ => {}
            }
        }
        n
    }
}

/// Sets a vacant key of an owned map (of a group with `len` entries), logging the key unless
/// it is the one removed last in this epoch (logged then).
#[inline]
fn fill<K: Hash + Eq + Clone, V>(
    slot: std::collections::hash_map::VacantEntry<'_, K, Entry<V>>,
    v: V,
    track: Option<u64>,
    dirty: &mut Dirty<K>,
    len: usize,
) {
    if track.is_some() && dirty.removed.as_ref() != Some(slot.key()) {
        dirty.record(slot.key(), len);
    }
    slot.insert(Entry::new(v, track));
}

/// Sets `k` in the overlay of a shared map, logging it without looking at stamps.
#[inline]
fn overlay_insert<K: Hash + Eq + Clone, V>(
    overlay: &mut Overlay<K, V>,
    k: K,
    v: V,
    track: Option<u64>,
    dirty: &mut Dirty<K>,
    len: usize,
) {
    if track.is_some() {
        dirty.record(&k, len);
    }
    overlay.insert(k, Some(Entry::new(v, track)));
}

/// The map of a slot (owned or shared).
#[inline]
fn self_map<K, V>(slot: &Slot<K, V>) -> &FxHashMap<K, Entry<V>> {
    match slot {
        Slot::Owned(m) => m,
        Slot::Shared(a) => a,
    }
}

/// Restores of a table apply at most 1/`RESTORE_DELTA_FRACTION` as many entries in vain (entries
/// of full copies or deltas that a later delta overwrites or removes) as the table has live
/// entries, so a restore does at most 1.5 times the work of decoding the state in full. Keys
/// that deltas insert are not applied in vain: a growing state is written once, not again in
/// full whenever it has grown by some fraction.
const RESTORE_DELTA_FRACTION: u64 = 2;

/// Below this many tracked keys a group never overflows.
const DIRTY_MIN: usize = 1024;

/// A group with more changed keys than 1/`FULL_FRACTION` of its entries is written in full,
/// and its changed keys are no longer tracked: tracking costs every first write of a key per
/// checkpoint a push onto the dirty-key log, and memory. Keys the group grew by do not count
/// (a delta holds them, and so would a full copy, besides all the others): when they did, a
/// state growing by more than this fraction per checkpoint was rewritten in full every time
/// (Nexmark q19 with 10 s checkpoints: 1.3, 2.0, then 2.6 GB).
const FULL_FRACTION: usize = 4;

/// One hash map per key group of a subtask's key-group range (see the module docs).
pub(crate) struct KeyGroups<K, V> {
    first: usize,
    groups: Vec<Group<K, V>>,
    inc: Option<Arc<Incremental>>,
    /// Capture epoch: incremented by every snapshot, so entries stamped before it are stale.
    /// Starts at 1 (restored entries are stamped 0).
    epoch: u64,
}

impl<K: Hash + Eq + Clone, V: Clone> KeyGroups<K, V> {
    pub(crate) fn new(range: Range<usize>, inc: Option<Arc<Incremental>>) -> Self {
        KeyGroups {
            first: range.start,
            groups: range.map(|_| Group::new(FxHashMap::default())).collect(),
            inc,
            epoch: 1,
        }
    }

    #[inline]
    fn group_mut(&mut self, kg: usize) -> &mut Group<K, V> {
        debug_assert!(kg >= self.first && kg < self.first + self.groups.len());
        &mut self.groups[kg - self.first]
    }

    /// The epoch to stamp writes with, when incremental checkpoints track changed keys.
    #[inline]
    fn track(&self) -> Option<u64> {
        self.inc.as_ref().map(|_| self.epoch)
    }

    /// The value of `key` in key group `kg` (an absolute index inside this subtask's range).
    #[inline]
    pub(crate) fn get(&self, kg: usize, key: &K) -> Option<&V> {
        self.groups[kg - self.first].get(key)
    }

    /// The value of `key`, to change in place.
    #[inline]
    pub(crate) fn get_mut(&mut self, kg: usize, key: &K) -> Option<&mut V> {
        let track = self.track();
        self.group_mut(kg).get_mut(key, track)
    }

    /// Sets the value of `key`.
    #[inline]
    pub(crate) fn insert(&mut self, kg: usize, key: K, value: V) {
        let track = self.track();
        self.group_mut(kg).insert(key, value, track);
    }

    /// Sets the value of `key` unless it has one; true if it was set.
    #[inline]
    pub(crate) fn insert_new(&mut self, kg: usize, key: K, value: V) -> bool {
        let track = self.track();
        self.group_mut(kg).insert_new(key, value, track)
    }

    /// Removes `key` and returns its value.
    #[inline]
    pub(crate) fn remove(&mut self, kg: usize, key: &K) -> Option<V> {
        let track = self.track();
        self.group_mut(kg).remove(key, track)
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

    /// The entries of key group `kg` as they are now (the map under its overlay), in no
    /// particular order.
    pub(crate) fn live(&self, kg: usize) -> impl Iterator<Item = (&K, &V)> + '_ {
        let g = &self.groups[kg - self.first];
        let in_map = g.map().iter().filter(|(k, _)| !g.overlay.contains_key(*k));
        let in_overlay = g
            .overlay
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|e| (k, e)));
        in_map.chain(in_overlay).map(|(k, e)| (k, &e.value))
    }

    /// The keys of key group `kg`, in no particular order.
    pub(crate) fn keys(&self, kg: usize) -> impl Iterator<Item = &K> + '_ {
        self.live(kg).map(|(k, _)| k)
    }

    /// Number of entries over all key groups.
    pub(crate) fn len(&self) -> usize {
        self.groups.iter().map(|g| g.len()).sum()
    }

    /// The entries of key group `kg`, in no particular order (tests and debugging).
    #[cfg(test)]
    pub(crate) fn entries(&self, kg: usize) -> Vec<(K, V)> {
        self.live(kg).map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// What a checkpoint writes for one key group.
enum Part<K, V> {
    Unchanged,
    Full(Arc<FxHashMap<K, Entry<V>>>),
    /// The map at the barrier and the keys to write from it (from several captures, so
    /// possibly repeated).
    Delta(Arc<FxHashMap<K, Entry<V>>>, Vec<Arc<Vec<K>>>),
    /// A delta already encoded (the map released).
    Encoded,
}

/// A key group as captured at a barrier, encoded later.
struct Captured<K, V> {
    chain: Chain,
    part: Part<K, V>,
}

const UNCHANGED: u8 = 0;
const FULL: u8 = 1;
const DELTA: u8 = 2;

/// A group's map encoded as the map of its keys to their values (stamps are not stored):
/// the same bytes as a `HashMap<K, V>`.
struct Values<'a, K, V>(&'a FxHashMap<K, Entry<V>>);

impl<K: Serialize, V: Serialize> Serialize for Values<'_, K, V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, e)| (k, &e.value)))
    }
}

/// A keyed table section starts with `(TABLE_MARK, layout)`: a first key group no table can
/// have (layout 1, which has no such prefix, starts with the first key group), then the layout
/// of what follows, [`TABLE_LAYOUT`].
const TABLE_MARK: u32 = u32::MAX;

/// The table layout this Weir writes: the parts first, in any order, then the groups' heads,
/// which say where each part is, then the heads' offset (see `docs/checkpoint-format.md`).
/// Layout 1 (written before 2026-11-28) put each head right before its part, so the part had
/// to be encoded somewhere else first to know its length; layout 2 lets the snapshot writer
/// encode parts straight into the file. Both are read.
const TABLE_LAYOUT: u32 = 2;

/// The encoded form of a key group in layout 2: its chain, and where the part this
/// checkpoint wrote for it is (offsets from the start of the section).
#[derive(Serialize)]
struct GroupHead<'a> {
    ids: &'a [u64],
    base_len: u64,
    delta_entries: u64,
    kind: u8,
    part_at: u64,
    part_len: u64,
}

/// [`GroupHead`] as read.
#[derive(Deserialize)]
struct GroupHeadIn {
    ids: Vec<u64>,
    base_len: u64,
    delta_entries: u64,
    kind: u8,
    part_at: u64,
    part_len: u64,
}

/// A group as written in layout 1: the head, then its part, length-prefixed.
#[derive(Deserialize)]
struct GroupIn<'a> {
    ids: Vec<u64>,
    base_len: u64,
    delta_entries: u64,
    kind: u8,
    part: &'a [u8],
}

/// Reads the same table in the files of an earlier checkpoint (by id), for restores of
/// incremental checkpoints.
pub(crate) type Earlier<'a> = dyn Fn(u64) -> Result<&'a [u8], String> + 'a;

/// A table's capture for one checkpoint: the encoder to run off the worker, and the earlier
/// checkpoints whose files it references.
pub(crate) struct TableSnapshot {
    pub(crate) encode: Deferred,
    pub(crate) refs: BTreeSet<u64>,
}

/// A delta part: the listed keys with their values in `map` (`None`: removed). A key repeats
/// only if one log lists it twice (see [`Dirty`]): both times with its one value in `map`.
struct DeltaOut<'a, K, V> {
    map: &'a FxHashMap<K, Entry<V>>,
    keys: &'a [Arc<Vec<K>>],
}

impl<K: Serialize + Hash + Eq, V: Serialize> Serialize for DeltaOut<'_, K, V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if let [only] = self.keys {
            // One log (the usual case): stream it.
            return s.collect_seq(Looked::new(self.map, only.iter()));
        }
        // Collected first: postcard writes the length before the elements.
        let unique = without_repeats(self.keys.iter().flat_map(|log| log.iter()));
        s.collect_seq(Looked::new(self.map, unique.into_iter()))
    }
}

/// How many keys [`Looked`] looks up ahead of the encoder.
const LOOKAHEAD: usize = 32;

/// The keys of `keys` with their values in `map` (`None`: removed), looked up [`LOOKAHEAD`]
/// at a time in a loop that does nothing else. In a large map nearly every lookup is a cache
/// miss; one lookup between two encodings waits for its miss alone, while a tight loop of
/// lookups lets the CPU wait for many misses at once (the writer thread spent 95% of its
/// time in these lookups, one at a time, on a 1 GB table). The loop also prefetches each
/// value found: the lookup loads the line of the entry's key, and a value that reaches into
/// the next line would otherwise miss again when it is encoded (the checkpoint benchmark's
/// 80-byte entries: 170 ns per entry looked up and encoded without, 125 ns with).
struct Looked<'m, K, V, I> {
    map: &'m FxHashMap<K, Entry<V>>,
    keys: I,
    ahead: Vec<(&'m K, Option<&'m V>)>,
    next: usize,
}

impl<'m, K: Hash + Eq, V, I: Iterator<Item = &'m K>> Looked<'m, K, V, I> {
    fn new(map: &'m FxHashMap<K, Entry<V>>, keys: I) -> Self {
        Looked {
            map,
            keys,
            ahead: Vec::with_capacity(LOOKAHEAD),
            next: 0,
        }
    }
}

impl<'m, K: Hash + Eq, V, I: Iterator<Item = &'m K>> Iterator for Looked<'m, K, V, I> {
    type Item = (&'m K, Option<&'m V>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next == self.ahead.len() {
            self.ahead.clear();
            self.next = 0;
            let map = self.map;
            self.ahead
                .extend(self.keys.by_ref().take(LOOKAHEAD).map(|k| {
                    let value = map.get(k).map(|e| &e.value);
                    if let Some(v) = value {
                        weir_storage::prefetch(v);
                    }
                    (k, value)
                }));
        }
        let item = self.ahead.get(self.next).copied()?;
        self.next += 1;
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let (lo, hi) = self.keys.size_hint();
        let buffered = self.ahead.len() - self.next;
        (lo + buffered, hi.map(|h| h + buffered))
    }
}

/// The heads of a table's groups, each with where its part went.
struct Heads<'a, K, V> {
    captured: &'a [Captured<K, V>],
    parts: &'a [(u8, u64, u64)],
}

impl<K, V> Serialize for Heads<'_, K, V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.captured.iter().zip(self.parts).map(
            |(c, &(kind, part_at, part_len))| GroupHead {
                ids: &c.chain.ids,
                base_len: c.chain.base_len,
                delta_entries: c.chain.delta_entries,
                kind,
                part_at,
                part_len,
            },
        ))
    }
}

/// Encodes captured groups into `out` in table layout 2, releasing each one's map as soon as
/// it is read (a worker that writes to that group afterwards folds its overlay back right
/// away). Deltas, which read a few keys per group, are encoded first, so that no group waits
/// behind the full copies (which read whole maps) to be released; the heads that follow say
/// where each part is.
fn encode<K: StateData + Hash + Eq, V: StateData>(
    first: u32,
    mut captured: Vec<Captured<K, V>>,
    out: &mut dyn SectionOut,
) -> Result<(), String> {
    let mut s = Stream::new(out);
    s.put(&(TABLE_MARK, TABLE_LAYOUT))?;
    // Each group's part kind, offset and length.
    let mut parts = vec![(UNCHANGED, 0, 0); captured.len()];
    for (c, (kind, at, len)) in captured.iter_mut().zip(&mut parts) {
        if let Part::Delta(map, keys) = &c.part {
            *at = s.position();
            s.put(&DeltaOut { map, keys })?;
            (*kind, *len) = (DELTA, s.position() - *at);
            c.part = Part::Encoded;
        }
    }
    for (c, (kind, at, len)) in captured.iter_mut().zip(&mut parts) {
        if let Part::Full(map) = std::mem::replace(&mut c.part, Part::Encoded) {
            *at = s.position();
            s.put(&Values(&map))?;
            (*kind, *len) = (FULL, s.position() - *at);
        }
    }
    let heads_at = s.position();
    s.put(&(
        first,
        Heads {
            captured: &captured,
            parts: &parts,
        },
    ))?;
    s.raw(&heads_at.to_le_bytes())?;
    s.finish()
}

impl<K: StateData + Hash + Eq, V: StateData> KeyGroups<K, V> {
    /// Captures the tables for checkpoint `id` in O(key groups) (the dirty key sets move, the
    /// maps are shared); the returned encoder runs on the snapshot writer thread.
    pub(crate) fn snapshot(&mut self, id: u64) -> TableSnapshot {
        // Every entry's stamp is now stale: its next write records its key again.
        self.epoch += 1;
        let Some(inc) = self.inc.clone() else {
            // Full checkpoints: every group in full, nothing referenced.
            let captured = self
                .groups
                .iter_mut()
                .map(|g| {
                    let map = g.freeze();
                    Captured {
                        chain: Chain {
                            ids: vec![id],
                            base_len: map.len() as u64,
                            delta_entries: 0,
                            live: map.len() as u64,
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
        let mut full = vec![false; self.groups.len()];
        // Over the groups that stay deltas: their live entries, and the entries a restore of
        // this checkpoint would apply only to overwrite or remove them later, largest first.
        let (mut live_total, mut superseded_total) = (0u64, 0u64);
        let mut by_superseded = Vec::new();
        for (i, g) in self.groups.iter_mut().enumerate() {
            if let Some(pos) = g.pending.iter().position(|c| c.id == completed) {
                g.committed = g.pending[pos].chain.clone();
                g.pending.drain(..=pos);
            }
            let keys_known = !g.dirty.overflow && g.pending.iter().all(|c| c.keys.is_some());
            let deltas = g.committed.ids.len().saturating_sub(1) as u64;
            let changed = g.dirty.keys.len() as u64
                + g.pending
                    .iter()
                    .map(|c| c.keys.as_ref().map_or(0, |k| k.len() as u64))
                    .sum::<u64>();
            let entries = g.committed.delta_entries + changed;
            let live = g.map().len() as u64;
            // A restore applies the full copy and every delta entry and ends with `live`
            // entries: the rest it applies in vain (overwritten or removed later). Keys that
            // are only inserted (a growing state) supersede nothing and never force a rewrite.
            let superseded = (g.committed.base_len + entries).saturating_sub(live);
            if g.committed.ids.is_empty()
                || !keys_known
                || deltas >= max_chain
                // A restore would apply more entries in vain than the group has.
                || superseded > live + DIRTY_MIN as u64
                // A delta would hold a good part of what the group held before anyway
                // (small groups that change are always rewritten: cheap, and their chains
                // stay short). Keys it grew by are in a delta and a full copy alike.
                || changed.saturating_sub(live.saturating_sub(g.committed.live))
                    * FULL_FRACTION as u64
                    > live
            {
                full[i] = true;
                continue;
            }
            if changed > 0 && 2 * deltas >= max_chain {
                optional.push((deltas, superseded, i));
            }
            live_total += live;
            superseded_total += superseded;
            if superseded > 0 {
                by_superseded.push((superseded, i));
            }
        }
        // Rewrite a few of the groups whose chains grew long, longest first, so that full
        // rewrites are spread over checkpoints instead of all coming due at once.
        let budget = self.groups.len().div_ceil(inc.max_chain);
        let forced = full.iter().filter(|f| **f).count();
        optional.sort_unstable_by(|a, b| b.cmp(a));
        for &(_, superseded, i) in optional.iter().take(budget.saturating_sub(forced)) {
            full[i] = true;
            superseded_total -= superseded;
        }
        // Keep what a restore applies in vain within 1/RESTORE_DELTA_FRACTION of the live
        // entries: rewrite the groups with the most such entries until it is. With keys
        // changing at a steady rate this settles into a few groups rewritten per checkpoint,
        // each about when its superseded entries reach twice that fraction.
        by_superseded.sort_unstable_by(|a, b| b.cmp(a));
        for &(superseded, i) in &by_superseded {
            if superseded_total * RESTORE_DELTA_FRACTION <= live_total {
                break;
            }
            if !full[i] {
                full[i] = true;
                superseded_total -= superseded;
            }
        }
        let mut refs = BTreeSet::new();
        let mut captured = Vec::with_capacity(self.groups.len());
        for (i, g) in self.groups.iter_mut().enumerate() {
            // The next epoch's log starts at this one's size: keys change at a steady rate, and
            // growing a log from empty copies it several times.
            let room = g.dirty.keys.len();
            // The map's length, as `Dirty::record` is given (O(1): `len` walks the overlay,
            // which has no place in the synchronous part).
            let start_len = g.map().len();
            let dirty = std::mem::replace(
                &mut g.dirty,
                Dirty {
                    keys: Vec::with_capacity(room),
                    start_len,
                    overflow: false,
                    check_at: 0,
                    removed: None,
                },
            );
            let keys = (!dirty.overflow).then(|| Arc::new(dirty.keys));
            let (chain, part) = if full[i] {
                let map = g.freeze();
                let chain = Chain {
                    ids: vec![id],
                    base_len: map.len() as u64,
                    delta_entries: 0,
                    live: map.len() as u64,
                };
                (chain, Part::Full(map))
            } else {
                // Every key changed since the committed chain: this capture's and those of
                // captures that may not complete (all known, or the group would be full).
                let sets: Vec<Arc<Vec<K>>> = keys
                    .iter()
                    .chain(g.pending.iter().filter_map(|c| c.keys.as_ref()))
                    .filter(|s| !s.is_empty())
                    .cloned()
                    .collect();
                if sets.is_empty() {
                    (g.committed.clone(), Part::Unchanged)
                } else {
                    let n: usize = sets.iter().map(|s| s.len()).sum();
                    let mut chain = g.committed.clone();
                    chain.ids.push(id);
                    chain.delta_entries += n as u64;
                    let map = g.freeze();
                    chain.live = map.len() as u64;
                    (chain, Part::Delta(map, sets))
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
                        // Without repeats: checkpoints that keep failing must not grow a log
                        // beyond the keys it names.
                        let both = without_repeats(a.iter().chain(b.iter()));
                        Some(Arc::new(both.into_iter().cloned().collect()))
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
            encode: Box::new(move |out| encode(first, captured, out)),
            refs,
        }
    }

    /// Replaces this (empty) table with the one checkpoint `id` holds; see [`KeyGroups::decode`].
    pub(crate) fn restore(
        &mut self,
        id: u64,
        bytes: &[u8],
        earlier: &Earlier<'_>,
        threads: usize,
    ) -> Result<(), String> {
        let range = self.first..self.first + self.groups.len();
        *self = KeyGroups::decode(id, bytes, range, self.inc.clone(), earlier, threads)?;
        Ok(())
    }

    /// Restores tables written by [`KeyGroups::snapshot`] for the same key-group range:
    /// `bytes` is the table of checkpoint `id`, `earlier(c)` the same table in the files of an
    /// earlier checkpoint `c` its chains reference. Only the parts a chain needs are decoded,
    /// on up to `threads` threads.
    pub(crate) fn decode(
        id: u64,
        bytes: &[u8],
        range: Range<usize>,
        inc: Option<Arc<Incremental>>,
        earlier: &Earlier<'_>,
        threads: usize,
    ) -> Result<Self, String> {
        let own = decode_table(bytes, &range)?;
        let chains: Vec<Chain> = own
            .iter()
            .map(|g| Chain {
                ids: g.ids.clone(),
                base_len: g.base_len,
                delta_entries: g.delta_entries,
                // Set once the group is restored.
                live: 0,
            })
            .collect();
        if let Some(c) = chains.iter().find(|c| c.ids.last() > Some(&id)) {
            return Err(format!(
                "checkpoint {id} references a newer checkpoint (chain {:?})",
                c.ids
            ));
        }
        let first = range.start;
        // The group headers of every table the chains need (parts stay undecoded).
        let needed: BTreeSet<u64> = chains.iter().flat_map(|c| c.ids.clone()).collect();
        let mut own = Some(own);
        let mut tables = HashMap::with_capacity(needed.len());
        for at in needed {
            let groups = if at == id {
                own.take().expect("ids are unique")
            } else {
                decode_table(earlier(at)?, &range)?
            };
            tables.insert(at, groups);
        }
        // Group by group: its full copy, then its deltas in order, while its table is still
        // in the cache (applying one checkpoint's deltas to every group in turn missed the
        // cache on almost every entry). Groups are independent: up to `threads` threads take
        // them one at a time from a shared counter (hash inserts and fresh pages dominate a
        // restore, and they vary by group and by thread: a thread whose allocator hands out
        // memory the process has touched before is faster than one that gets fresh pages,
        // which the kernel must zero; fixed runs left one thread working alone for a fifth
        // of the restore).
        let n = chains.len();
        let bytes: usize = tables
            .values()
            .flat_map(|t| t.iter().map(|g| g.part.len()))
            .sum();
        let threads = if bytes < PARALLEL_RESTORE_BYTES {
            1
        } else {
            threads.clamp(1, n.max(1))
        };
        // One thread is the caller alone (nothing spawned).
        let next = std::sync::atomic::AtomicUsize::new(0);
        let failed = std::sync::atomic::AtomicBool::new(false);
        let take = || {
            let mut done: Vec<(usize, Group<K, V>)> = Vec::new();
            while !failed.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                match decode_group(first + i, &chains[i], &tables, i) {
                    Ok(g) => done.push((i, g)),
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                }
            }
            Ok::<_, String>(done)
        };
        let runs = std::thread::scope(|scope| {
            let rest: Vec<_> = (1..threads).map(|_| scope.spawn(take)).collect();
            let mut runs = vec![take()];
            for h in rest {
                runs.push(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
            }
            runs
        });
        let mut decoded: Vec<(usize, Group<K, V>)> = runs
            .into_iter()
            .collect::<Result<Vec<_>, String>>()?
            .into_iter()
            .flatten()
            .collect();
        decoded.sort_unstable_by_key(|&(i, _)| i);
        let groups: Vec<Group<K, V>> = decoded.into_iter().map(|(_, g)| g).collect();
        debug_assert_eq!(groups.len(), n);
        Ok(KeyGroups {
            first: range.start,
            groups,
            inc,
            epoch: 1,
        })
    }
}

/// State below this many encoded bytes is restored on the calling thread alone (unit tests
/// take the parallel path at any size).
const PARALLEL_RESTORE_BYTES: usize = if cfg!(test) { 1 } else { 4 << 20 };

/// Restores key group `kg` (index `i` of its table) from its chain: the full copy, then each
/// delta in order.
fn decode_group<K: StateData + Hash + Eq, V: StateData>(
    kg: usize,
    chain: &Chain,
    tables: &HashMap<u64, Vec<GroupIn<'_>>>,
    i: usize,
) -> Result<Group<K, V>, String> {
    let mut map: Option<FxHashMap<K, Entry<V>>> = None;
    for (pos, at) in chain.ids.iter().enumerate() {
        let g = &tables[at][i];
        let bad = |what: String| format!("key group {kg}, checkpoint {at}: {what}");
        match (pos, g.kind) {
            (0, FULL) => {
                let m: Sized<K, V> = postcard::from_bytes(g.part)
                    .map_err(|e| bad(format!("cannot decode its state: {e}")))?;
                map = Some(m.0);
            }
            (p, DELTA) if p > 0 => {
                let m = map
                    .as_mut()
                    .ok_or_else(|| bad("a delta before the full copy".into()))?;
                let mut de = postcard::Deserializer::from_bytes(g.part);
                serde::de::DeserializeSeed::deserialize(ApplyDelta(m), &mut de)
                    .map_err(|e| bad(format!("cannot decode its delta: {e}")))?;
            }
            (_, kind) => {
                return Err(bad(format!(
                    "holds part kind {kind} where its chain {:?} expects {}",
                    chain.ids,
                    if pos == 0 { "the full copy" } else { "a delta" },
                )))
            }
        }
    }
    let map = map.ok_or_else(|| format!("key group {kg}: no full copy in its chain"))?;
    let mut g = Group::new(map);
    g.committed = Chain {
        live: g.map().len() as u64,
        ..chain.clone()
    };
    g.dirty.start_len = g.map().len();
    Ok(g)
}

/// Checks that state read from a checkpoint (`what`), holding `count` key groups from
/// `first` on, covers exactly this instance's key-group `range`.
pub(crate) fn check_covers(
    what: &str,
    first: u32,
    count: usize,
    range: &Range<usize>,
) -> Result<(), String> {
    if first as usize == range.start && count == range.len() {
        return Ok(());
    }
    Err(format!(
        "{what} covers key groups {first}..{} but this instance owns {}..{}",
        first as usize + count,
        range.start,
        range.end
    ))
}

/// Decodes the group headers of one table (parts stay undecoded) and checks it covers `range`.
fn decode_table<'a>(bytes: &'a [u8], range: &Range<usize>) -> Result<Vec<GroupIn<'a>>, String> {
    let bad = |e: &dyn std::fmt::Display| format!("cannot decode keyed state: {e}");
    let (first, groups) = match postcard::take_from_bytes::<(u32, u32)>(bytes) {
        Ok(((TABLE_MARK, layout), rest)) => {
            if layout != TABLE_LAYOUT {
                return Err(format!(
                    "keyed state in table layout {layout}; this Weir reads layouts 1 and {TABLE_LAYOUT}"
                ));
            }
            // Parts lie between the prefix and the heads; the heads' offset is the last 8 bytes.
            let parts_at = (bytes.len() - rest.len()) as u64;
            let Some(split) = bytes.len().checked_sub(8).filter(|&e| e as u64 >= parts_at) else {
                return Err(bad(&"the table ends before its heads' offset"));
            };
            let (body, tail) = bytes.split_at(split);
            let heads_at = u64::from_le_bytes(tail.try_into().expect("8 bytes"));
            if heads_at < parts_at || heads_at > split as u64 {
                return Err(bad(&format_args!(
                    "heads at {heads_at}, outside the table's {parts_at}..{split}"
                )));
            }
            let (first, heads): (u32, Vec<GroupHeadIn>) =
                match postcard::take_from_bytes(&body[heads_at as usize..]) {
                    Ok((v, [])) => v,
                    Ok((_, left)) => {
                        return Err(bad(&format_args!("{} bytes after the heads", left.len())))
                    }
                    Err(e) => return Err(bad(&e)),
                };
            let groups = heads
                .into_iter()
                .map(|h| {
                    // An empty part (an unchanged group) is written at offset 0.
                    let (start, end) = match h.part_len {
                        0 => (0, Some(0)),
                        len => (
                            h.part_at,
                            h.part_at
                                .checked_add(len)
                                .filter(|&end| h.part_at >= parts_at && end <= heads_at),
                        ),
                    };
                    let Some(end) = end else {
                        return Err(bad(&format_args!(
                            "part {}..+{} outside the parts {parts_at}..{heads_at}",
                            h.part_at, h.part_len
                        )));
                    };
                    Ok(GroupIn {
                        ids: h.ids,
                        base_len: h.base_len,
                        delta_entries: h.delta_entries,
                        kind: h.kind,
                        part: &bytes[start as usize..end as usize],
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            (first, groups)
        }
        // Layout 1: `(first, Vec<GroupIn>)`.
        _ => postcard::from_bytes::<(u32, Vec<GroupIn<'a>>)>(bytes).map_err(|e| bad(&e))?,
    };
    check_covers("keyed state", first, groups.len(), range)?;
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
    Ok(groups)
}

/// Decodes a delta (a sequence of `(key, Option<value>)`) straight into the map it changes,
/// entry by entry, without collecting it first.
struct ApplyDelta<'m, K, V>(&'m mut FxHashMap<K, Entry<V>>);

impl<'de, K: Deserialize<'de> + Hash + Eq, V: Deserialize<'de>> serde::de::DeserializeSeed<'de>
    for ApplyDelta<'_, K, V>
{
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, K: Deserialize<'de> + Hash + Eq, V: Deserialize<'de>> serde::de::Visitor<'de>
    for ApplyDelta<'_, K, V>
{
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a delta of keyed state")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
        while let Some((k, v)) = a.next_element::<(K, Option<V>)>()? {
            match v {
                Some(v) => self.0.insert(k, Entry::new(v, None)),
                None => self.0.remove(&k),
            };
        }
        Ok(())
    }
}

/// A map decoded with its table sized up front from the encoded length (serde's own `HashMap`
/// impl grows from a small cautious size, rehashing many times for large state). The
/// reservation is capped, so a damaged length cannot ask for a huge allocation.
struct Sized<K, V>(FxHashMap<K, Entry<V>>);

/// Largest number of entries reserved up front for one key group.
const MAX_RESERVE: usize = 1 << 22;

impl<'de, K: Deserialize<'de> + Hash + Eq, V: Deserialize<'de>> Deserialize<'de> for Sized<K, V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<K, V>(std::marker::PhantomData<(K, V)>);
        impl<'de, K: Deserialize<'de> + Hash + Eq, V: Deserialize<'de>> serde::de::Visitor<'de>
            for Visit<K, V>
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
                    m.insert(k, Entry::new(v, None));
                }
                Ok(Sized(m))
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
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

    /// Runs a table's encoder into a vector.
    fn run(encode: Deferred) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&mut out).unwrap();
        out
    }

    /// A table of layout 2 rewritten in layout 1 (each group's head right before its
    /// length-prefixed part), as Weir wrote tables before layout 2.
    fn as_layout_1(bytes: &[u8], range: &Range<usize>) -> Vec<u8> {
        #[derive(Serialize)]
        struct Whole<'a> {
            ids: &'a [u64],
            base_len: u64,
            delta_entries: u64,
            kind: u8,
            part: &'a [u8],
        }
        let groups = decode_table(bytes, range).unwrap();
        let whole: Vec<Whole<'_>> = groups
            .iter()
            .map(|g| Whole {
                ids: &g.ids,
                base_len: g.base_len,
                delta_entries: g.delta_entries,
                kind: g.kind,
                part: g.part,
            })
            .collect();
        postcard::to_stdvec(&(range.start as u32, whole)).unwrap()
    }

    /// Tables written in layout 1 are still read, alone and in chains that mix both layouts
    /// (a job upgraded between two checkpoints restores a delta of layout 2 on a full copy of
    /// layout 1, and the reverse cannot happen but is read as well).
    #[test]
    fn tables_of_layout_1_are_still_read() {
        let inc = inc(64, 1);
        let mut t: KeyGroups<u64, String> = KeyGroups::new(4..12, inc.clone());
        for k in 0..3_000u64 {
            t.insert(4 + (k % 8) as usize, k, format!("v{k}"));
        }
        let full = run(t.snapshot(1).encode);
        inc.as_ref().unwrap().completed.store(1, Ordering::Release);
        *t.get_mut(6, &2).unwrap() = "changed".into();
        t.remove(7, &3);
        let delta = run(t.snapshot(2).encode);
        let range = 4..12;
        let (full_1, delta_1) = (as_layout_1(&full, &range), as_layout_1(&delta, &range));
        assert_ne!(full_1, full);
        // The layout-2 prefix is varint(u32::MAX), varint(2); layout 1 starts with the first
        // key group.
        assert_eq!(full[..6], [0xff, 0xff, 0xff, 0xff, 0x0f, 2]);
        assert_eq!(full_1[0], 4);
        for (f, d) in [
            (&full, &delta),
            (&full_1, &delta_1),
            (&full_1, &delta),
            (&full, &delta_1),
        ] {
            let earlier = |id: u64| match id {
                1 => Ok(f.as_slice()),
                _ => Err(format!("no checkpoint {id}")),
            };
            let r: KeyGroups<u64, String> =
                KeyGroups::decode(2, d, range.clone(), None, &earlier, 2).unwrap();
            assert_eq!(r.len(), 2_999);
            assert_eq!(r.get(6, &2).map(String::as_str), Some("changed"));
            assert_eq!(r.get(7, &3), None);
            assert_eq!(r.get(5, &9).map(String::as_str), Some("v9"));
        }
    }

    /// A table of layout 2 whose heads' offset, parts or heads are damaged, or of a layout
    /// this Weir does not know, is an error, never a panic; so is every truncation of it.
    #[test]
    fn damaged_tables_of_layout_2_are_errors() {
        let mut t: KeyGroups<u64, u64> = KeyGroups::new(0..4, None);
        for k in 0..50u64 {
            t.insert((k % 4) as usize, k, k);
        }
        let good = run(t.snapshot(1).encode);
        let decode = |b: &[u8]| KeyGroups::<u64, u64>::decode(1, b, 0..4, None, &no_earlier, 1);
        assert_eq!(decode(&good).unwrap().len(), 50);
        let n = good.len();
        let with_tail = |v: u64| {
            let mut b = good.clone();
            b[n - 8..].copy_from_slice(&v.to_le_bytes());
            b
        };
        let heads_at = u64::from_le_bytes(good[n - 8..].try_into().unwrap());
        for (bytes, want) in [
            (with_tail(u64::MAX), "outside the table"),
            (with_tail(n as u64), "outside the table"),
            (with_tail(0), "outside the table"),
            (with_tail(heads_at + 1), "cannot decode keyed state"),
            (with_tail(heads_at - 1), "cannot decode keyed state"),
            (good[..9].to_vec(), "ends before its heads"),
            (
                {
                    let mut b = good.clone();
                    b[5] = 3;
                    b
                },
                "table layout 3; this Weir reads layouts 1 and 2",
            ),
            (
                {
                    // Heads followed by a byte before the offset.
                    let mut b = good[..n - 8].to_vec();
                    b.push(0);
                    b.extend_from_slice(&heads_at.to_le_bytes());
                    b
                },
                "1 bytes after the heads",
            ),
        ] {
            let e = decode(&bytes).err().expect("damaged");
            assert!(e.contains(want), "{e}");
        }
        for len in 0..n {
            assert!(decode(&good[..len]).is_err(), "truncated to {len}");
        }
        for at in 0..n {
            for bit in 0..8 {
                let mut b = good.clone();
                b[at] ^= 1 << bit;
                // Either an error or a table (a flipped value decodes fine), never a panic.
                let _ = decode(&b);
            }
        }
    }

    /// A part outside the parts region (e.g. over the heads) is refused.
    #[test]
    fn a_part_outside_the_parts_is_refused() {
        let mut t: KeyGroups<u64, u64> = KeyGroups::new(0..2, None);
        t.insert(0, 1, 1);
        t.insert(1, 2, 2);
        let good = run(t.snapshot(1).encode);
        let n = good.len();
        let heads_at = u64::from_le_bytes(good[n - 8..].try_into().unwrap()) as usize;
        let (first, mut heads): (u32, Vec<GroupHeadIn>) =
            postcard::from_bytes(&good[heads_at..n - 8]).unwrap();
        heads[1].part_at = heads_at as u64 - 1;
        heads[1].part_len = 2;
        let own: Vec<GroupHead<'_>> = heads
            .iter()
            .map(|h| GroupHead {
                ids: &h.ids,
                base_len: h.base_len,
                delta_entries: h.delta_entries,
                kind: h.kind,
                part_at: h.part_at,
                part_len: h.part_len,
            })
            .collect();
        let mut bad = good[..heads_at].to_vec();
        bad.extend(postcard::to_stdvec(&(first, own)).unwrap());
        bad.extend_from_slice(&(heads_at as u64).to_le_bytes());
        let e = decode_table(&bad, &(0..2)).err().expect("refused");
        assert!(e.contains("outside the parts"), "{e}");
    }

    /// The stamp a write checks sits on the key's cache line: within 16 bytes of the key in
    /// the `(key, entry)` pairs the table stores, whatever the value's size.
    #[test]
    fn the_stamp_sits_next_to_the_key() {
        fn gap<K, V>() -> isize {
            let key = std::mem::offset_of!((K, Entry<V>), 0) as isize;
            let entry = std::mem::offset_of!((K, Entry<V>), 1) as isize;
            entry + std::mem::offset_of!(Entry<V>, epoch) as isize - key
        }
        for g in [
            gap::<u64, Option<(u64, u64, [u8; 24], [u8; 24])>>(),
            gap::<u64, u64>(),
            gap::<u32, [u8; 200]>(),
            gap::<String, Vec<u64>>(),
        ] {
            assert!(g.abs() <= 24, "stamp {g} bytes from the key");
        }
    }

    /// A damaged key group fails the restore with an error naming it, whichever thread
    /// decodes it, and the other threads stop taking groups.
    #[test]
    fn a_damaged_group_fails_a_parallel_restore_with_its_number() {
        let mut t: KeyGroups<u64, u64> = KeyGroups::new(10..18, None);
        for kg in 10..18 {
            for k in 0..5u64 {
                t.insert(kg, k, k * kg as u64);
            }
        }
        let mut bytes = run(t.snapshot(1).encode);
        let at = {
            let groups = decode_table(&bytes, &(10..18)).unwrap();
            groups[5].part.as_ptr() as usize - bytes.as_ptr() as usize
        };
        // The map's length: 127 entries where 5 are encoded.
        bytes[at] = 0x7f;
        for threads in 1..=4 {
            let r = KeyGroups::<u64, u64>::decode(1, &bytes, 10..18, None, &no_earlier, threads);
            let e = r.err().expect("a damaged group fails the restore");
            assert!(
                e.contains("key group 15, checkpoint 1: cannot decode its state"),
                "{threads} threads: {e}"
            );
        }
    }

    /// While a checkpoint holds a group, writes go to the overlay: reads see them at once, the
    /// encoder sees the barrier's state, and the overlay is folded back once it is done.
    #[test]
    fn writes_during_encoding_go_to_the_overlay() {
        let mut t: KeyGroups<u64, u64> = KeyGroups::new(0..1, None);
        for k in 0..10u64 {
            t.insert(0, k, k);
        }
        let snap = t.snapshot(1);
        *t.get_mut(0, &1).unwrap() = 100;
        t.insert(0, 50, 50);
        assert_eq!(t.remove(0, &2), Some(2));
        assert_eq!(t.remove(0, &2), None);
        assert_eq!(t.remove(0, &77), None);
        assert_eq!(
            (t.get(0, &1), t.get(0, &2), t.get(0, &50)),
            (Some(&100), None, Some(&50))
        );
        assert_eq!(t.len(), 10);
        assert!(!t.groups[0].overlay.is_empty());
        let bytes = run(snap.encode);
        let r = KeyGroups::<u64, u64>::decode(1, &bytes, 0..1, None, &no_earlier, 1).unwrap();
        let mut at_barrier = r.entries(0);
        at_barrier.sort_unstable();
        assert_eq!(at_barrier, (0..10).map(|k| (k, k)).collect::<Vec<_>>());
        // The encoder is done: the next write folds the overlay into the map, no copy made.
        t.insert(0, 60, 60);
        assert!(t.groups[0].overlay.is_empty());
        assert!(matches!(t.groups[0].slot, Slot::Owned(_)));
        assert_eq!(
            (t.get(0, &1), t.get(0, &2), t.len()),
            (Some(&100), None, 11)
        );
    }

    /// `insert_new` sets only absent keys, logs only what it set, and sees removals and
    /// inserts in the overlay while a checkpoint holds the group.
    #[test]
    fn insert_new_sets_only_absent_keys() {
        let (mut t, _) = one_group_committed();
        assert!(!t.insert_new(0, 5, 50));
        assert!(t.insert_new(0, 500, 1));
        assert!(!t.insert_new(0, 500, 2));
        assert_eq!((t.get(0, &5), t.get(0, &500)), (Some(&5), Some(&1)));
        assert_eq!(t.groups[0].dirty.keys, vec![500]);
        let snap = t.snapshot(2);
        // The group is held: the overlay answers.
        assert!(!t.insert_new(0, 500, 3));
        assert_eq!(t.remove(0, &6), Some(6));
        assert!(t.insert_new(0, 6, 60));
        assert!(t.insert_new(0, 600, 1));
        assert!(!t.insert_new(0, 600, 2));
        assert!(!t.insert_new(0, 7, 70));
        assert_eq!(
            (t.get(0, &500), t.get(0, &6), t.get(0, &600), t.get(0, &7)),
            (Some(&1), Some(&60), Some(&1), Some(&7))
        );
        assert!(!t.groups[0].overlay.is_empty());
        drop(snap);
        assert!(!t.insert_new(0, 6, 61));
        assert!(t.groups[0].overlay.is_empty());
        assert_eq!((t.get(0, &6), t.len()), (Some(&60), 102));
    }

    /// A snapshot sees the state at its barrier, whatever is written afterwards, and writes
    /// after it never lose data (the frozen copy is taken back or copied).
    #[test]
    fn copy_on_write_snapshot_is_isolated_from_later_writes() {
        let mut t: KeyGroups<u64, u64> = KeyGroups::new(0..4, None);
        for k in 0..100u64 {
            t.insert((k % 4) as usize, k, k);
        }
        let snap = t.snapshot(1);
        assert!(snap.refs.is_empty(), "a full checkpoint references nothing");
        for k in 0..100u64 {
            *t.get_mut((k % 4) as usize, &k).unwrap() += 1000;
        }
        t.insert(1, 999, 1);
        let bytes = run(snap.encode);
        let restored: KeyGroups<u64, u64> =
            KeyGroups::decode(1, &bytes, 0..4, None, &no_earlier, 1).unwrap();
        for k in 0..100u64 {
            assert_eq!(restored.get((k % 4) as usize, &k), Some(&k));
            assert_eq!(t.get((k % 4) as usize, &k), Some(&(k + 1000)));
        }
        assert_eq!(restored.len(), 100);
        assert_eq!(t.len(), 101);
        // Once the encoder dropped its copy, taking a group back does not copy it.
        let snap = t.snapshot(2);
        drop(snap);
        t.insert(2, 5000, 5);
        assert_eq!(t.len(), 102);
        // Decoding into another key-group range is refused.
        let e = KeyGroups::<u64, u64>::decode(1, &bytes, 0..3, None, &no_earlier, 2)
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
            t.insert((k % 8) as usize, k, k);
        }
        let s1 = t.snapshot(1);
        let full = run(s1.encode);
        assert!(full.len() > 20_000, "{}", full.len());
        inc.as_ref().unwrap().completed.store(1, Ordering::Release);
        let s2 = t.snapshot(2);
        let unchanged = run(s2.encode);
        assert!(unchanged.len() < 100, "{}", unchanged.len());
        assert_eq!(s2.refs, BTreeSet::from([1]));
        inc.as_ref().unwrap().completed.store(2, Ordering::Release);
        *t.get_mut(3, &3).unwrap() = 33;
        let s3 = t.snapshot(3);
        let delta = run(s3.encode);
        assert!(delta.len() < 120, "{}", delta.len());
        assert_eq!(s3.refs, BTreeSet::from([1]));
        let files: HashMap<u64, Vec<u8>> = HashMap::from([(1, full), (2, unchanged)]);
        let earlier = |id: u64| {
            files
                .get(&id)
                .map(|b| b.as_slice())
                .ok_or_else(|| format!("no checkpoint {id}"))
        };
        let r: KeyGroups<u64, u64> = KeyGroups::decode(3, &delta, 0..8, None, &earlier, 1).unwrap();
        assert_eq!(r.len(), 10_000);
        assert_eq!(r.get(3, &3), Some(&33));
        assert_eq!(r.get(4, &4), Some(&4));
        // A chain that names a missing checkpoint is an error, not empty state.
        let e = KeyGroups::<u64, u64>::decode(3, &delta, 0..8, None, &no_earlier, 3)
            .err()
            .unwrap();
        assert!(e.contains("no checkpoint 1"), "{e}");
    }

    /// One key group holding keys 0..100 (value = key), written in full by checkpoint 1,
    /// which completed; and that checkpoint's bytes.
    fn one_group_committed() -> (KeyGroups<u64, u64>, Vec<u8>) {
        let inc = inc(64, 1);
        let mut t: KeyGroups<u64, u64> = KeyGroups::new(0..1, inc.clone());
        for k in 0..100u64 {
            t.insert(0, k, k);
        }
        let full = run(t.snapshot(1).encode);
        inc.as_ref().unwrap().completed.store(1, Ordering::Release);
        (t, full)
    }

    /// A key removed and inserted again between two checkpoints, with another key removed in
    /// between, is logged twice: its delta lists it twice with its one value, and a restore
    /// ends with that value. Logs of captures that can no longer complete are merged without
    /// repeats.
    #[test]
    fn a_key_written_again_after_its_removal_is_restored_with_its_last_value() {
        let (mut t, full) = one_group_committed();
        t.insert(0, 7, 70);
        t.remove(0, &7);
        t.remove(0, &8);
        t.insert(0, 7, 700);
        assert_eq!(t.groups[0].dirty.keys, vec![7, 8, 7]);
        let s2 = t.snapshot(2);
        let delta = run(s2.encode);
        let own = decode_table(&delta, &(0..1)).unwrap();
        let entries: Vec<(u64, Option<u64>)> = postcard::from_bytes(own[0].part).unwrap();
        assert_eq!(entries, vec![(7, Some(700)), (8, None), (7, Some(700))]);
        let files = HashMap::from([(1u64, full)]);
        let earlier = |id: u64| {
            files
                .get(&id)
                .map(|b| b.as_slice())
                .ok_or_else(|| format!("no checkpoint {id}"))
        };
        let r: KeyGroups<u64, u64> = KeyGroups::decode(2, &delta, 0..1, None, &earlier, 1).unwrap();
        assert_eq!(
            (r.len(), r.get(0, &7), r.get(0, &8)),
            (99, Some(&700), None)
        );
        // Checkpoint 2 never completes: its log is folded into checkpoint 3's, without repeats.
        t.remove(0, &7);
        t.insert(0, 7, 7000);
        let _ = t.snapshot(3);
        let mut merged = t.groups[0].pending[0].keys.as_deref().unwrap().clone();
        merged.sort_unstable();
        assert_eq!(merged, vec![7, 8]);
    }

    /// Taking a key's value out and putting it back (`ValueState::clear`, change, `set`) logs
    /// the key once per epoch, however often it is done; the next epoch logs it again, and
    /// the delta holds its last value.
    #[test]
    fn a_value_taken_out_and_put_back_is_logged_once_per_epoch() {
        let (mut t, _) = one_group_committed();
        for i in 0..50 {
            let v = t.remove(0, &5).unwrap();
            t.insert(0, 5, v + i);
        }
        // A key never there before: logged on insert, not again after remove + insert.
        t.insert(0, 500, 1);
        let v = t.remove(0, &500).unwrap();
        t.insert(0, 500, v + 1);
        assert_eq!(t.remove(0, &500), Some(2));
        assert_eq!(t.groups[0].dirty.keys, vec![5, 500]);
        let own_delta = run(t.snapshot(2).encode);
        let own = decode_table(&own_delta, &(0..1)).unwrap();
        let entries: Vec<(u64, Option<u64>)> = postcard::from_bytes(own[0].part).unwrap();
        assert_eq!(
            entries,
            vec![(5, Some(5 + (0..50).sum::<u64>())), (500, None)]
        );
        // The next epoch: key 500, removed in the last one, is logged when inserted again
        // (the memo of its removal is stale), and the pattern logs key 5 once more.
        t.insert(0, 500, 3);
        let v = t.remove(0, &5).unwrap();
        t.insert(0, 5, v);
        assert_eq!(t.groups[0].dirty.keys, vec![500, 5]);
    }

    /// A key taken out and put back many times within one epoch (a list drained and refilled)
    /// keeps its group's log short and the group a delta: repeats are removed as the log
    /// grows, and only distinct keys count toward the overflow bound.
    #[test]
    fn a_key_rewritten_many_times_within_an_epoch_stays_one_delta_entry() {
        let (mut t, _) = one_group_committed();
        for i in 0..10 * DIRTY_MIN as u64 {
            let v = t.remove(0, &5).unwrap();
            t.insert(0, 5, v + i);
            assert!(t.groups[0].dirty.keys.len() <= DIRTY_MIN + 1);
        }
        assert!(!t.groups[0].dirty.overflow);
        let s2 = t.snapshot(2);
        let delta = run(s2.encode);
        let own = decode_table(&delta, &(0..1)).unwrap();
        assert_eq!(own[0].kind, DELTA);
        let entries: Vec<(u64, Option<u64>)> = postcard::from_bytes(own[0].part).unwrap();
        assert!(entries.iter().all(|e| e.0 == 5), "{entries:?}");
        assert!(entries.len() <= DIRTY_MIN + 1);
    }

    /// With keys changing at a steady rate, what a restore applies on top of the full copies
    /// stays within 1/RESTORE_DELTA_FRACTION of them, and full rewrites are spread over
    /// checkpoints (a few groups each) rather than coming due together.
    #[test]
    fn restore_work_stays_bounded_and_rewrites_are_spread() {
        let inc = inc(64, 1);
        let groups = 32;
        let mut t: KeyGroups<u64, u64> = KeyGroups::new(0..groups, inc.clone());
        let keys = 64_000u64;
        for k in 0..keys {
            t.insert((k % groups as u64) as usize, k, k);
        }
        let mut max_full = 0;
        for id in 1..=300u64 {
            // 2% of the keys, a different 2% each time.
            let hot = keys / 50;
            for k in (id * hot..(id + 1) * hot).map(|k| k % keys) {
                *t.get_mut((k % groups as u64) as usize, &k).unwrap() += 1;
            }
            let snap = t.snapshot(id);
            drop(snap);
            inc.as_ref().unwrap().completed.store(id, Ordering::Release);
            let chains: Vec<&Chain> = t.groups.iter().map(|g| &g.pending[0].chain).collect();
            let base: u64 = chains.iter().map(|c| c.base_len).sum();
            let deltas: u64 = chains.iter().map(|c| c.delta_entries).sum();
            let full = chains.iter().filter(|c| c.ids == [id]).count();
            if id > 100 {
                assert!(
                    deltas * RESTORE_DELTA_FRACTION <= base,
                    "checkpoint {id}: {deltas} delta entries over {base}"
                );
                max_full = max_full.max(full);
            }
        }
        assert!(
            max_full <= groups / 4,
            "{max_full} of {groups} groups rewritten at once"
        );
    }

    /// A state that only grows (new keys, as in joins and windows that hold their input) is
    /// written about once: new keys are deltas that no later entry supersedes, so they never
    /// count toward the restore bound and never force its groups to be rewritten in full.
    #[test]
    fn a_growing_state_is_written_about_once() {
        // 10% more keys per checkpoint, and as many as it held (more than 1/FULL_FRACTION).
        for (growth, checkpoints) in [(10, 40), (1, 9)] {
            a_growing_state_is_written_about_once_at(growth, checkpoints);
        }
    }

    /// A state that grows by 1/`growth` of its keys per checkpoint, `checkpoints` times.
    fn a_growing_state_is_written_about_once_at(growth: u64, checkpoints: u64) {
        // Chains long enough that no group is rewritten for its chain's length here.
        let inc = inc(1000, 1);
        let groups = 16;
        let mut t: KeyGroups<u64, u64> = KeyGroups::new(0..groups, inc.clone());
        let mut keys = 0u64;
        let mut written = 0;
        for id in 1..=checkpoints {
            let n = (keys / growth).max(2000);
            for k in keys..keys + n {
                t.insert((k % groups as u64) as usize, k, k);
            }
            keys += n;
            written += run(t.snapshot(id).encode).len();
            inc.as_ref().unwrap().completed.store(id, Ordering::Release);
        }
        let mut once: KeyGroups<u64, u64> = KeyGroups::new(0..groups, None);
        for k in 0..keys {
            once.insert((k % groups as u64) as usize, k, k);
        }
        let once = run(once.snapshot(1).encode).len();
        assert!(
            written * 10 <= once * 13,
            "growth 1/{growth}: {written} bytes written for a state of {once} bytes"
        );
    }

    /// A checkpoint in flight in the model: expected state, encoded table, references.
    /// (The encoder runs when the checkpoint settles, so writes made meanwhile go through the
    /// overlay, as when the snapshot writer thread is still busy.)
    type InFlight = (BTreeMap<u16, u32>, TableSnapshot);

    #[derive(Debug, Clone)]
    enum Op {
        Put(u16, u32),
        /// Changes the value in place (`get_mut`), if the key has one.
        Update(u16, u32),
        Remove(u16),
        Checkpoint,
        Complete,
        Abort,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u16..2000, any::<u32>()).prop_map(|(k, v)| Op::Put(k, v)),
            4 => (0u16..2000, any::<u32>()).prop_map(|(k, v)| Op::Update(k, v)),
            2 => (0u16..2000).prop_map(Op::Remove),
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
                        t.insert(kg(k), k, v);
                        model.insert(k, v);
                    }
                    Op::Update(k, v) => {
                        let got = t.get_mut(kg(k), &k);
                        prop_assert_eq!(got.is_some(), model.contains_key(&k));
                        if let Some(x) = got {
                            *x = v;
                            model.insert(k, v);
                        }
                    }
                    Op::Remove(k) => {
                        prop_assert_eq!(t.remove(kg(k), &k), model.remove(&k));
                    }
                    Op::Checkpoint => {
                        if in_flight.len() < max_concurrent {
                            in_flight.insert(next, (model.clone(), t.snapshot(next)));
                            next += 1;
                        }
                    }
                    Op::Complete | Op::Abort => {
                        if let Some((id, (state, snap))) = in_flight.pop_first() {
                            let (bytes, refs) = (run(snap.encode), snap.refs);
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
                // 1 to 5 threads over the 4 groups: every split, and more threads than groups.
                let threads = 1 + (*id as usize % 5);
                let r = KeyGroups::<u16, u32>::decode(*id, &files[id], 2..6, None, &earlier, threads)
                    .map_err(TestCaseError::fail)?;
                let got: BTreeMap<u16, u32> = (2..6)
                    .flat_map(|g| r.entries(g))
                    .collect();
                prop_assert_eq!(&got, state, "checkpoint {}", id);
                for g in &r.groups {
                    prop_assert!(g.committed.ids.len() <= max_chain + 1, "{:?}", g.committed);
                }
            }
        }
    }
}
