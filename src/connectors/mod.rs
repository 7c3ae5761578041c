//! Connectors: where records come from and where they go.
//!
//! Every connector that touches files or the terminal does its I/O on a thread of its own,
//! exchanging data with the worker over a bounded channel; a full channel backpressures the
//! worker's chain instead of blocking it.

mod file_sink;
mod file_source;
mod generator;
mod handoff;
pub mod kafka;
mod stdout;

pub use file_sink::{prepare_output_dir, FileSink};
pub use file_source::{list_input_files, FilePosition, FileSource};
pub use generator::{json_generator, Generator};
pub use stdout::{Blackhole, StdoutSink};

/// A record of the declarative (job file) path: a JSON object.
pub type JsonRecord = serde_json::Map<String, serde_json::Value>;
