//! Keyed state: tables partitioned by key group, and typed handles scoped to the current key.
//!
//! Every keyed table holds one hash map per key group owned by the subtask, so a subtask's
//! state can later be split or merged by key group (rescaling) and checkpoints can write only
//! the key groups and keys that changed ([`groups`]). Handles ([`ValueState`], [`MapState`],
//! [`ListState`]) are obtained in [`crate::KeyedProcessFunction::open`] and read or write the
//! entry of the key being processed.

mod groups;

use std::any::Any;
use std::hash::Hash;
use std::marker::PhantomData;

use rustc_hash::FxHashMap;

pub(crate) use groups::{check_covers, Earlier, Incremental, KeyGroups, TableSnapshot};

use crate::keyed::KeyedContext;

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
    fn restore(
        &mut self,
        id: u64,
        bytes: &[u8],
        earlier: &Earlier<'_>,
        threads: usize,
    ) -> Result<(), String>;
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
    fn restore(
        &mut self,
        id: u64,
        bytes: &[u8],
        earlier: &Earlier<'_>,
        threads: usize,
    ) -> Result<(), String> {
        KeyGroups::restore(self, id, bytes, earlier, threads)
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
        table::<K, V>(ctx.tables, self.idx, self.name).get(ctx.key_group, ctx.key)
    }

    /// The current key's value, mutable.
    pub fn get_mut<'c, K: Hash + Eq + StateData, O>(
        &self,
        ctx: &'c mut KeyedContext<'_, K, O>,
    ) -> Option<&'c mut V> {
        table_mut::<K, V>(ctx.tables, self.idx, self.name).get_mut(ctx.key_group, ctx.key)
    }

    /// Sets the current key's value.
    pub fn set<K: Hash + Eq + StateData, O>(&self, ctx: &mut KeyedContext<'_, K, O>, value: V) {
        let t = table_mut::<K, V>(ctx.tables, self.idx, self.name);
        match t.get_mut(ctx.key_group, ctx.key) {
            Some(v) => *v = value,
            None => t.insert(ctx.key_group, ctx.key.clone(), value),
        }
    }

    /// Removes and returns the current key's value.
    pub fn clear<K: Hash + Eq + StateData, O>(
        &self,
        ctx: &mut KeyedContext<'_, K, O>,
    ) -> Option<V> {
        table_mut::<K, V>(ctx.tables, self.idx, self.name).remove(ctx.key_group, ctx.key)
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
        table::<K, FxHashMap<UK, UV>>(ctx.tables, self.idx, self.name).get(ctx.key_group, ctx.key)
    }

    fn table_mut<'c, K: Hash + Eq + StateData, O>(
        &self,
        ctx: &'c mut KeyedContext<'_, K, O>,
    ) -> &'c mut KeyGroups<K, FxHashMap<UK, UV>> {
        table_mut::<K, FxHashMap<UK, UV>>(ctx.tables, self.idx, self.name)
    }

    /// The current key's entry for `user_key`.
    pub fn get<'c, K: Hash + Eq + StateData, O>(
        &self,
        ctx: &'c KeyedContext<'_, K, O>,
        user_key: &UK,
    ) -> Option<&'c UV> {
        self.map(ctx).and_then(|m| m.get(user_key))
    }

    /// Inserts an entry for the current key; returns the previous value.
    pub fn insert<K: Hash + Eq + StateData, O>(
        &self,
        ctx: &mut KeyedContext<'_, K, O>,
        user_key: UK,
        value: UV,
    ) -> Option<UV> {
        let (key, kg) = (ctx.key, ctx.key_group);
        let t = self.table_mut(ctx);
        if let Some(m) = t.get_mut(kg, key) {
            return m.insert(user_key, value);
        }
        let mut m = FxHashMap::default();
        m.insert(user_key, value);
        t.insert(kg, key.clone(), m);
        None
    }

    /// Removes an entry of the current key.
    pub fn remove<K: Hash + Eq + StateData, O>(
        &self,
        ctx: &mut KeyedContext<'_, K, O>,
        user_key: &UK,
    ) -> Option<UV> {
        let (key, kg) = (ctx.key, ctx.key_group);
        self.map(ctx)?.get(user_key)?;
        let t = self.table_mut(ctx);
        let m = t.get_mut(kg, key)?;
        let v = m.remove(user_key);
        if m.is_empty() {
            t.remove(kg, key);
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
        let (key, kg) = (ctx.key, ctx.key_group);
        self.table_mut(ctx).remove(kg, key);
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
        let t = table_mut::<K, Vec<V>>(ctx.tables, self.idx, self.name);
        match t.get_mut(ctx.key_group, ctx.key) {
            Some(l) => l.push(value),
            None => t.insert(ctx.key_group, ctx.key.clone(), vec![value]),
        }
    }

    /// The current key's list (empty if none).
    pub fn get<'c, K: Hash + Eq + StateData, O>(&self, ctx: &'c KeyedContext<'_, K, O>) -> &'c [V] {
        table::<K, Vec<V>>(ctx.tables, self.idx, self.name)
            .get(ctx.key_group, ctx.key)
            .map_or(&[], |l| l.as_slice())
    }

    /// Removes and returns the current key's list.
    pub fn take<K: Hash + Eq + StateData, O>(&self, ctx: &mut KeyedContext<'_, K, O>) -> Vec<V> {
        table_mut::<K, Vec<V>>(ctx.tables, self.idx, self.name)
            .remove(ctx.key_group, ctx.key)
            .unwrap_or_default()
    }
}
