//! Keyed state: tables partitioned by key group, and typed handles scoped to the current key.
//!
//! Every keyed table holds one hash map per key group owned by the subtask, so a subtask's
//! state can later be split or merged by key group (rescaling, incremental checkpoints).
//! Handles ([`ValueState`], [`MapState`], [`ListState`]) are obtained in
//! [`crate::KeyedProcessFunction::open`] and read or write the entry of the key being
//! processed.

use std::any::Any;
use std::hash::Hash;
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::keyed::KeyedContext;

/// One key group's map: owned, or frozen by a checkpoint and shared with its encoder.
enum Slot<K, V> {
    Owned(FxHashMap<K, V>),
    Frozen(Arc<FxHashMap<K, V>>),
}

/// One hash map per key group of a subtask's key-group range, copy-on-write at key-group
/// granularity: a checkpoint freezes every map in O(key groups) (the synchronous part) and
/// encodes the frozen maps on the writer thread; the first write to a key group afterwards
/// takes its map back, copying it only if the encoder still holds it.
pub(crate) struct KeyGroups<K, V> {
    first: usize,
    groups: Vec<Slot<K, V>>,
}

impl<K: Hash + Eq + Clone, V: Clone> KeyGroups<K, V> {
    pub(crate) fn new(range: Range<usize>) -> Self {
        KeyGroups {
            first: range.start,
            groups: range.map(|_| Slot::Owned(FxHashMap::default())).collect(),
        }
    }

    /// The map of key group `kg` (an absolute key-group index inside this subtask's range).
    #[inline]
    pub(crate) fn group(&mut self, kg: usize) -> &mut FxHashMap<K, V> {
        debug_assert!(kg >= self.first && kg < self.first + self.groups.len());
        let slot = &mut self.groups[kg - self.first];
        if let Slot::Frozen(arc) = slot {
            let arc = std::mem::replace(arc, Arc::new(FxHashMap::default()));
            *slot = Slot::Owned(Arc::try_unwrap(arc).unwrap_or_else(|shared| (*shared).clone()));
        }
        match slot {
            Slot::Owned(m) => m,
            Slot::Frozen(_) => unreachable!("thawed above"),
        }
    }

    #[inline]
    pub(crate) fn group_ref(&self, kg: usize) -> &FxHashMap<K, V> {
        match &self.groups[kg - self.first] {
            Slot::Owned(m) => m,
            Slot::Frozen(a) => a,
        }
    }

    /// Number of entries over all key groups.
    pub(crate) fn len(&self) -> usize {
        (self.first..self.first + self.groups.len())
            .map(|kg| self.group_ref(kg).len())
            .sum()
    }

    /// Freezes every key group (O(key groups), no copy) and returns the frozen maps.
    fn freeze(&mut self) -> Vec<Arc<FxHashMap<K, V>>> {
        self.groups
            .iter_mut()
            .map(|slot| {
                if let Slot::Owned(m) = slot {
                    *slot = Slot::Frozen(Arc::new(std::mem::take(m)));
                }
                match slot {
                    Slot::Frozen(a) => a.clone(),
                    Slot::Owned(_) => unreachable!("frozen above"),
                }
            })
            .collect()
    }
}

/// Serializes frozen maps exactly like a `Vec` of maps, releasing each map as soon as it is
/// encoded: a worker that writes to that key group afterwards takes it back without a copy.
struct Frozen<M>(std::cell::RefCell<Vec<Option<Arc<M>>>>);

impl<M: serde::Serialize> serde::Serialize for Frozen<M> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut maps = self.0.borrow_mut();
        let mut seq = s.serialize_seq(Some(maps.len()))?;
        for slot in maps.iter_mut() {
            if let Some(map) = slot.take() {
                seq.serialize_element(&*map)?;
            }
        }
        seq.end()
    }
}

impl<K: StateData + Hash + Eq, V: StateData> KeyGroups<K, V> {
    /// Captures the tables for a checkpoint in O(key groups); the returned closure encodes
    /// them (on the snapshot writer thread) as postcard: the first key group, then one map per
    /// key group.
    pub(crate) fn snapshot(&mut self) -> impl FnOnce() -> Result<Vec<u8>, String> + Send + 'static {
        let frozen = self.freeze();
        let first = self.first;
        move || encode_frozen(first, frozen)
    }

    /// Restores tables written by [`KeyGroups::snapshot`] for the same key-group range.
    pub(crate) fn decode(bytes: &[u8], range: Range<usize>) -> Result<Self, String> {
        let (first, groups): (u32, Vec<Sized<K, V>>) =
            postcard::from_bytes(bytes).map_err(|e| format!("cannot decode keyed state: {e}"))?;
        let groups: Vec<FxHashMap<K, V>> = groups.into_iter().map(|g| g.0).collect();
        if first as usize != range.start || groups.len() != range.len() {
            return Err(format!(
                "keyed state covers key groups {first}..{} but this instance owns {}..{}",
                first as usize + groups.len(),
                range.start,
                range.end
            ));
        }
        Ok(KeyGroups {
            first: range.start,
            groups: groups.into_iter().map(Slot::Owned).collect(),
        })
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

fn encode_frozen<K: StateData + Hash + Eq, V: StateData>(
    first: usize,
    frozen: Vec<Arc<FxHashMap<K, V>>>,
) -> Result<Vec<u8>, String> {
    let frozen = Frozen(std::cell::RefCell::new(
        frozen.into_iter().map(Some).collect(),
    ));
    postcard::to_stdvec(&(first as u32, frozen))
        .map_err(|e| format!("cannot encode keyed state: {e}"))
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
    fn snapshot(&mut self) -> Box<dyn FnOnce() -> Result<Vec<u8>, String> + Send>;
    fn restore(&mut self, bytes: &[u8]) -> Result<(), String>;
}

impl<K: StateData + Hash + Eq, V: StateData> AnyTable for KeyGroups<K, V> {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn snapshot(&mut self) -> Box<dyn FnOnce() -> Result<Vec<u8>, String> + Send> {
        Box::new(KeyGroups::snapshot(self))
    }
    fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
        let range = self.first..self.first + self.groups.len();
        *self = KeyGroups::decode(bytes, range)?;
        Ok(())
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
        table_mut::<K, V>(ctx.tables, self.idx, self.name)
            .group(ctx.key_group)
            .get_mut(key)
    }

    /// Sets the current key's value.
    pub fn set<K: Hash + Eq + StateData, O>(&self, ctx: &mut KeyedContext<'_, K, O>, value: V) {
        let key = ctx.key;
        let map = table_mut::<K, V>(ctx.tables, self.idx, self.name).group(ctx.key_group);
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
        table_mut::<K, V>(ctx.tables, self.idx, self.name)
            .group(ctx.key_group)
            .remove(key)
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
        ctx: &'c mut KeyedContext<'_, K, O>,
    ) -> Option<&'c mut FxHashMap<UK, UV>> {
        let key = ctx.key;
        table_mut::<K, FxHashMap<UK, UV>>(ctx.tables, self.idx, self.name)
            .group(ctx.key_group)
            .get_mut(key)
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
        let map =
            table_mut::<K, FxHashMap<UK, UV>>(ctx.tables, self.idx, self.name).group(ctx.key_group);
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
        let map =
            table_mut::<K, FxHashMap<UK, UV>>(ctx.tables, self.idx, self.name).group(ctx.key_group);
        let m = map.get_mut(key)?;
        let v = m.remove(user_key);
        if m.is_empty() {
            map.remove(key);
        }
        v
    }

    /// Number of entries of the current key.
    pub fn len<K: Hash + Eq + StateData, O>(&self, ctx: &mut KeyedContext<'_, K, O>) -> usize {
        self.map(ctx).map_or(0, |m| m.len())
    }

    /// Visits every entry of the current key (in no particular order).
    pub fn for_each<K: Hash + Eq + StateData, O>(
        &self,
        ctx: &mut KeyedContext<'_, K, O>,
        mut f: impl FnMut(&UK, &UV),
    ) {
        if let Some(m) = self.map(ctx) {
            m.iter().for_each(|(k, v)| f(k, v));
        }
    }

    /// Removes every entry of the current key.
    pub fn clear<K: Hash + Eq + StateData, O>(&self, ctx: &mut KeyedContext<'_, K, O>) {
        let key = ctx.key;
        table_mut::<K, FxHashMap<UK, UV>>(ctx.tables, self.idx, self.name)
            .group(ctx.key_group)
            .remove(key);
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
        let map = table_mut::<K, Vec<V>>(ctx.tables, self.idx, self.name).group(ctx.key_group);
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
        table_mut::<K, Vec<V>>(ctx.tables, self.idx, self.name)
            .group(ctx.key_group)
            .remove(key)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot sees the state at its barrier, whatever is written afterwards, and writes
    /// after it never lose data (the frozen copy is taken back or copied).
    #[test]
    fn copy_on_write_snapshot_is_isolated_from_later_writes() {
        let mut t: KeyGroups<u64, u64> = KeyGroups::new(0..4);
        for k in 0..100u64 {
            t.group((k % 4) as usize).insert(k, k);
        }
        let snap = t.snapshot();
        for k in 0..100u64 {
            *t.group((k % 4) as usize).get_mut(&k).unwrap() += 1000;
        }
        t.group(1).insert(999, 1);
        let bytes = snap().unwrap();
        let restored: KeyGroups<u64, u64> = KeyGroups::decode(&bytes, 0..4).unwrap();
        for k in 0..100u64 {
            assert_eq!(restored.group_ref((k % 4) as usize)[&k], k);
            assert_eq!(t.group_ref((k % 4) as usize)[&k], k + 1000);
        }
        assert_eq!(restored.len(), 100);
        assert_eq!(t.len(), 101);
        // Once the encoder dropped its copy, taking a group back does not copy it.
        let snap = t.snapshot();
        drop(snap);
        t.group(2).insert(5000, 5);
        assert_eq!(t.len(), 102);
        // Decoding into another key-group range is refused.
        let e = KeyGroups::<u64, u64>::decode(&bytes, 0..3).err().unwrap();
        assert!(e.contains("key groups 0..4"), "{e}");
    }
}
