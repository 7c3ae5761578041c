//! Instantiation of a job graph: chaining, channels, worker threads, and the job handle.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::checkpoint::{
    self as cp, CheckpointConfig, CompletedCheckpoint, FailedCheckpoint, OnCancel, RestoreFrom,
    RestoreSet, ToCoordinator, ToWorker, WorkerCheckpoints,
};
use crate::config::RuntimeConfig;
use crate::error::JobError;
use crate::exchange::Driver;
use crate::graph::{AnyBox, AnySend, Graph, Kind, NodeId, Outlets};
use crate::metrics::{JobMetrics, NodeMetrics};
use crate::source::{TaskInfo, Waker};
use crate::worker::{Task, Worker};

/// The physical plan shared by all workers (read-only).
struct Plan {
    graph: Graph,
    config: RuntimeConfig,
    checkpoint: Option<CheckpointConfig>,
    restore: Option<Arc<RestoreSet>>,
    first_checkpoint: u64,
    incremental: Option<Arc<crate::state::Incremental>>,
    job: Arc<str>,
    parallelism: Vec<usize>,
    chained: Vec<bool>,
    /// Consumers of each node: (node, index of the input edge).
    children: Vec<Vec<(NodeId, usize)>>,
    metrics: Vec<Arc<NodeMetrics>>,
}

/// Channel endpoints by (consumer node, input edge, upstream subtask, downstream subtask).
type EndpointKey = (NodeId, usize, usize, usize);

#[derive(Default)]
struct Endpoints {
    senders: HashMap<EndpointKey, AnySend>,
    receivers: HashMap<EndpointKey, AnySend>,
}

impl Plan {
    /// True when the edge connects subtask `i` only to subtask `i`.
    fn pointwise(&self, to: NodeId, input: usize) -> bool {
        let e = &self.graph.nodes[to].inputs[input];
        e.route.is_forward() && self.parallelism[e.from] == self.parallelism[to]
    }

    fn targets(&self, to: NodeId, input: usize, from_subtask: usize) -> Vec<usize> {
        if self.pointwise(to, input) {
            vec![from_subtask]
        } else {
            (0..self.parallelism[to]).collect()
        }
    }

    fn sources_of(&self, to: NodeId, input: usize, to_subtask: usize) -> Vec<usize> {
        if self.pointwise(to, input) {
            vec![to_subtask]
        } else {
            (0..self.parallelism[self.graph.nodes[to].inputs[input].from]).collect()
        }
    }

    fn info(
        &self,
        node: NodeId,
        subtask: usize,
        waker: &Waker,
        stop: &Arc<AtomicBool>,
    ) -> TaskInfo {
        TaskInfo {
            job: self.job.clone(),
            operator: self.graph.nodes[node].name.as_str().into(),
            subtask,
            parallelism: self.parallelism[node],
            max_parallelism: self.config.max_parallelism,
            waker: waker.clone(),
            metrics: self.metrics[node].clone(),
            stop: stop.clone(),
            node,
            restore: self.restore.clone(),
            checkpointing: self.checkpoint.is_some(),
            stop_resumes: self
                .checkpoint
                .as_ref()
                .is_some_and(|c| c.on_cancel == OnCancel::Retain),
            first_checkpoint: self.first_checkpoint,
            incremental: self.incremental.clone(),
        }
    }
}

fn validate(graph: &Graph, config: &RuntimeConfig) -> Result<Vec<usize>, JobError> {
    config.validate()?;
    if graph.nodes.is_empty() {
        return Err(JobError::Graph(
            "the job has no operators; add a source and a sink".into(),
        ));
    }
    if !graph.nodes.iter().any(|n| matches!(n.kind, Kind::Sink(_))) {
        return Err(JobError::Graph(
            "the job has no sink; add one with `.sink(..)`, `.for_each(..)` or `.collect()`".into(),
        ));
    }
    let mut par = Vec::with_capacity(graph.nodes.len());
    for n in &graph.nodes {
        let p = n.parallelism.unwrap_or(config.parallelism);
        if p == 0 || p > config.max_parallelism {
            return Err(JobError::Graph(format!(
                "operator `{}` has parallelism {p}; expected 1..={} (max_parallelism)",
                n.name, config.max_parallelism
            )));
        }
        for e in &n.inputs {
            if matches!(graph.nodes[e.from].kind, Kind::Sink(_)) {
                return Err(JobError::Graph(format!(
                    "operator `{}` reads from a sink",
                    n.name
                )));
            }
        }
        par.push(p);
    }
    Ok(par)
}

/// The directory under a job's local directory that holds spare snapshot files.
const SPARE_DIR: &str = "spare";

/// Everything a checkpointed job needs beside its workers.
struct CheckpointSetup {
    cfg: CheckpointConfig,
    store: Arc<dyn weir_storage::CheckpointStore>,
    local_dir: std::path::PathBuf,
    operators: Vec<weir_storage::OperatorEntry>,
}

fn checkpoint_setup(
    cfg: CheckpointConfig,
    job: &str,
    graph: &Graph,
    parallelism: &[usize],
) -> Result<CheckpointSetup, JobError> {
    cfg.validate()?;
    let store: Arc<dyn weir_storage::CheckpointStore> =
        weir_storage::open_store_with(&cfg.storage, job, &cfg.store)
            .map_err(|e| JobError::Storage(format!("checkpoint.storage `{}`: {e}", cfg.storage)))?
            .into();
    store.probe().map_err(|e| {
        JobError::Storage(format!(
            "checkpoint.storage `{}` is not writable: {e}",
            cfg.storage
        ))
    })?;
    store.list().map_err(|e| {
        JobError::Storage(format!(
            "checkpoint.storage `{}` is not readable: {e}",
            cfg.storage
        ))
    })?;
    let local_dir = cfg.local_dir.join(job);
    weir_storage::probe_writable(&local_dir).map_err(|e| {
        JobError::Storage(format!(
            "checkpoint.local_dir `{}` is not writable: {e}",
            cfg.local_dir.display()
        ))
    })?;
    let operators = graph
        .nodes
        .iter()
        .zip(parallelism)
        .map(|(n, p)| weir_storage::OperatorEntry {
            name: n.name.clone(),
            parallelism: *p as u32,
            state_bytes: 0,
        })
        .collect();
    Ok(CheckpointSetup {
        cfg,
        store,
        local_dir,
        operators,
    })
}

/// Checkpoint ids a run may start after: far beyond any id Weir numbers (one per checkpoint,
/// from 1), and far enough from `u64::MAX` that no run's ids overflow.
const MAX_CHECKPOINT_ID: u64 = 1 << 62;

/// Pins the calling thread (`what` of worker `w`) to `core`, if any; failure is a warning.
fn pin(core: Option<core_affinity::CoreId>, w: usize, what: &str) {
    if let Some(core) = core {
        if !core_affinity::set_for_current(core) {
            tracing::warn!(
                worker = w,
                core = core.id,
                "could not pin {what} to its core; running unpinned"
            );
        } else {
            tracing::debug!(worker = w, core = core.id, "{what} pinned");
        }
    }
}

pub(crate) fn start(
    graph: Graph,
    config: RuntimeConfig,
    checkpoint: Option<CheckpointConfig>,
    restore_from: Option<RestoreFrom>,
    job: &str,
) -> Result<JobHandle, JobError> {
    let parallelism = validate(&graph, &config)?;
    if restore_from.is_some() && checkpoint.is_none() {
        return Err(JobError::Restore(
            "restoring needs checkpointing to be configured (where are the checkpoints?)".into(),
        ));
    }
    let ckpt = checkpoint
        .map(|c| checkpoint_setup(c, job, &graph, &parallelism))
        .transpose()?;
    let mut restore = None;
    let mut first_checkpoint = 1;
    if let Some(c) = &ckpt {
        if let Some(from) = &restore_from {
            restore = cp::resolve_restore(
                c.store.as_ref(),
                &c.local_dir,
                from,
                &c.operators,
                config.max_parallelism as u32,
                &c.cfg.store,
            )?;
            match &restore {
                Some(r) => tracing::info!(
                    checkpoint = r.id,
                    local_files = r.local_files,
                    downloaded_files = r.downloaded_files,
                    downloaded_bytes = r.downloaded_bytes,
                    referenced_files = r.files.iter().filter(|f| f.checkpoint != r.id).count(),
                    "restoring from checkpoint"
                ),
                None => tracing::info!("no checkpoint to restore; starting from the beginning"),
            }
        }
        let existing = c
            .store
            .list()
            .map_err(|e| JobError::Storage(format!("cannot list checkpoints: {e}")))?;
        first_checkpoint = match existing.iter().max() {
            None => 1,
            Some(&m) if m < MAX_CHECKPOINT_ID => m + 1,
            Some(&m) => {
                return Err(JobError::Storage(format!(
                    "the checkpoint storage holds checkpoint id {m}, beyond the largest Weir \
                     numbers ({MAX_CHECKPOINT_ID}): remove that directory if it is not a real \
                     checkpoint"
                )))
            }
        };
        if restore_from.is_none() && !existing.is_empty() {
            tracing::warn!(
                checkpoints = existing.len(),
                storage = %c.cfg.storage,
                "the checkpoint storage already holds checkpoints of this job; starting from the beginning anyway (restore them with --restore latest)"
            );
        }
        if let Some(r) = &restore {
            if r.id >= MAX_CHECKPOINT_ID {
                return Err(JobError::Restore(format!(
                    "checkpoint id {} is beyond the largest Weir numbers ({MAX_CHECKPOINT_ID})",
                    r.id
                )));
            }
            first_checkpoint = first_checkpoint.max(r.id + 1);
        }
    }
    let restored_id = restore.as_ref().map(|r| r.id);
    let restored_files = restore
        .as_ref()
        .map(|r| r.files.clone())
        .unwrap_or_default();
    let restore = restore.map(Arc::new);
    let incremental = ckpt.as_ref().filter(|c| c.cfg.incremental).map(|c| {
        Arc::new(crate::state::Incremental {
            completed: std::sync::atomic::AtomicU64::new(restored_id.unwrap_or(0)),
            max_chain: c.cfg.max_delta_chain,
            max_concurrent: c.cfg.max_concurrent,
        })
    });
    let n = graph.nodes.len();
    let mut children = vec![Vec::new(); n];
    for (to, node) in graph.nodes.iter().enumerate() {
        for (i, e) in node.inputs.iter().enumerate() {
            children[e.from].push((to, i));
        }
    }
    let chained: Vec<bool> = graph
        .nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            node.inputs.len() == 1
                && node.inputs[0].route.is_forward()
                && parallelism[node.inputs[0].from] == parallelism[i]
        })
        .collect();
    // Inputs come before their consumers in graph order.
    let mut heads: Vec<usize> = Vec::with_capacity(n);
    for (i, node) in graph.nodes.iter().enumerate() {
        heads.push(if chained[i] {
            heads[node.inputs[0].from]
        } else {
            i
        });
    }
    let metrics: Vec<Arc<NodeMetrics>> = graph
        .nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            Arc::new(NodeMetrics::new(
                node.name.clone(),
                matches!(node.kind, Kind::Source(_)),
                matches!(node.kind, Kind::Sink(_)),
                parallelism[i],
                node.inputs.iter().map(|e| e.from).collect(),
                heads[i],
            ))
        })
        .collect();
    let plan = Plan {
        graph,
        checkpoint: ckpt.as_ref().map(|c| c.cfg.clone()),
        restore,
        first_checkpoint,
        incremental: incremental.clone(),
        job: job.into(),
        parallelism,
        chained,
        children,
        metrics: metrics.clone(),
        config,
    };

    // Channels for every exchange edge.
    let mut endpoints = Endpoints::default();
    for (to, node) in plan.graph.nodes.iter().enumerate() {
        if plan.chained[to] {
            continue;
        }
        for (input, e) in node.inputs.iter().enumerate() {
            let ty = &plan.graph.nodes[e.from].out_type;
            for from_s in 0..plan.parallelism[e.from] {
                for to_s in plan.targets(to, input, from_s) {
                    let (tx, rx) = ty.channel(plan.config.channel_capacity);
                    endpoints.senders.insert((to, input, from_s, to_s), tx);
                    endpoints.receivers.insert((to, input, from_s, to_s), rx);
                }
            }
        }
    }

    // Chain instances, assigned round-robin by subtask to workers.
    let workers = plan.config.workers;
    let mut assignments: Vec<Vec<(NodeId, usize)>> = vec![Vec::new(); workers];
    for head in (0..n).filter(|&i| !plan.chained[i]) {
        for s in 0..plan.parallelism[head] {
            assignments[s % workers].push((head, s));
        }
    }
    // Workers without tasks are not started (e.g. more cores than subtasks).
    assignments.retain(|a| !a.is_empty());
    let workers = assignments.len();
    // Retired local copies that later snapshots overwrite instead of new files (see
    // `weir_storage::SpareFiles`): two per worker, so each write finds one in steady state.
    let spare = ckpt.as_ref().map(|c| {
        Arc::new(
            weir_storage::SpareFiles::new(c.local_dir.join(SPARE_DIR), 2 * workers)
                .with_cache_limit(c.cfg.local_cache),
        )
    });
    let mut per_worker: Vec<Endpoints> = (0..workers).map(|_| Endpoints::default()).collect();
    let chain_of = |mut node: NodeId| {
        while plan.chained[node] {
            node = plan.graph.nodes[node].inputs[0].from;
        }
        node
    };
    let worker_of = |head: NodeId, s: usize| -> usize {
        assignments
            .iter()
            .position(|a| a.contains(&(head, s)))
            .expect("every chain instance is assigned")
    };
    for (key, tx) in endpoints.senders.drain() {
        let (to, input, from_s, _) = key;
        let from = plan.graph.nodes[to].inputs[input].from;
        per_worker[worker_of(chain_of(from), from_s)]
            .senders
            .insert(key, tx);
    }
    for (key, rx) in endpoints.receivers.drain() {
        let (to, _, _, to_s) = key;
        per_worker[worker_of(to, to_s)].receivers.insert(key, rx);
    }

    let plan = Arc::new(plan);
    let cancel = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let failure: Arc<Mutex<Option<JobError>>> = Arc::new(Mutex::new(None));
    let cores = if plan.config.pin_workers {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    if plan.config.pin_workers && cores.is_empty() {
        tracing::warn!("could not list CPU cores; worker threads will not be pinned");
    }
    let placement = crate::placement::place(
        cores.len(),
        workers,
        plan.config.io_cores,
        plan.config.pin_workers,
    )?;
    if placement.oversubscribed {
        tracing::warn!(
            workers,
            cores = cores.len(),
            io_cores = plan.config.io_cores,
            "more workers than cores for them: some workers share a core"
        );
    }
    let mut threads = Vec::with_capacity(workers);
    let mut wakers = Vec::with_capacity(workers);
    let mut helpers = Vec::new();
    let (events_tx, events_rx) = crossbeam_channel::bounded::<ToCoordinator>(4096);
    let mut controls = Vec::new();
    for (w, (tasks, eps)) in assignments.into_iter().zip(per_worker).enumerate() {
        let (waker, doorbell) = Waker::pair();
        wakers.push(waker.clone());
        let plan = plan.clone();
        let (cancel2, stop2, failure2) = (cancel.clone(), stop.clone(), failure.clone());
        let core = placement.workers[w].map(|c| cores[c]);
        let writer_core = placement.writers[w].map(|c| cores[c]);
        let name = format!("weir-worker-{w}");
        let (mut wcp, control) = match &ckpt {
            None => (WorkerCheckpoints::disabled(w), None),
            Some(c) => {
                let (jobs_tx, jobs_rx) = crossbeam_channel::bounded(c.cfg.max_concurrent + 1);
                let setup = cp::WriterSetup {
                    worker: w,
                    local_dir: c.local_dir.clone(),
                    spare: spare.clone(),
                    store: c.store.clone(),
                    events: events_tx.clone(),
                };
                let writer = std::thread::Builder::new()
                    .name(format!("weir-snapshot-writer-{w}"))
                    .spawn(move || {
                        pin(writer_core, w, "snapshot writer");
                        cp::writer_loop(setup, jobs_rx)
                    })
                    .map_err(|source| JobError::Spawn {
                        name: format!("weir-snapshot-writer-{w}"),
                        source,
                    })?;
                helpers.push(writer);
                let (ctl_tx, ctl_rx) = crossbeam_channel::bounded::<ToWorker>(64);
                controls.push((ctl_tx, waker.clone()));
                (
                    WorkerCheckpoints::new(w, jobs_tx, events_tx.clone()),
                    Some(ctl_rx),
                )
            }
        };
        wcp.tasks = tasks.len();
        let spawned = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                run_worker(
                    w, &plan, tasks, eps, waker, doorbell, &cancel2, &stop2, &failure2, wcp,
                    control, core,
                )
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(source) => {
                cancel.store(true, Ordering::SeqCst);
                for t in threads {
                    let _ = t.join();
                }
                return Err(JobError::Spawn { name, source });
            }
        }
    }
    drop(events_tx);
    let history = Arc::new(Mutex::new(cp::History::default()));
    let mut coordinator = None;
    if let Some(c) = ckpt {
        let (shutdown_tx, shutdown_rx) = crossbeam_channel::bounded(1);
        let sources = plan
            .graph
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| matches!(n.kind, Kind::Source(_)))
            .map(|(i, _)| plan.parallelism[i])
            .sum();
        let setup = cp::CoordinatorSetup {
            cfg: c.cfg.clone(),
            job: plan.job.clone(),
            store: c.store.clone(),
            local_dir: c.local_dir.clone(),
            workers: controls,
            events: events_rx,
            shutdown: shutdown_rx,
            failure: failure.clone(),
            cancel: cancel.clone(),
            history: history.clone(),
            operators: c.operators.clone(),
            max_parallelism: plan.config.max_parallelism as u32,
            first_id: first_checkpoint,
            spare: spare.clone(),
            sources,
            incremental,
            restored_files,
        };
        let t = std::thread::Builder::new()
            .name("weir-checkpoint-coordinator".into())
            .spawn(move || cp::run_coordinator(setup))
            .map_err(|source| JobError::Spawn {
                name: "weir-checkpoint-coordinator".into(),
                source,
            })?;
        coordinator = Some(Coordinator {
            thread: t,
            shutdown: shutdown_tx,
            on_cancel: c.cfg.on_cancel,
            store: c.store,
            local_dir: c.local_dir,
        });
    }
    tracing::info!(job = %plan.job, workers, operators = n, restored_from = ?restored_id, "job started");
    Ok(JobHandle {
        coordinator,
        helpers,
        history,
        restored_id,
        user_cancel: AtomicBool::new(false),
        threads,
        cancel,
        stop,
        failure,
        wakers,
        metrics: JobMetrics {
            nodes: Arc::new(metrics),
        },
        started: Instant::now(),
        job: plan.job.to_string(),
    })
}

pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

#[allow(clippy::too_many_arguments)]
fn run_worker(
    w: usize,
    plan: &Plan,
    assigned: Vec<(NodeId, usize)>,
    mut eps: Endpoints,
    waker: Waker,
    doorbell: crossbeam_channel::Receiver<()>,
    cancel: &Arc<AtomicBool>,
    stop: &Arc<AtomicBool>,
    failure: &Mutex<Option<JobError>>,
    cp: WorkerCheckpoints,
    control: Option<crossbeam_channel::Receiver<ToWorker>>,
    core: Option<core_affinity::CoreId>,
) {
    let mut worker = Worker {
        index: w,
        tasks: Vec::new(),
        doorbell,
        cancel: cancel.clone(),
        buffer_timeout: plan.config.buffer_timeout,
        cp,
        control,
    };
    let result = catch_unwind(AssertUnwindSafe(|| {
        // Tables the restore builds go on small pages, moved onto huge pages once every
        // worker has built its tasks (see `HugePageAlloc::restoring`).
        let restoring = plan
            .restore
            .is_some()
            .then(weir_storage::HugePageAlloc::restoring);
        let mut b = Builder {
            plan,
            eps: &mut eps,
            waker: &waker,
            stop,
        };
        for (head, s) in assigned {
            let mut outlets = Vec::new();
            let driver = b.chain(head, s, &mut outlets)?;
            worker.tasks.push(Task {
                name: format!("{}#{s}", plan.graph.nodes[head].name),
                driver,
                outlets,
                input_done: false,
                done: false,
                metrics: plan.metrics[head].clone(),
                blocked_since: None,
            });
        }
        drop(restoring);
        // Checkpoints start once every worker has restored its state: a checkpoint triggered
        // during a long restore would only time out (a counted failure).
        worker.cp.send(ToCoordinator::Ready)?;
        // Pinned only now: building the tasks restores their state, on threads (spawned from
        // this one, inheriting its affinity) that must be free to use every core.
        pin(core, w, "worker thread");
        worker.run()
    }));
    let err = match result {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(p) => Some(JobError::Panic {
            worker: w,
            message: panic_message(&*p),
        }),
    };
    if let Some(e) = err {
        // The first failure is the cause; later ones (cancelled, closed channels) are effects.
        let mut slot = failure.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() && !matches!(e, JobError::Cancelled) {
            tracing::error!(worker = w, error = %e, "job failed");
            *slot = Some(e);
        }
        cancel.store(true, Ordering::SeqCst);
    }
    // Dropping the worker closes its channels only after the failure was recorded.
    drop(worker);
}

struct Builder<'a> {
    plan: &'a Plan,
    eps: &'a mut Endpoints,
    waker: &'a Waker,
    stop: &'a Arc<AtomicBool>,
}

impl Builder<'_> {
    fn chain(
        &mut self,
        head: NodeId,
        s: usize,
        outlets: &mut Outlets,
    ) -> Result<Box<dyn Driver>, JobError> {
        let plan = self.plan;
        let node = &plan.graph.nodes[head];
        let info = plan.info(head, s, self.waker, self.stop);
        if let Kind::Source(build) = &node.kind {
            let out = self.output(head, s, outlets)?;
            return build(&info, out);
        }
        let head_collector = self.collector(head, s, outlets)?;
        let mut receivers = Vec::new();
        for input in 0..node.inputs.len() {
            for from_s in plan.sources_of(head, input, s) {
                let rx = self
                    .eps
                    .receivers
                    .remove(&(head, input, from_s, s))
                    .expect("receiver was created for this worker");
                receivers.push(rx);
            }
        }
        let in_type = &plan.graph.nodes[node.inputs[0].from].out_type;
        let mode = plan.checkpoint.as_ref().map(|c| c.mode).unwrap_or_default();
        Ok(in_type.gate(receivers, head_collector, info, mode))
    }

    /// The input collector of `node` (its operator, wrapped with its metrics).
    fn collector(
        &mut self,
        node_id: NodeId,
        s: usize,
        outlets: &mut Outlets,
    ) -> Result<AnyBox, JobError> {
        let plan = self.plan;
        let node = &plan.graph.nodes[node_id];
        let info = plan.info(node_id, s, self.waker, self.stop);
        let op = match &node.kind {
            Kind::Operator(build) => {
                let out = self.output(node_id, s, outlets)?;
                build(&info, outlets, out)?
            }
            Kind::Sink(build) => build(&info, outlets)?,
            Kind::Source(_) => unreachable!("sources have no input"),
        };
        let in_type = &plan.graph.nodes[node.inputs[0].from].out_type;
        Ok(in_type.counted(plan.metrics[node_id].clone(), op))
    }

    /// The output collector of `node`: its chained consumers and exchanges.
    fn output(
        &mut self,
        node_id: NodeId,
        s: usize,
        outlets: &mut Outlets,
    ) -> Result<AnyBox, JobError> {
        let plan = self.plan;
        let ty = &plan.graph.nodes[node_id].out_type;
        let mut outs = Vec::new();
        for &(to, input) in &plan.children[node_id] {
            if plan.chained[to] {
                outs.push(self.collector(to, s, outlets)?);
            } else {
                let senders: Vec<AnySend> = plan
                    .targets(to, input, s)
                    .into_iter()
                    .map(|to_s| {
                        self.eps
                            .senders
                            .remove(&(to, input, s, to_s))
                            .expect("sender was created for this worker")
                    })
                    .collect();
                let info = plan.info(node_id, s, self.waker, self.stop);
                let (out, outlet) = ty.exchange(
                    &plan.graph.nodes[to].inputs[input].route,
                    senders,
                    plan.config.batch_size,
                    info,
                );
                outlets.push(outlet);
                outs.push(out);
            }
        }
        Ok(match outs.len() {
            0 => ty.discard(),
            1 => outs.pop().expect("one output"),
            _ => ty.tee(outs),
        })
    }
}

/// What a finished job did.
#[derive(Debug, Clone)]
pub struct JobSummary {
    /// Job name.
    pub job: String,
    /// Wall time from start to the end of the last worker.
    pub duration: Duration,
    /// Records produced by all sources.
    pub records_in: u64,
    /// Records consumed by all sinks.
    pub records_out: u64,
}

struct Coordinator {
    thread: JoinHandle<()>,
    shutdown: crossbeam_channel::Sender<()>,
    on_cancel: OnCancel,
    store: Arc<dyn weir_storage::CheckpointStore>,
    local_dir: std::path::PathBuf,
}

/// A cheap, cloneable view of a job for monitoring (an HTTP API, metrics): its counters and
/// checkpoint history, readable from any thread while it runs and after it ended.
#[derive(Clone)]
pub struct JobMonitor {
    job: String,
    metrics: JobMetrics,
    history: Arc<Mutex<cp::History>>,
    restored_id: Option<u64>,
    started: Instant,
}

impl JobMonitor {
    /// Name of the job.
    pub fn job(&self) -> &str {
        &self.job
    }
    /// Live counters.
    pub fn metrics(&self) -> &JobMetrics {
        &self.metrics
    }
    /// Completed checkpoints of this run, oldest first (the newest 10 000).
    pub fn checkpoints(&self) -> Vec<CompletedCheckpoint> {
        let h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        h.completed.iter().cloned().collect()
    }
    /// The newest completed checkpoint of this run (without copying the history).
    pub fn last_checkpoint(&self) -> Option<CompletedCheckpoint> {
        let h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        h.completed.back().cloned()
    }
    /// Failed checkpoints of this run, oldest first (the newest 10 000).
    pub fn failed_checkpoints(&self) -> Vec<FailedCheckpoint> {
        let h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        h.failed.iter().cloned().collect()
    }
    /// Checkpoints completed and failed in this run, all of them counted.
    pub fn checkpoint_counts(&self) -> (u64, u64) {
        let h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        (h.completed_total, h.failed_total)
    }
    /// The checkpoint this run was restored from, if any.
    pub fn restored_from(&self) -> Option<u64> {
        self.restored_id
    }
    /// Time since this run started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

/// A running job.
pub struct JobHandle {
    coordinator: Option<Coordinator>,
    helpers: Vec<JoinHandle<()>>,
    history: Arc<Mutex<cp::History>>,
    restored_id: Option<u64>,
    user_cancel: AtomicBool,
    threads: Vec<JoinHandle<()>>,
    cancel: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    failure: Arc<Mutex<Option<JobError>>>,
    wakers: Vec<Waker>,
    metrics: JobMetrics,
    started: Instant,
    job: String,
}

impl JobHandle {
    /// Live counters.
    pub fn metrics(&self) -> &JobMetrics {
        &self.metrics
    }

    /// Graceful stop: sources stop now, in-flight records are processed, sinks flush (with
    /// checkpoints: a final checkpoint, which sinks commit), then `join` returns. With
    /// checkpoints kept (`on_cancel = retain`) the input has not ended: no final watermark,
    /// so open event-time windows and timers stay in the final checkpoint and fire after a
    /// restore; otherwise they fire now (the stop drains).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wakers.iter().for_each(Waker::wake);
    }

    /// Stops at once without draining; `join` returns [`JobError::Cancelled`].
    pub fn cancel(&self) {
        self.user_cancel.store(true, Ordering::SeqCst);
        self.cancel.store(true, Ordering::SeqCst);
        self.wakers.iter().for_each(Waker::wake);
    }

    /// True once every worker thread ended.
    pub fn is_finished(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }

    /// Completed checkpoints of this run so far, oldest first (the newest 10 000).
    pub fn checkpoints(&self) -> Vec<CompletedCheckpoint> {
        self.monitor().checkpoints()
    }

    /// A view of this job for monitoring from other threads, valid after it ended too.
    pub fn monitor(&self) -> JobMonitor {
        JobMonitor {
            job: self.job.clone(),
            metrics: self.metrics.clone(),
            history: self.history.clone(),
            restored_id: self.restored_id,
            started: self.started,
        }
    }

    /// The checkpoint this run was restored from, if any.
    pub fn restored_from(&self) -> Option<u64> {
        self.restored_id
    }

    /// Waits for the job to end.
    pub fn join(self) -> Result<JobSummary, JobError> {
        for t in self.threads {
            // Worker threads catch their own panics; a join error cannot carry more.
            let _ = t.join();
        }
        if let Some(c) = self.coordinator {
            let _ = c.shutdown.send(());
            let _ = c.thread.join();
            let failed = self
                .failure
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some();
            let by_user =
                self.stop.load(Ordering::SeqCst) || self.user_cancel.load(Ordering::SeqCst);
            if by_user && !failed && c.on_cancel == OnCancel::Delete {
                tracing::info!("job stopped with on_cancel = delete: deleting its checkpoints");
                cp::delete_all(c.store.as_ref(), &c.local_dir);
            }
        }
        for h in self.helpers {
            let _ = h.join();
        }
        if let Some(e) = self
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            return Err(e);
        }
        if self.cancel.load(Ordering::SeqCst) {
            return Err(JobError::Cancelled);
        }
        let summary = JobSummary {
            job: self.job,
            duration: self.started.elapsed(),
            records_in: self.metrics.source_records(),
            records_out: self.metrics.sink_records(),
        };
        tracing::info!(job = %summary.job, records_in = summary.records_in, records_out = summary.records_out, seconds = summary.duration.as_secs_f64(), "job finished");
        Ok(summary)
    }
}
