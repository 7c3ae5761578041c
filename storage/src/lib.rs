//! Weir's storage layer. It knows files and bytes, nothing of operators or Kafka.
//!
//! Today: the durable file primitives every writer of Weir uses (connectors' committed
//! output now; checkpoint files next). A file is durable once its bytes and its directory entry
//! survive a power loss: write, `fsync` the file, rename it into place, `fsync` the directory.

mod durable;

pub use durable::{commit_rename, fsync_dir, probe_writable, StorageError};
