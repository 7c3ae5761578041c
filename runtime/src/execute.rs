//! Instantiation of a job graph: chaining, channels, worker threads, and the job handle.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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

pub(crate) fn start(graph: Graph, config: RuntimeConfig, job: &str) -> Result<JobHandle, JobError> {
    let parallelism = validate(&graph, &config)?;
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
    let metrics: Vec<Arc<NodeMetrics>> = graph
        .nodes
        .iter()
        .map(|node| {
            Arc::new(NodeMetrics::new(
                node.name.clone(),
                matches!(node.kind, Kind::Source(_)),
                matches!(node.kind, Kind::Sink(_)),
            ))
        })
        .collect();
    let plan = Plan {
        graph,
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
    let mut threads = Vec::with_capacity(workers);
    let mut wakers = Vec::with_capacity(workers);
    for (w, (tasks, eps)) in assignments.into_iter().zip(per_worker).enumerate() {
        let (waker, doorbell) = Waker::pair();
        wakers.push(waker.clone());
        let plan = plan.clone();
        let (cancel2, stop2, failure2) = (cancel.clone(), stop.clone(), failure.clone());
        let core = (!cores.is_empty()).then(|| cores[w % cores.len()]);
        let name = format!("weir-worker-{w}");
        let spawned = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                if let Some(core) = core {
                    if !core_affinity::set_for_current(core) {
                        tracing::warn!(
                            worker = w,
                            core = core.id,
                            "could not pin worker thread to its core; running unpinned"
                        );
                    }
                }
                run_worker(
                    w, &plan, tasks, eps, waker, doorbell, &cancel2, &stop2, &failure2,
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
    tracing::info!(job = %plan.job, workers, operators = n, "job started");
    Ok(JobHandle {
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

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
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
) {
    let mut worker = Worker {
        index: w,
        tasks: Vec::new(),
        doorbell,
        cancel: cancel.clone(),
        buffer_timeout: plan.config.buffer_timeout,
    };
    let result = catch_unwind(AssertUnwindSafe(|| {
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
            });
        }
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
        Ok(in_type.gate(receivers, head_collector, info))
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

/// A running job.
pub struct JobHandle {
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

    /// Graceful stop: sources end now, in-flight data drains, sinks flush, then `join` returns.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wakers.iter().for_each(Waker::wake);
    }

    /// Stops at once without draining; `join` returns [`JobError::Cancelled`].
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
        self.wakers.iter().for_each(Waker::wake);
    }

    /// True once every worker thread ended.
    pub fn is_finished(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }

    /// Waits for the job to end.
    pub fn join(self) -> Result<JobSummary, JobError> {
        for t in self.threads {
            // Worker threads catch their own panics; a join error cannot carry more.
            let _ = t.join();
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
