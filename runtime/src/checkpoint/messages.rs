//! Messages between workers, their snapshot writers and the coordinator.

use super::decider::Ack;

/// Coordinator -> worker (over a bounded channel; the worker is woken).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ToWorker {
    Trigger(u64),
    Complete(u64),
    FinishSources,
}

/// Worker or snapshot writer -> coordinator.
#[derive(Debug)]
pub(crate) enum ToCoordinator {
    /// The worker built its tasks (restoring their state): it can take part in checkpoints.
    Ready,
    SourceExhausted,
    Ack(u64, Ack),
    Decline {
        id: u64,
        worker: usize,
        reason: String,
    },
}
