//! Terminal and discard sinks.

use std::hint::black_box;

use serde::Serialize;
use weir_runtime::{BoxError, SinkWriter, TaskInfo};

use super::file_sink::{IoWriter, JsonLinesWriter, Target};

/// Prints records as JSON lines on standard output (written by a thread per subtask; lines of
/// different subtasks never interleave within a line).
#[derive(Clone, Copy, Default)]
pub struct StdoutSink;

impl StdoutSink {
    /// The writer of one subtask.
    pub fn writer<T: Serialize>(&self, info: &TaskInfo) -> Result<JsonLinesWriter<T>, BoxError> {
        Ok(JsonLinesWriter {
            io: IoWriter::spawn(Target::Stdout, info)?,
            wrote: false,
            uncommitted: Vec::new(),
            _t: std::marker::PhantomData,
        })
    }
}

/// Discards every record (for benchmarks); the sink's input counter still counts them.
#[derive(Clone, Copy, Default)]
pub struct Blackhole;

impl<T> SinkWriter<T> for Blackhole {
    fn write(&mut self, batch: &mut Vec<(i64, T)>) -> Result<(), BoxError> {
        // The records exist (computed and stored in the batch); make sure the optimizer
        // cannot prove otherwise, then drop them.
        black_box(&*batch);
        batch.clear();
        Ok(())
    }
    fn finish(&mut self) -> Result<(), BoxError> {
        Ok(())
    }
}
