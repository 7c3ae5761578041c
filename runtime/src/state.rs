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

use rustc_hash::FxHashMap;

use crate::keyed::KeyedContext;

/// One hash map per key group of a subtask's key-group range.
pub(crate) struct KeyGroups<K, V> {
    first: usize,
    groups: Vec<FxHashMap<K, V>>,
}

impl<K: Hash + Eq, V> KeyGroups<K, V> {
    pub(crate) fn new(range: Range<usize>) -> Self {
        KeyGroups {
            first: range.start,
            groups: range.map(|_| FxHashMap::default()).collect(),
        }
    }

    /// The map of key group `kg` (an absolute key-group index inside this subtask's range).
    #[inline]
    pub(crate) fn group(&mut self, kg: usize) -> &mut FxHashMap<K, V> {
        debug_assert!(kg >= self.first && kg < self.first + self.groups.len());
        &mut self.groups[kg - self.first]
    }

    #[inline]
    pub(crate) fn group_ref(&self, kg: usize) -> &FxHashMap<K, V> {
        &self.groups[kg - self.first]
    }

    /// Number of entries over all key groups.
    pub(crate) fn len(&self) -> usize {
        self.groups.iter().map(|g| g.len()).sum()
    }
}

impl<K: StateData + Hash + Eq, V: StateData> KeyGroups<K, V> {
    /// Encodes the tables (postcard): first key group, then one map per key group.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, String> {
        postcard::to_stdvec(&(self.first as u32, &self.groups))
            .map_err(|e| format!("cannot encode keyed state: {e}"))
    }

    /// Restores tables written by [`KeyGroups::encode`] for the same key-group range.
    pub(crate) fn decode(bytes: &[u8], range: Range<usize>) -> Result<Self, String> {
        let (first, groups): (u32, Vec<FxHashMap<K, V>>) =
            postcard::from_bytes(bytes).map_err(|e| format!("cannot decode keyed state: {e}"))?;
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
            groups,
        })
    }
}

/// Types that can live in checkpointed state (keys, values, accumulators): postcard-encoded,
/// so they must not rely on `deserialize_any` (e.g. `serde_json::Value` cannot be state).
pub trait StateData: serde::Serialize + serde::de::DeserializeOwned + 'static {}
impl<T: serde::Serialize + serde::de::DeserializeOwned + 'static> StateData for T {}

/// A keyed table of any type, owned by a process operator.
pub(crate) trait AnyTable {
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn encode(&self) -> Result<Vec<u8>, String>;
    fn restore(&mut self, bytes: &[u8]) -> Result<(), String>;
}

impl<K: StateData + Hash + Eq, V: StateData> AnyTable for KeyGroups<K, V> {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn encode(&self) -> Result<Vec<u8>, String> {
        KeyGroups::encode(self)
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

impl<V: 'static> ValueState<V> {
    /// The current key's value.
    pub fn get<'c, K: Hash + Eq + Clone + 'static, O>(
        &self,
        ctx: &'c KeyedContext<'_, K, O>,
    ) -> Option<&'c V> {
        table::<K, V>(ctx.tables, self.idx, self.name)
            .group_ref(ctx.key_group)
            .get(ctx.key)
    }

    /// The current key's value, mutable.
    pub fn get_mut<'c, K: Hash + Eq + Clone + 'static, O>(
        &self,
        ctx: &'c mut KeyedContext<'_, K, O>,
    ) -> Option<&'c mut V> {
        let key = ctx.key;
        table_mut::<K, V>(ctx.tables, self.idx, self.name)
            .group(ctx.key_group)
            .get_mut(key)
    }

    /// Sets the current key's value.
    pub fn set<K: Hash + Eq + Clone + 'static, O>(
        &self,
        ctx: &mut KeyedContext<'_, K, O>,
        value: V,
    ) {
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
    pub fn clear<K: Hash + Eq + Clone + 'static, O>(
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

impl<UK: Hash + Eq + 'static, UV: 'static> MapState<UK, UV> {
    fn map<'c, K: Hash + Eq + Clone + 'static, O>(
        &self,
        ctx: &'c mut KeyedContext<'_, K, O>,
    ) -> Option<&'c mut FxHashMap<UK, UV>> {
        let key = ctx.key;
        table_mut::<K, FxHashMap<UK, UV>>(ctx.tables, self.idx, self.name)
            .group(ctx.key_group)
            .get_mut(key)
    }

    /// The current key's entry for `user_key`.
    pub fn get<'c, K: Hash + Eq + Clone + 'static, O>(
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
    pub fn insert<K: Hash + Eq + Clone + 'static, O>(
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
    pub fn remove<K: Hash + Eq + Clone + 'static, O>(
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
    pub fn len<K: Hash + Eq + Clone + 'static, O>(
        &self,
        ctx: &mut KeyedContext<'_, K, O>,
    ) -> usize {
        self.map(ctx).map_or(0, |m| m.len())
    }

    /// Visits every entry of the current key (in no particular order).
    pub fn for_each<K: Hash + Eq + Clone + 'static, O>(
        &self,
        ctx: &mut KeyedContext<'_, K, O>,
        mut f: impl FnMut(&UK, &UV),
    ) {
        if let Some(m) = self.map(ctx) {
            m.iter().for_each(|(k, v)| f(k, v));
        }
    }

    /// Removes every entry of the current key.
    pub fn clear<K: Hash + Eq + Clone + 'static, O>(&self, ctx: &mut KeyedContext<'_, K, O>) {
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

impl<V: 'static> ListState<V> {
    /// Appends to the current key's list.
    pub fn push<K: Hash + Eq + Clone + 'static, O>(
        &self,
        ctx: &mut KeyedContext<'_, K, O>,
        value: V,
    ) {
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
    pub fn get<'c, K: Hash + Eq + Clone + 'static, O>(
        &self,
        ctx: &'c KeyedContext<'_, K, O>,
    ) -> &'c [V] {
        table::<K, Vec<V>>(ctx.tables, self.idx, self.name)
            .group_ref(ctx.key_group)
            .get(ctx.key)
            .map_or(&[], |l| l.as_slice())
    }

    /// Removes and returns the current key's list.
    pub fn take<K: Hash + Eq + Clone + 'static, O>(
        &self,
        ctx: &mut KeyedContext<'_, K, O>,
    ) -> Vec<V> {
        let key = ctx.key;
        table_mut::<K, Vec<V>>(ctx.tables, self.idx, self.name)
            .group(ctx.key_group)
            .remove(key)
            .unwrap_or_default()
    }
}
