//! Typed errors of the runtime.

/// An error raised by user code (process functions, sources, sinks).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A runtime setting out of its bounds.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid runtime setting `{setting}`: {message}")]
pub struct ConfigError {
    /// The setting's name, as in [`crate::RuntimeConfig`].
    pub setting: &'static str,
    /// What was wrong and what was expected.
    pub message: String,
}

/// Why a job failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The configuration or the job graph is invalid; nothing ran.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The job graph is malformed (e.g. no sink, parallelism above max_parallelism).
    #[error("invalid job graph: {0}")]
    Graph(String),
    /// An operator, source or sink returned an error.
    #[error("operator `{operator}` (subtask {subtask}) failed: {message}")]
    Operator {
        /// The operator's name as given when the graph was built.
        operator: String,
        /// Which parallel instance failed.
        subtask: usize,
        /// The error, with its causes.
        message: String,
    },
    /// User code or the runtime panicked on a worker thread.
    #[error("worker {worker} panicked: {message}")]
    Panic {
        /// Index of the worker thread.
        worker: usize,
        /// The panic payload, when it was a string.
        message: String,
    },
    /// Checkpointing failed beyond what the configuration tolerates.
    #[error("checkpointing failed: {0}")]
    Checkpoint(String),
    /// The checkpoint to restore from is missing, damaged or does not fit the job.
    #[error("cannot restore: {0}")]
    Restore(String),
    /// The checkpoint storage or local directory cannot be used.
    #[error("checkpoint storage: {0}")]
    Storage(String),
    /// The job was cancelled before its input ended.
    #[error("job cancelled")]
    Cancelled,
    /// A thread could not be started.
    #[error("could not start thread `{name}`: {source}")]
    Spawn {
        /// Thread name.
        name: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl JobError {
    pub(crate) fn operator(
        info: &crate::source::TaskInfo,
        message: impl std::fmt::Display,
    ) -> Self {
        JobError::Operator {
            operator: info.operator.to_string(),
            subtask: info.subtask,
            message: message.to_string(),
        }
    }

    /// Builds an operator error from a user error, keeping its chain of causes.
    pub(crate) fn from_user(info: &crate::source::TaskInfo, err: BoxError) -> Self {
        let mut message = err.to_string();
        let mut cause = err.source();
        while let Some(c) = cause {
            message.push_str(": ");
            message.push_str(&c.to_string());
            cause = c.source();
        }
        JobError::operator(info, message)
    }
}
