//! Live counters of a running job, shared by all subtasks of a node (relaxed atomics, updated
//! once per batch).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

/// Counters of one operator (summed over its parallel instances).
#[derive(Debug)]
pub struct NodeMetrics {
    /// Operator name.
    pub name: String,
    /// True for sources.
    pub is_source: bool,
    /// True for sinks.
    pub is_sink: bool,
    /// Records that entered the operator (for sources: records produced).
    pub records_in: AtomicU64,
    /// Records dropped because they arrived after their event-time window fired.
    pub late_records: AtomicU64,
    /// Latest watermark seen by any instance (ms; `i64::MIN` before the first).
    pub watermark: AtomicI64,
    /// Parallel instances.
    pub parallelism: usize,
    /// Indexes (in [`JobMetrics::nodes`]) of the operators feeding this one: the job graph's
    /// edges.
    pub inputs: Vec<usize>,
    /// Index (in [`JobMetrics::nodes`]) of the operator heading the chain this one runs in
    /// (itself when it heads one): chained operators are fed, and held back, together.
    pub chain_head: usize,
    /// On a chain head: nanoseconds its instances could not be fed because their output was
    /// full (backpressure from downstream), summed over instances. Divide by elapsed time
    /// and `parallelism` for the share of time backpressured (Flink's
    /// `backPressuredTimeMsPerSecond`). 0 on operators that do not head a chain.
    pub backpressured_ns: AtomicU64,
}

impl NodeMetrics {
    pub(crate) fn new(
        name: String,
        is_source: bool,
        is_sink: bool,
        parallelism: usize,
        inputs: Vec<usize>,
        chain_head: usize,
    ) -> Self {
        NodeMetrics {
            name,
            is_source,
            is_sink,
            records_in: AtomicU64::new(0),
            late_records: AtomicU64::new(0),
            watermark: AtomicI64::new(i64::MIN),
            parallelism,
            inputs,
            chain_head,
            backpressured_ns: AtomicU64::new(0),
        }
    }
}

/// Counters of a job.
#[derive(Debug, Clone)]
pub struct JobMetrics {
    /// One entry per operator, in graph order.
    pub nodes: Arc<Vec<Arc<NodeMetrics>>>,
}

impl JobMetrics {
    /// Records produced by all sources.
    pub fn source_records(&self) -> u64 {
        self.sum(|n| n.is_source)
    }
    /// Records consumed by all sinks.
    pub fn sink_records(&self) -> u64 {
        self.sum(|n| n.is_sink)
    }
    fn sum(&self, pick: impl Fn(&NodeMetrics) -> bool) -> u64 {
        self.nodes
            .iter()
            .filter(|n| pick(n))
            .map(|n| n.records_in.load(Ordering::Relaxed))
            .sum()
    }
}
