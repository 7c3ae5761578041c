//! Weir's runtime: a thread-per-core dataflow executor.
//!
//! A job is built with [`StreamEnv`] and [`DataStream`] (a DataStream API in the spirit of
//! Apache Flink), then instantiated `parallelism` times and run on pinned worker threads.
//! Operators connected by forward edges with equal parallelism are *chained* (direct calls on
//! batches); other edges are *exchanges* over bounded crossbeam channels carrying batches and
//! in-band control messages (watermarks, end of input).
//!
//! The public surface is this facade; every module is private. See `ARCHITECTURE.md`.

mod api;
mod checkpoint;
mod config;
mod encoding;
mod error;
mod exchange;
mod execute;
mod graph;
mod keyed;
mod metrics;
mod operator;
mod placement;
mod source;
mod state;
mod window;
mod worker;

pub use api::{CollectHandle, DataStream, KeyedStream, StreamEnv, WindowedStream};
pub use checkpoint::{
    CheckpointConfig, CheckpointMode, CompletedCheckpoint, FailedCheckpoint, OnCancel, RestoreFrom,
};
pub use config::{RuntimeConfig, DEFAULT_MAX_PARALLELISM};
pub use error::{BoxError, ConfigError, JobError};
pub use execute::{JobHandle, JobMonitor, JobSummary};
pub use keyed::{key_group_for, stable_hash, KeyedContext, KeyedProcessFunction, OpenContext};
pub use metrics::{JobMetrics, NodeMetrics};
pub use operator::{Context, ProcessFunction};
pub use source::{DurableState, PreCommit, SinkWriter, SourcePoll, SourceReader, TaskInfo, Waker};
pub use state::{ListState, MapState, StateData, ValueState};
pub use weir_storage::s3::{S3Checksums, S3Options};
pub use weir_storage::StoreOptions;
pub use window::{AggregateFunction, Avg, Count, Max, Min, Sum, WindowAssigner, WindowResult};

/// Event time in milliseconds since the Unix epoch (any monotonic millisecond scale works).
pub type Timestamp = i64;

/// The watermark that closes every event-time window and fires every timer: end of input.
pub const MAX_WATERMARK: Timestamp = i64::MAX;

/// The timestamp of records that were never assigned one.
pub const NO_TIMESTAMP: Timestamp = i64::MIN;
