//! Checkpoints: configuration, barriers, the coordinator's decisions, snapshots and restore.

mod config;

pub use config::{CheckpointConfig, CheckpointMode, OnCancel};
