//! Weir: a thread-per-core stream-processing engine built around checkpoints.
//!
//! The embedded library in five lines:
//! ```
//! use weir::{RuntimeConfig, StreamEnv};
//! let env = StreamEnv::new(RuntimeConfig { workers: 2, parallelism: 2, ..Default::default() });
//! let sums = env.from_iter("words", vec!["a", "b", "a"]).map(|w| (w.to_string(), 1u64)).key_by(|p| p.0.clone()).sum(|p| &mut p.1).collect();
//! env.execute("word-count").unwrap();
//! assert_eq!(sums.take().len(), 3);
//! ```
//! Jobs described in TOML run with the `weir` binary; see `docs/job-file.md`.

pub mod connectors;
pub mod expr;
pub mod http;
pub mod inspect;
pub mod job;
pub mod nexmark;
pub mod plan;
pub mod supervisor;

/// Backs large allocations (keyed state's hash tables) with transparent huge pages; see
/// [`weir_storage::HugePageAlloc`]. The `weir` binary uses it.
pub use weir_storage::HugePageAlloc;

pub use weir_runtime::{
    key_group_for, AggregateFunction, Avg, BoxError, CheckpointConfig, CheckpointMode,
    CollectHandle, CompletedCheckpoint, Context, Count, DataStream, JobError, JobHandle,
    JobMetrics, JobSummary, KeyedContext, KeyedProcessFunction, KeyedStream, ListState, MapState,
    Max, Min, NodeMetrics, OnCancel, OpenContext, PreCommit, ProcessFunction, RestoreFrom,
    RuntimeConfig, S3Checksums, S3Options, SinkWriter, SourcePoll, SourceReader, StateData,
    StoreOptions, StreamEnv, Sum, TaskInfo, Timestamp, ValueState, Waker, WindowAssigner,
    WindowResult, WindowedStream, DEFAULT_MAX_PARALLELISM, MAX_WATERMARK, NO_TIMESTAMP,
};
