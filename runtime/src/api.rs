//! The DataStream API: build a job graph, then execute it.
//!
//! ```
//! use weir_runtime::{RuntimeConfig, StreamEnv};
//! let env = StreamEnv::new(RuntimeConfig { workers: 2, parallelism: 2, ..Default::default() });
//! let out = env
//!     .from_iter("numbers", (1..=100u64).collect())
//!     .filter(|n| n % 2 == 0)
//!     .key_by(|n| n % 3)
//!     .sum(|n| n)
//!     .collect();
//! env.execute("sums").unwrap();
//! assert_eq!(out.take().len(), 50);
//! ```

use std::cell::RefCell;
use std::hash::Hash;
use std::marker::PhantomData;
use std::ops::AddAssign;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::checkpoint::{CheckpointConfig, RestoreFrom};
use crate::config::RuntimeConfig;
use crate::error::{BoxError, JobError};
use crate::execute::{self, JobHandle, JobSummary};
use crate::graph::{
    cast, AnyBox, Edge, Graph, HashFn, Kind, Node, NodeId, Outlets, RouteSpec, SourceDriver,
    SourceState, TypeOps, VecSource,
};
use crate::keyed::{
    key_group_for, key_group_range, restored_groups, KeyedFoldOp, KeyedProcessFunction,
    KeyedProcessOp,
};
use crate::operator::{
    FilterOp, FlatMapOp, MapOp, Out, ProcessFunction, ProcessOp, SinkOp, SinkOutlet, TimestampOp,
    TryMapOp,
};
use crate::source::{SinkWriter, SourceReader, TaskInfo};
use crate::state::StateData;
use crate::window::{
    AggregateFunction, Avg, Count, Max, Min, ReduceAgg, Sum, WindowAssigner, WindowOp, WindowResult,
};
use crate::{Timestamp, NO_TIMESTAMP};

/// Builds and runs a job (Flink's `StreamExecutionEnvironment`). Cheap to clone; clones share
/// the graph under construction.
#[derive(Clone)]
pub struct StreamEnv {
    graph: Rc<RefCell<Graph>>,
    config: Rc<RefCell<RuntimeConfig>>,
    checkpoint: Rc<RefCell<Option<CheckpointConfig>>>,
    restore: Rc<RefCell<Option<RestoreFrom>>>,
}

impl Default for StreamEnv {
    fn default() -> Self {
        StreamEnv::new(RuntimeConfig::default())
    }
}

/// A stream of records of type `T` (Flink's `DataStream`).
pub struct DataStream<T> {
    env: StreamEnv,
    node: NodeId,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for DataStream<T> {
    fn clone(&self) -> Self {
        DataStream {
            env: self.env.clone(),
            node: self.node,
            _t: PhantomData,
        }
    }
}

/// A stream partitioned by key (Flink's `KeyedStream`).
pub struct KeyedStream<T, K> {
    input: DataStream<T>,
    key: Arc<dyn Fn(&T) -> K + Send + Sync>,
}

/// A keyed stream with event-time windows (Flink's `WindowedStream`).
pub struct WindowedStream<T, K> {
    keyed: KeyedStream<T, K>,
    assigner: WindowAssigner,
}

/// Records collected by [`DataStream::collect`]; read them after the job finished.
#[derive(Clone)]
pub struct CollectHandle<T>(Arc<Mutex<Vec<T>>>);

impl<T> CollectHandle<T> {
    /// Takes the records collected so far (in no particular order across subtasks).
    pub fn take(&self) -> Vec<T> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

struct CollectWriter<T>(Arc<Mutex<Vec<T>>>);

impl<T> SinkWriter<T> for CollectWriter<T> {
    fn write(&mut self, batch: &mut Vec<(Timestamp, T)>) -> Result<(), BoxError> {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        v.extend(batch.drain(..).map(|(_, r)| r));
        Ok(())
    }
    fn finish(&mut self) -> Result<(), BoxError> {
        Ok(())
    }
}

struct FnWriter<F>(F);

impl<T, F: FnMut(T) -> Result<(), BoxError>> SinkWriter<T> for FnWriter<F> {
    fn write(&mut self, batch: &mut Vec<(Timestamp, T)>) -> Result<(), BoxError> {
        batch.drain(..).try_for_each(|(_, r)| (self.0)(r))
    }
    fn finish(&mut self) -> Result<(), BoxError> {
        Ok(())
    }
}

impl StreamEnv {
    /// A new environment with the given runtime settings.
    pub fn new(config: RuntimeConfig) -> Self {
        StreamEnv {
            graph: Rc::new(RefCell::new(Graph::default())),
            config: Rc::new(RefCell::new(config)),
            checkpoint: Rc::new(RefCell::new(None)),
            restore: Rc::new(RefCell::new(None)),
        }
    }

    /// Takes checkpoints with these settings (Flink's `enableCheckpointing`).
    pub fn enable_checkpointing(&self, config: CheckpointConfig) {
        *self.checkpoint.borrow_mut() = Some(config);
    }

    /// Restores state from a checkpoint when the job starts (needs checkpointing enabled).
    pub fn restore_from(&self, from: RestoreFrom) {
        *self.restore.borrow_mut() = Some(from);
    }

    /// The runtime settings (read).
    pub fn config(&self) -> RuntimeConfig {
        self.config.borrow().clone()
    }

    /// Changes the runtime settings before `execute`.
    pub fn configure(&self, f: impl FnOnce(&mut RuntimeConfig)) {
        f(&mut self.config.borrow_mut())
    }

    fn add_node(&self, node: Node) -> NodeId {
        let mut g = self.graph.borrow_mut();
        g.nodes.push(node);
        g.nodes.len() - 1
    }

    /// Adds a source. `factory` runs once per parallel instance, on its worker thread.
    pub fn source<T, R, F>(&self, name: &str, factory: F) -> DataStream<T>
    where
        T: Clone + Send + 'static,
        R: SourceReader<T> + 'static,
        F: Fn(&TaskInfo) -> Result<R, BoxError> + Send + Sync + 'static,
    {
        let batch_size = self.config.borrow().batch_size;
        let build = move |info: &TaskInfo, down: AnyBox| {
            let reader = factory(info).map_err(|e| JobError::from_user(info, e))?;
            let d: Box<dyn crate::exchange::Driver> = Box::new(SourceDriver::<T> {
                reader: Box::new(reader),
                out: cast(down),
                info: info.clone(),
                batch_size,
                state: SourceState::Running,
                watermark: None,
                idle: false,
            });
            Ok(d)
        };
        let node = self.add_node(Node {
            name: name.to_string(),
            parallelism: None,
            inputs: vec![],
            kind: Kind::Source(Arc::new(build)),
            out_type: TypeOps::<T>::arc(),
        });
        DataStream {
            env: self.clone(),
            node,
            _t: PhantomData,
        }
    }

    /// A bounded source over `items`, split among the parallel instances.
    pub fn from_iter<T>(&self, name: &str, items: Vec<T>) -> DataStream<T>
    where
        T: Clone + Send + Sync + 'static,
    {
        let items = Arc::new(items);
        self.source(name, move |info| {
            Ok(VecSource {
                items: items.clone(),
                next: info.subtask,
                step: info.parallelism,
            })
        })
    }

    /// Starts the job on worker threads and returns at once.
    pub fn start(&self, job_name: &str) -> Result<JobHandle, JobError> {
        let graph = std::mem::take(&mut *self.graph.borrow_mut());
        let checkpoint = self.checkpoint.borrow().clone();
        let restore = self.restore.borrow().clone();
        execute::start(graph, self.config(), checkpoint, restore, job_name)
    }

    /// Runs the job until every source is exhausted and all data reached the sinks.
    pub fn execute(&self, job_name: &str) -> Result<JobSummary, JobError> {
        self.start(job_name)?.join()
    }
}

impl<T: Clone + Send + 'static> DataStream<T> {
    fn then<O, B>(&self, name: &str, route: RouteSpec, build: B) -> DataStream<O>
    where
        O: Clone + Send + 'static,
        B: Fn(&TaskInfo, &mut Outlets, Out<O>) -> Result<Out<T>, JobError> + Send + Sync + 'static,
    {
        let b = move |info: &TaskInfo,
                      outlets: &mut Outlets,
                      down: AnyBox|
              -> Result<AnyBox, JobError> {
            let up: Out<T> = build(info, outlets, cast(down))?;
            Ok(Box::new(up))
        };
        let node = self.env.add_node(Node {
            name: name.to_string(),
            parallelism: None,
            inputs: vec![Edge {
                from: self.node,
                route,
            }],
            kind: Kind::Operator(Arc::new(b)),
            out_type: TypeOps::<O>::arc(),
        });
        DataStream {
            env: self.env.clone(),
            node,
            _t: PhantomData,
        }
    }

    /// Sets the parallelism of the operator that produces this stream.
    pub fn set_parallelism(self, parallelism: usize) -> Self {
        self.env.graph.borrow_mut().nodes[self.node].parallelism = Some(parallelism);
        self
    }

    /// Renames the operator that produces this stream (names appear in logs and metrics).
    pub fn name(self, name: &str) -> Self {
        self.env.graph.borrow_mut().nodes[self.node].name = name.to_string();
        self
    }

    /// Applies `f` to every record.
    pub fn map<O, F>(&self, f: F) -> DataStream<O>
    where
        O: Clone + Send + 'static,
        F: Fn(T) -> O + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        self.then("map", RouteSpec::Forward, move |_, _, out| {
            Ok(Box::new(MapOp { f: f.clone(), out }))
        })
    }

    /// Keeps the records for which `f` is true.
    pub fn filter<F>(&self, f: F) -> DataStream<T>
    where
        F: Fn(&T) -> bool + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        self.then("filter", RouteSpec::Forward, move |_, _, out| {
            Ok(Box::new(FilterOp { f: f.clone(), out }))
        })
    }

    /// Applies `f` to every record and emits all its results.
    pub fn flat_map<O, I, F>(&self, f: F) -> DataStream<O>
    where
        O: Clone + Send + 'static,
        I: IntoIterator<Item = O>,
        F: Fn(T) -> I + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        self.then("flat_map", RouteSpec::Forward, move |_, _, out| {
            Ok(Box::new(FlatMapOp { f: f.clone(), out }))
        })
    }

    /// Fallible map: `Ok(Some(o))` emits, `Ok(None)` drops the record, `Err` fails the job.
    pub fn try_map<O, F>(&self, name: &str, f: F) -> DataStream<O>
    where
        O: Clone + Send + 'static,
        F: Fn(T) -> Result<Option<O>, BoxError> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        self.then(name, RouteSpec::Forward, move |info, _, out| {
            Ok(Box::new(TryMapOp {
                f: f.clone(),
                info: info.clone(),
                out,
            }))
        })
    }

    /// Runs a [`ProcessFunction`] (one clone per parallel instance).
    pub fn process<O, P>(&self, name: &str, f: P) -> DataStream<O>
    where
        O: Clone + Send + 'static,
        P: ProcessFunction<T, O>,
    {
        self.then(name, RouteSpec::Forward, move |info, _, out| {
            let mut f = f.clone();
            f.open(info).map_err(|e| JobError::from_user(info, e))?;
            Ok(Box::new(ProcessOp {
                f,
                info: info.clone(),
                watermark: NO_TIMESTAMP,
                out,
                closed: false,
            }))
        })
    }

    /// Assigns event timestamps (ms) and generates watermarks that trail the largest timestamp
    /// seen by `max_out_of_orderness`.
    pub fn with_timestamps<F>(&self, f: F, max_out_of_orderness: Duration) -> DataStream<T>
    where
        F: Fn(&T) -> Timestamp + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let ooo = max_out_of_orderness.as_millis().min(i64::MAX as u128) as i64;
        self.then("timestamps", RouteSpec::Forward, move |_, _, out| {
            Ok(Box::new(TimestampOp {
                f: f.clone(),
                out_of_orderness_ms: ooo,
                max_ts: NO_TIMESTAMP,
                emitted: NO_TIMESTAMP,
                out,
            }))
        })
    }

    /// Partitions the stream by key; every record of a key goes to the same parallel instance.
    pub fn key_by<K, F>(&self, f: F) -> KeyedStream<T, K>
    where
        K: Hash + Eq + Clone + 'static,
        F: Fn(&T) -> K + Send + Sync + 'static,
    {
        KeyedStream {
            input: self.clone(),
            key: Arc::new(f),
        }
    }

    /// Redistributes batches round-robin over the next operator's instances.
    pub fn rebalance(&self) -> DataStream<T> {
        self.then("rebalance", RouteSpec::Rebalance, |_, _, out| Ok(out))
    }

    /// Sends every record to every instance of the next operator.
    pub fn broadcast(&self) -> DataStream<T> {
        self.then("broadcast", RouteSpec::Broadcast, |_, _, out| Ok(out))
    }

    /// Merges streams of the same type.
    pub fn union(&self, others: &[DataStream<T>]) -> DataStream<T> {
        let mut inputs = vec![Edge {
            from: self.node,
            route: RouteSpec::Rebalance,
        }];
        inputs.extend(others.iter().map(|o| Edge {
            from: o.node,
            route: RouteSpec::Rebalance,
        }));
        let b =
            |_: &TaskInfo, _: &mut Outlets, down: AnyBox| -> Result<AnyBox, JobError> { Ok(down) };
        let node = self.env.add_node(Node {
            name: "union".to_string(),
            parallelism: None,
            inputs,
            kind: Kind::Operator(Arc::new(b)),
            out_type: TypeOps::<T>::arc(),
        });
        DataStream {
            env: self.env.clone(),
            node,
            _t: PhantomData,
        }
    }

    /// Adds a sink. `factory` runs once per parallel instance, on its worker thread.
    pub fn sink<W, F>(&self, name: &str, factory: F)
    where
        W: SinkWriter<T> + 'static,
        F: Fn(&TaskInfo) -> Result<W, BoxError> + Send + Sync + 'static,
    {
        let b = move |info: &TaskInfo, outlets: &mut Outlets| -> Result<AnyBox, JobError> {
            let w = factory(info).map_err(|e| JobError::from_user(info, e))?;
            let writer: Rc<RefCell<Box<dyn SinkWriter<T>>>> = Rc::new(RefCell::new(Box::new(w)));
            outlets.push(Rc::new(SinkOutlet {
                writer: writer.clone(),
                info: info.clone(),
            }));
            let out: Out<T> = Box::new(SinkOp {
                writer,
                info: info.clone(),
            });
            Ok(Box::new(out))
        };
        self.env.add_node(Node {
            name: name.to_string(),
            parallelism: None,
            inputs: vec![Edge {
                from: self.node,
                route: RouteSpec::Forward,
            }],
            kind: Kind::Sink(Arc::new(b)),
            out_type: TypeOps::<T>::arc(),
        });
    }

    /// A sink calling `f` for every record, on the worker thread (keep it fast).
    pub fn for_each<F>(&self, name: &str, f: F)
    where
        F: FnMut(T) -> Result<(), BoxError> + Clone + Send + Sync + 'static,
    {
        self.sink(name, move |_| Ok(FnWriter(f.clone())))
    }

    /// Collects every record in memory; for tests and small results.
    pub fn collect(&self) -> CollectHandle<T> {
        let v = Arc::new(Mutex::new(Vec::new()));
        let handle = CollectHandle(v.clone());
        self.sink("collect", move |_| Ok(CollectWriter(v.clone())));
        handle
    }
}

impl<T: Clone + Send + 'static, K: Hash + Eq + Clone + StateData> KeyedStream<T, K> {
    fn hash_route(&self) -> RouteSpec {
        let key = self.key.clone();
        let f: HashFn<T> = Arc::new(move |r: &T, max_p| key_group_for(&key(r), max_p));
        RouteSpec::Hash(Arc::new(f))
    }

    /// Applies `f` to every record after partitioning by key (Flink's `keyBy(..).map(..)`).
    pub fn map<O, F>(&self, f: F) -> DataStream<O>
    where
        O: Clone + Send + 'static,
        F: Fn(T) -> O + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        self.input.then("map", self.hash_route(), move |_, _, out| {
            Ok(Box::new(MapOp { f: f.clone(), out }))
        })
    }

    /// The general running aggregate: for each record, `f(state_of_its_key, record)` may update
    /// the key's state (setting it to `None` removes it) and emit one record.
    ///
    /// `f` gets the state to change, so every record counts as a change of its key's state,
    /// and the next incremental checkpoint writes that key's state again. When most records
    /// leave their key's state as it was (a top-N that a record rarely enters, a maximum it
    /// rarely beats), a [`KeyedProcessFunction`](crate::KeyedProcessFunction) that reads with
    /// `ValueState::get` and writes only on a change keeps checkpoints to what changed.
    pub fn map_with_state<S, O, F>(&self, name: &str, f: F) -> DataStream<O>
    where
        S: StateData,
        O: Clone + Send + 'static,
        F: Fn(&mut Option<S>, T) -> Result<Option<O>, BoxError> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let key = self.key.clone();
        self.input
            .then(name, self.hash_route(), move |info, _, out| {
                Ok(Box::new(KeyedFoldOp {
                    key: key.clone(),
                    f: f.clone(),
                    state: restored_groups(info)?,
                    info: info.clone(),
                    out,
                    _t: PhantomData,
                }))
            })
    }

    /// Running reduce: emits the new accumulated value of the record's key for every record.
    pub fn reduce<F>(&self, f: F) -> DataStream<T>
    where
        T: StateData,
        F: Fn(T, T) -> T + Send + Sync + 'static,
    {
        self.map_with_state("reduce", move |acc: &mut Option<T>, r: T| {
            let v = match acc.take() {
                None => r,
                Some(a) => f(a, r),
            };
            *acc = Some(v.clone());
            Ok(Some(v))
        })
    }

    /// Running sum of a field (Flink's `sum(field)`): emits each record with the field replaced
    /// by the running sum of its key.
    pub fn sum<V, F>(&self, field: F) -> DataStream<T>
    where
        V: AddAssign + Copy + StateData,
        F: Fn(&mut T) -> &mut V + Send + Sync + 'static,
    {
        self.map_with_state("sum", move |acc: &mut Option<V>, mut r: T| {
            let slot = field(&mut r);
            match acc {
                Some(a) => {
                    *a += *slot;
                    *slot = *a;
                }
                None => *acc = Some(*slot),
            }
            Ok(Some(r))
        })
    }

    /// Running minimum of a field: each record is emitted with the field replaced by the
    /// smallest value seen for its key.
    pub fn min<V, F>(&self, field: F) -> DataStream<T>
    where
        V: PartialOrd + Copy + StateData,
        F: Fn(&mut T) -> &mut V + Send + Sync + 'static,
    {
        self.map_with_state("min", move |acc: &mut Option<V>, mut r: T| {
            let slot = field(&mut r);
            match acc {
                Some(a) if *a <= *slot => *slot = *a,
                _ => *acc = Some(*slot),
            }
            Ok(Some(r))
        })
    }

    /// Running maximum of a field.
    pub fn max<V, F>(&self, field: F) -> DataStream<T>
    where
        V: PartialOrd + Copy + StateData,
        F: Fn(&mut T) -> &mut V + Send + Sync + 'static,
    {
        self.map_with_state("max", move |acc: &mut Option<V>, mut r: T| {
            let slot = field(&mut r);
            match acc {
                Some(a) if *a >= *slot => *slot = *a,
                _ => *acc = Some(*slot),
            }
            Ok(Some(r))
        })
    }

    /// Runs a [`KeyedProcessFunction`] with keyed state and timers.
    pub fn process<O, P>(&self, name: &str, f: P) -> DataStream<O>
    where
        O: Clone + Send + 'static,
        P: KeyedProcessFunction<K, T, O>,
    {
        let key = self.key.clone();
        self.input
            .then(name, self.hash_route(), move |info, _, out| {
                Ok(Box::new(KeyedProcessOp::new(
                    key.clone(),
                    f.clone(),
                    info.clone(),
                    out,
                )?))
            })
    }

    /// Groups each key's records into event-time windows.
    pub fn window(self, assigner: WindowAssigner) -> WindowedStream<T, K> {
        WindowedStream {
            keyed: self,
            assigner,
        }
    }
}

impl<T: Clone + Send + 'static, K: Hash + Eq + Clone + Send + StateData> WindowedStream<T, K> {
    /// Aggregates each window incrementally with `agg`.
    pub fn aggregate<A>(&self, name: &str, agg: A) -> DataStream<WindowResult<K, A::Out>>
    where
        A: AggregateFunction<T>,
    {
        let key = self.keyed.key.clone();
        let assigner = self.assigner;
        self.keyed
            .input
            .then(name, self.keyed.hash_route(), move |info, _, out| {
                let range = key_group_range(info.subtask, info.parallelism, info.max_parallelism);
                Ok(Box::new(WindowOp::new(
                    key.clone(),
                    agg.clone(),
                    assigner,
                    range,
                    info.clone(),
                    out,
                )?))
            })
    }
    /// Records per key and window.
    pub fn count(&self) -> DataStream<WindowResult<K, u64>> {
        self.aggregate("window_count", Count)
    }
    /// Sum of a field per key and window.
    pub fn sum<V, F>(&self, f: F) -> DataStream<WindowResult<K, V>>
    where
        F: Fn(&T) -> V + Clone + Send + Sync + 'static,
        V: std::ops::Add<Output = V> + Default + Copy + Send + StateData,
    {
        self.aggregate("window_sum", Sum(f))
    }
    /// Minimum of a field per key and window.
    pub fn min<V, F>(&self, f: F) -> DataStream<WindowResult<K, V>>
    where
        F: Fn(&T) -> V + Clone + Send + Sync + 'static,
        V: PartialOrd + Copy + Send + StateData,
    {
        self.aggregate("window_min", Min(f))
    }
    /// Maximum of a field per key and window.
    pub fn max<V, F>(&self, f: F) -> DataStream<WindowResult<K, V>>
    where
        F: Fn(&T) -> V + Clone + Send + Sync + 'static,
        V: PartialOrd + Copy + Send + StateData,
    {
        self.aggregate("window_max", Max(f))
    }
    /// Mean of a field per key and window.
    pub fn avg<F>(&self, f: F) -> DataStream<WindowResult<K, f64>>
    where
        F: Fn(&T) -> f64 + Clone + Send + Sync + 'static,
    {
        self.aggregate("window_avg", Avg(f))
    }
    /// Reduces each key's records in a window with `f`, applied in arrival order (one
    /// accumulator per window, also for sliding windows: `f` need not be associative or
    /// commutative, so the operator does not slice; for sums, counts, minima, maxima and means
    /// use the dedicated aggregates, which do).
    pub fn reduce<F>(&self, f: F) -> DataStream<WindowResult<K, T>>
    where
        T: StateData,
        F: Fn(T, T) -> T + Send + Sync + 'static,
    {
        self.aggregate("window_reduce", ReduceAgg(Arc::new(f)))
    }
}
