//! Checkpoints: configuration, barriers, the coordinator's decisions, snapshots and restore.
//!
//! Protocol (Chandy-Lamport with aligned barriers, as in Flink): the coordinator triggers
//! checkpoint `n`; every source records its position and emits barrier `n` in-band; an operator
//! with several input channels holds back each channel that delivered barrier `n` until all
//! did (exactly-once; at-least-once does not hold back), snapshots its state and forwards the
//! barrier; sinks pre-commit. Each worker writes its share to one memory-mapped file under
//! `local_dir`, a writer thread copies it to the store and acknowledges; when every worker
//! acknowledged, the coordinator writes the metadata (last, atomically), then notifies every
//! worker, and sinks commit.

mod config;
mod coordinator;
mod decider;
mod messages;
mod restore;
mod snapshots;

pub use config::{CheckpointConfig, CheckpointMode, OnCancel};
pub(crate) use coordinator::History;
pub use coordinator::{CompletedCheckpoint, FailedCheckpoint};
pub use restore::RestoreFrom;

pub(crate) use coordinator::{delete_all, run as run_coordinator, CoordinatorSetup};
pub(crate) use messages::{ToCoordinator, ToWorker};
pub(crate) use restore::{resolve as resolve_restore, RestoreSet};
pub(crate) use snapshots::{writer_loop, WorkerCheckpoints, WriterSetup};
