//! Checkpoints end to end inside one process: a paced source, a keyed running sum and a
//! two-phase-commit sink; an operator panic is injected, the job is restarted from the latest
//! checkpoint, and the committed output must equal the reference exactly (exactly-once), or
//! contain it (at-least-once).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir_runtime::{
    BoxError, CheckpointConfig, CheckpointMode, DataStream, JobError, KeyedContext,
    KeyedProcessFunction, MapState, OnCancel, OpenContext, PreCommit, RestoreFrom, RuntimeConfig,
    SinkWriter, SourcePoll, SourceReader, StreamEnv, WindowAssigner, WindowResult, NO_TIMESTAMP,
};

const N: u64 = 12_000;

/// Emits `0..N` (split by subtask) at a limited pace so that checkpoints happen mid-stream.
struct Paced {
    next: u64,
    step: u64,
    not_before: Instant,
}

impl SourceReader<(u64, u64)> for Paced {
    fn poll(
        &mut self,
        out: &mut Vec<(i64, (u64, u64))>,
        max: usize,
    ) -> Result<SourcePoll, BoxError> {
        if Instant::now() < self.not_before {
            return Ok(SourcePoll::Idle(Some(self.not_before)));
        }
        self.not_before = Instant::now() + Duration::from_millis(1);
        for _ in 0..max.min(40) {
            if self.next >= N {
                return Ok(SourcePoll::Exhausted);
            }
            out.push((NO_TIMESTAMP, (self.next % 13, self.next)));
            self.next += self.step;
        }
        Ok(SourcePoll::Ready)
    }
    fn snapshot(&mut self, _checkpoint: u64) -> Result<Vec<u8>, BoxError> {
        Ok(self.next.to_le_bytes().to_vec())
    }
}

/// The "external system" a 2PC sink writes to: staged (pre-committed) and committed batches.
#[derive(Default)]
struct External {
    staged: BTreeMap<(usize, u64), Vec<(u64, u64)>>,
    committed: Vec<(u64, u64)>,
}

struct TwoPhaseSink {
    subtask: usize,
    buffer: Vec<(u64, u64)>,
    ext: Arc<Mutex<External>>,
}

impl TwoPhaseSink {
    fn commit_upto(&self, id: u64) {
        let mut ext = self.ext.lock().unwrap();
        let ready: Vec<(usize, u64)> = ext
            .staged
            .range((self.subtask, 0)..=(self.subtask, id))
            .map(|(k, _)| *k)
            .collect();
        for k in ready {
            let batch = ext.staged.remove(&k).unwrap();
            ext.committed.extend(batch);
        }
    }
}

impl SinkWriter<(u64, u64)> for TwoPhaseSink {
    fn write(&mut self, batch: &mut Vec<(i64, (u64, u64))>) -> Result<(), BoxError> {
        self.buffer.extend(batch.drain(..).map(|(_, r)| r));
        Ok(())
    }
    fn finish(&mut self) -> Result<(), BoxError> {
        assert!(
            self.buffer.is_empty(),
            "records after the final checkpoint: {:?}",
            &self.buffer[..self.buffer.len().min(5)]
        );
        Ok(())
    }
    fn pre_commit(&mut self, checkpoint: u64) -> Result<PreCommit, BoxError> {
        let batch = std::mem::take(&mut self.buffer);
        self.ext
            .lock()
            .unwrap()
            .staged
            .insert((self.subtask, checkpoint), batch);
        Ok(PreCommit {
            state: checkpoint.to_le_bytes().to_vec(),
            ..PreCommit::default()
        })
    }
    fn commit(&mut self, checkpoint: u64) -> Result<(), BoxError> {
        self.commit_upto(checkpoint);
        Ok(())
    }
}

fn run_once(
    dir: &std::path::Path,
    mode: CheckpointMode,
    ext: Arc<Mutex<External>>,
    panic_at: Option<u64>,
    restore: bool,
) -> Result<Option<u64>, JobError> {
    run_with(
        two_workers(),
        dir,
        mode,
        ext,
        panic_at,
        restore,
        running_sum,
    )
}

/// Checkpoints every 50 ms to `<dir>/store`, local copies in `<dir>/local`.
fn test_config(dir: &std::path::Path) -> CheckpointConfig {
    let mut cfg = CheckpointConfig::new(format!("file://{}", dir.join("store").display()));
    cfg.interval = Duration::from_millis(50);
    cfg.local_dir = dir.join("local");
    cfg
}

/// Two unpinned workers, parallelism 2, small batches.
fn two_workers() -> RuntimeConfig {
    RuntimeConfig {
        workers: 2,
        parallelism: 2,
        pin_workers: false,
        batch_size: 64,
        ..RuntimeConfig::default()
    }
}

/// The stateful stage under test, between the failing map and the sink.
type Stage = fn(DataStream<(u64, u64)>) -> DataStream<(u64, u64)>;

/// Per key, the running sum of the values.
fn running_sum(s: DataStream<(u64, u64)>) -> DataStream<(u64, u64)> {
    s.key_by(|r: &(u64, u64)| r.0)
        .sum(|r: &mut (u64, u64)| &mut r.1)
}

/// Window length and slide of [`window_sums`], ms.
const WINDOW: (i64, i64) = (40, 20);

/// Per key, the sums of sliding event-time windows (record `i` at time `i` ms), each as
/// `(key * 100 000 + window start + 100, sum)` (the first windows start before 0).
fn window_sums(s: DataStream<(u64, u64)>) -> DataStream<(u64, u64)> {
    let (size, slide) = (WINDOW.0 as u64, WINDOW.1 as u64);
    s.with_timestamps(|r: &(u64, u64)| r.1 as i64, Duration::ZERO)
        .key_by(|r: &(u64, u64)| r.0)
        .window(WindowAssigner::sliding(
            Duration::from_millis(size),
            Duration::from_millis(slide),
        ))
        .sum(|r: &(u64, u64)| r.1)
        .map(|w: WindowResult<u64, u64>| (w.key * 100_000 + (w.start + 100) as u64, w.value))
}

/// Per key, tumbling 40 ms sums kept in map state and emitted by event-time timers (record `i`
/// at time `i` ms), each as `(key * 100 000 + window end, sum)`.
#[derive(Clone, Default)]
struct TimerSums {
    sums: Option<MapState<i64, u64>>,
}

impl KeyedProcessFunction<u64, (u64, u64), (u64, u64)> for TimerSums {
    fn open(&mut self, ctx: &mut OpenContext<'_, u64>) -> Result<(), BoxError> {
        self.sums = Some(ctx.map_state("sums"));
        Ok(())
    }
    fn process(
        &mut self,
        r: (u64, u64),
        ctx: &mut KeyedContext<'_, u64, (u64, u64)>,
    ) -> Result<(), BoxError> {
        let end = (r.1 as i64 / WINDOW.0 + 1) * WINDOW.0;
        let sums = self.sums.as_ref().unwrap();
        let sum = sums.get(ctx, &end).copied().unwrap_or(0) + r.1;
        sums.insert(ctx, end, sum);
        ctx.register_event_time_timer(end - 1);
        Ok(())
    }
    fn on_timer(&mut self, ctx: &mut KeyedContext<'_, u64, (u64, u64)>) -> Result<(), BoxError> {
        let end = ctx.timestamp() + 1;
        let sum = self
            .sums
            .as_ref()
            .unwrap()
            .remove(ctx, &end)
            .expect("a sum per timer");
        let k = *ctx.key();
        ctx.emit((k * 100_000 + end as u64, sum));
        Ok(())
    }
}

fn timer_sums(s: DataStream<(u64, u64)>) -> DataStream<(u64, u64)> {
    s.with_timestamps(|r: &(u64, u64)| r.1 as i64, Duration::ZERO)
        .key_by(|r: &(u64, u64)| r.0)
        .process("timer-sums", TimerSums::default())
}

fn run_with(
    config: RuntimeConfig,
    dir: &std::path::Path,
    mode: CheckpointMode,
    ext: Arc<Mutex<External>>,
    panic_at: Option<u64>,
    restore: bool,
    stage: Stage,
) -> Result<Option<u64>, JobError> {
    let run = Run {
        config,
        mode,
        panic_at,
        stop_after: None,
        restore,
        stage,
        local_cache: None,
    };
    run.go(dir, ext).0
}

/// A run of the test job, and what of its checkpoint settings the tests vary.
struct Run {
    config: RuntimeConfig,
    mode: CheckpointMode,
    panic_at: Option<u64>,
    /// Stops the job gracefully (`JobHandle::stop`) once its source read this many records,
    /// with this `on_cancel`.
    stop_after: Option<(u64, OnCancel)>,
    restore: bool,
    stage: Stage,
    local_cache: Option<u64>,
}

impl Run {
    /// Runs the job to its end: the checkpoint it restored or the error, and per completed
    /// checkpoint the bytes of local copies left in the page cache.
    fn go(
        self,
        dir: &std::path::Path,
        ext: Arc<Mutex<External>>,
    ) -> (Result<Option<u64>, JobError>, Vec<u64>) {
        let Run {
            config,
            mode,
            panic_at,
            stop_after,
            restore,
            stage,
            local_cache,
        } = self;
        let env = StreamEnv::new(config);
        let mut cfg = test_config(dir);
        cfg.mode = mode;
        cfg.local_cache = local_cache;
        if let Some((_, on_cancel)) = stop_after {
            cfg.on_cancel = on_cancel;
        }
        env.enable_checkpointing(cfg);
        build(&env, ext, panic_at, restore, stage);
        let handle = match env.start("cp-test") {
            Ok(h) => h,
            Err(e) => return (Err(e), Vec::new()),
        };
        let monitor = handle.monitor();
        let restored = handle.restored_from();
        if let Some((n, _)) = stop_after {
            while handle.metrics().source_records() < n && !handle.is_finished() {
                std::thread::sleep(Duration::from_millis(1));
            }
            handle.stop();
        }
        let end = handle.join().map(|_| restored);
        let cached = monitor
            .checkpoints()
            .iter()
            .map(|c| c.local_cached_bytes)
            .collect();
        (end, cached)
    }
}

/// Sets up the test job's dataflow in `env`.
fn build(
    env: &StreamEnv,
    ext: Arc<Mutex<External>>,
    panic_at: Option<u64>,
    restore: bool,
    stage: Stage,
) {
    if restore {
        env.restore_from(RestoreFrom::Latest);
    }
    let seen = Arc::new(AtomicU64::new(0));
    let input = env
        .source("paced", |info| {
            let next = match info.restored_state() {
                Some(b) => u64::from_le_bytes(b.try_into().unwrap()),
                None => info.subtask as u64,
            };
            Ok(Paced {
                next,
                step: info.parallelism as u64,
                not_before: Instant::now(),
            })
        })
        // One source instance, so that each key's order (and so its running sums) is the input order.
        .set_parallelism(1)
        .map(move |r| {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            if panic_at == Some(n) {
                panic!("injected failure at record {n}");
            }
            r
        })
        .set_parallelism(1);
    stage(input).sink("two-phase", move |info| {
        let ext = ext.clone();
        // Restore: commit what the restored checkpoint pre-committed, drop later staging.
        if let Some(state) = info.restored_state() {
            let id = u64::from_le_bytes(state.try_into().unwrap());
            let sink = TwoPhaseSink {
                subtask: info.subtask,
                buffer: Vec::new(),
                ext: ext.clone(),
            };
            sink.commit_upto(id);
            ext.lock()
                .unwrap()
                .staged
                .retain(|(s, _), _| *s != info.subtask);
        } else if let Some(id) = info.restored_checkpoint() {
            TwoPhaseSink {
                subtask: info.subtask,
                buffer: Vec::new(),
                ext: ext.clone(),
            }
            .commit_upto(id);
            ext.lock()
                .unwrap()
                .staged
                .retain(|(s, _), _| *s != info.subtask);
        }
        Ok(TwoPhaseSink {
            subtask: info.subtask,
            buffer: Vec::new(),
            ext,
        })
    });
}

fn reference() -> HashMap<u64, Vec<u64>> {
    // Per key, the sorted list of running sums.
    let mut sums: HashMap<u64, u64> = HashMap::new();
    let mut out: HashMap<u64, Vec<u64>> = HashMap::new();
    for i in 0..N {
        let s = sums.entry(i % 13).or_default();
        *s += i;
        out.entry(i % 13).or_default().push(*s);
    }
    out
}

fn grouped(v: &[(u64, u64)]) -> HashMap<u64, Vec<u64>> {
    let mut out: HashMap<u64, Vec<u64>> = HashMap::new();
    for (k, s) in v {
        out.entry(*k).or_default().push(*s);
    }
    for l in out.values_mut() {
        l.sort();
    }
    out
}

#[test]
fn exactly_once_after_injected_panic() {
    let d = tempfile::tempdir().unwrap();
    let ext = Arc::new(Mutex::new(External::default()));
    let err = run_once(
        d.path(),
        CheckpointMode::ExactlyOnce,
        ext.clone(),
        Some(N / 2),
        false,
    )
    .unwrap_err();
    assert!(matches!(err, JobError::Panic { .. }), "{err}");
    let committed_before = ext.lock().unwrap().committed.len();
    assert!(
        committed_before > 0,
        "no checkpoint completed before the failure"
    );
    assert!(committed_before < N as usize);
    let restored = run_once(
        d.path(),
        CheckpointMode::ExactlyOnce,
        ext.clone(),
        None,
        true,
    )
    .unwrap();
    assert!(restored.is_some(), "the second run must restore");
    let ext = ext.lock().unwrap();
    assert!(
        ext.staged.is_empty(),
        "uncommitted output left: {:?}",
        ext.staged.keys()
    );
    assert_eq!(grouped(&ext.committed), reference());
}

/// With `local_cache = 0` no local copy stays counted in the page cache once durable, and
/// the restore reads its local copy back from the disk: still exactly once. Unbounded, the
/// local copies stay counted.
#[test]
fn local_copies_dropped_from_the_page_cache_restore_exactly_once() {
    let d = tempfile::tempdir().unwrap();
    let ext = Arc::new(Mutex::new(External::default()));
    let run = |panic_at, restore| Run {
        config: two_workers(),
        mode: CheckpointMode::ExactlyOnce,
        panic_at,
        stop_after: None,
        restore,
        stage: running_sum,
        local_cache: Some(0),
    };
    let (end, cached) = run(Some(N / 2), false).go(d.path(), ext.clone());
    assert!(matches!(end, Err(JobError::Panic { .. })), "{end:?}");
    assert!(
        !cached.is_empty(),
        "no checkpoint completed before the failure"
    );
    assert!(cached.iter().all(|&b| b == 0), "cached: {cached:?}");
    let (end, cached) = run(None, true).go(d.path(), ext.clone());
    assert!(end.unwrap().is_some(), "the second run must restore");
    assert!(cached.iter().all(|&b| b == 0), "cached: {cached:?}");
    let e = ext.lock().unwrap();
    assert!(e.staged.is_empty(), "uncommitted: {:?}", e.staged.keys());
    assert_eq!(grouped(&e.committed), reference());

    let d = tempfile::tempdir().unwrap();
    let ext = Arc::new(Mutex::new(External::default()));
    let (end, cached) = Run {
        local_cache: None,
        ..run(None, false)
    }
    .go(d.path(), ext);
    end.unwrap();
    assert!(
        cached.last().is_some_and(|&b| b > 0),
        "unbounded, the local copies stay counted: {cached:?}"
    );
}

/// How [`assert_windows_restored_exactly_once`] interrupts the first run mid-stream.
#[derive(Clone, Copy)]
enum Interrupt {
    /// An operator panics.
    Panic,
    /// `JobHandle::stop`: sources stop, a final checkpoint, the job ends without error.
    Stop,
}

/// Runs `stage` (whose output names each window once, with its sum) until it is interrupted
/// mid-stream, then restores it, and checks every window was committed exactly once with its
/// sum.
fn assert_windows_restored_exactly_once(
    stage: Stage,
    expected: BTreeMap<u64, u64>,
    interrupt: Interrupt,
) {
    let d = tempfile::tempdir().unwrap();
    let ext = Arc::new(Mutex::new(External::default()));
    let run = |panic_at, stop_after, restore| Run {
        config: two_workers(),
        mode: CheckpointMode::ExactlyOnce,
        panic_at,
        stop_after,
        restore,
        stage,
        local_cache: None,
    };
    match interrupt {
        Interrupt::Panic => {
            let err = run(Some(N / 2), None, false)
                .go(d.path(), ext.clone())
                .0
                .unwrap_err();
            assert!(matches!(err, JobError::Panic { .. }), "{err}");
        }
        Interrupt::Stop => {
            // A stop ends in a checkpoint; the sink fails if anything reaches it after that
            // checkpoint (windows or timers fired by a final watermark: the input has not
            // ended). The stop may land anywhere up to the end of the input.
            run(None, Some((N / 3, OnCancel::Retain)), false)
                .go(d.path(), ext.clone())
                .0
                .unwrap();
        }
    }
    let before = ext.lock().unwrap().committed.len();
    assert!(
        before > 0,
        "no checkpoint completed before the interruption"
    );
    assert!(
        run(None, None, true)
            .go(d.path(), ext.clone())
            .0
            .unwrap()
            .is_some(),
        "the second run must restore"
    );
    let ext = ext.lock().unwrap();
    assert!(ext.staged.is_empty(), "{:?}", ext.staged.keys());
    let mut got: BTreeMap<u64, u64> = BTreeMap::new();
    for (window, sum) in &ext.committed {
        assert!(got.insert(*window, *sum).is_none(), "window {window} twice");
    }
    assert_eq!(got.len(), expected.len());
    assert_eq!(got, expected);
}

/// What [`window_sums`] emits for the records `0..n`, when every window fired.
fn window_sums_of(n: u64) -> BTreeMap<u64, u64> {
    let (size, slide) = WINDOW;
    let mut expected: BTreeMap<u64, u64> = BTreeMap::new();
    for i in 0..n {
        let t = i as i64;
        let mut start = t - t.rem_euclid(slide);
        while start > t - size {
            *expected
                .entry((i % 13) * 100_000 + (start + 100) as u64)
                .or_default() += i;
            start -= slide;
        }
    }
    expected
}

/// Window state (accumulators of open windows, in a keyed table encoded off the worker) is
/// restored exactly: after a failure mid-stream, every window's sum is committed once and
/// equals the sum over its records.
#[test]
fn window_state_is_restored_exactly_once_after_injected_panic() {
    let expected = window_sums_of(N);
    assert_windows_restored_exactly_once(window_sums, expected.clone(), Interrupt::Panic);
    assert_windows_restored_exactly_once(window_sums, expected, Interrupt::Stop);
}

/// Event-time timers (in a keyed table, encoded off the worker) and the map state they read
/// are restored exactly: after a failure mid-stream, every window's timer fires once, with
/// the sum over its records.
#[test]
fn timers_are_restored_exactly_once_after_injected_panic() {
    let mut expected: BTreeMap<u64, u64> = BTreeMap::new();
    for i in 0..N {
        let end = (i as i64 / WINDOW.0 + 1) * WINDOW.0;
        *expected.entry((i % 13) * 100_000 + end as u64).or_default() += i;
    }
    assert_windows_restored_exactly_once(timer_sums, expected.clone(), Interrupt::Panic);
    assert_windows_restored_exactly_once(timer_sums, expected, Interrupt::Stop);
}

/// A stop with `on_cancel = delete` drains: its checkpoints are deleted, so nothing could
/// resume the open windows, and they fire with the records read so far, before the final
/// checkpoint, which commits them.
#[test]
fn a_stop_that_deletes_its_checkpoints_fires_the_open_windows() {
    let d = tempfile::tempdir().unwrap();
    let ext = Arc::new(Mutex::new(External::default()));
    Run {
        config: two_workers(),
        mode: CheckpointMode::ExactlyOnce,
        panic_at: None,
        stop_after: Some((N / 3, OnCancel::Delete)),
        restore: false,
        stage: window_sums,
        local_cache: None,
    }
    .go(d.path(), ext.clone())
    .0
    .unwrap();
    let ext = ext.lock().unwrap();
    assert!(ext.staged.is_empty(), "{:?}", ext.staged.keys());
    // The source reads 0, 1, 2, ... in order; each record is in two windows, so the sums add
    // up to k(k - 1) for the k records read.
    let total: u64 = ext.committed.iter().map(|(_, s)| s).sum();
    let k = (1..=N).find(|k| k * (k - 1) >= total).unwrap();
    assert_eq!(
        k * (k - 1),
        total,
        "not the windows of a prefix of the input"
    );
    assert!(k < N, "the stop came after the end of the input");
    let expected = window_sums_of(k);
    let got: BTreeMap<u64, u64> = ext.committed.iter().copied().collect();
    assert_eq!(got.len(), ext.committed.len(), "a window twice");
    assert_eq!(got, expected);
    let left = std::fs::read_dir(d.path().join("store/cp-test"))
        .map(|r| r.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "the checkpoints were deleted");
}

#[test]
fn exactly_once_with_a_core_reserved_for_the_snapshot_writers() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let config = RuntimeConfig {
        workers: 1,
        parallelism: 2,
        pin_workers: true,
        io_cores: 1,
        batch_size: 64,
        ..RuntimeConfig::default()
    };
    let d = tempfile::tempdir().unwrap();
    let ext = Arc::new(Mutex::new(External::default()));
    let mode = CheckpointMode::ExactlyOnce;
    // Reserving every core is refused before anything runs, naming the setting.
    let every = RuntimeConfig {
        io_cores: cores,
        ..config.clone()
    };
    let err = run_with(every, d.path(), mode, ext.clone(), None, false, running_sum).unwrap_err();
    assert!(
        matches!(&err, JobError::Config(e) if e.setting == "io_cores"),
        "{err}"
    );
    assert!(
        err.to_string().contains("leaves none for the workers"),
        "{err}"
    );
    if cores < 2 {
        // One core cannot be split; the error above is what such a machine gets.
        return;
    }
    let err = run_with(
        config.clone(),
        d.path(),
        mode,
        ext.clone(),
        Some(N / 2),
        false,
        running_sum,
    )
    .unwrap_err();
    assert!(matches!(err, JobError::Panic { .. }), "{err}");
    assert!(!ext.lock().unwrap().committed.is_empty());
    let restored = run_with(config, d.path(), mode, ext.clone(), None, true, running_sum).unwrap();
    assert!(restored.is_some(), "the second run must restore");
    let ext = ext.lock().unwrap();
    assert!(ext.staged.is_empty(), "everything staged was committed");
    assert_eq!(grouped(&ext.committed), reference());
}

/// A stray directory with an id near `u64::MAX` would leave the run's ids to overflow:
/// refused before the job starts, naming it (the next id used to wrap to 0, and the
/// coordinator's assertion then stopped checkpointing without an error).
#[test]
fn a_checkpoint_id_at_the_limit_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let stray = d.path().join(format!("store/cp-test/chk-{}", u64::MAX - 1));
    std::fs::create_dir_all(stray).unwrap();
    let ext = Arc::new(Mutex::new(External::default()));
    let mode = CheckpointMode::ExactlyOnce;
    let err = run_with(two_workers(), d.path(), mode, ext, None, false, running_sum).unwrap_err();
    assert!(
        matches!(&err, JobError::Storage(m) if m.contains("beyond the largest")),
        "{err}"
    );
}

/// Durations beyond a year would overflow the coordinator's deadlines: refused, naming them.
#[test]
fn checkpoint_durations_beyond_a_year_are_refused() {
    let d = tempfile::tempdir().unwrap();
    for setting in ["interval", "min_pause", "timeout"] {
        let mut cfg = test_config(d.path());
        match setting {
            "interval" => cfg.interval = Duration::MAX,
            "min_pause" => cfg.min_pause = Duration::MAX,
            _ => cfg.timeout = Duration::MAX,
        }
        let e = cfg.validate().unwrap_err();
        assert_eq!(e.setting, format!("checkpoint.{setting}"));
        assert!(e.message.contains("at most 365 days"), "{e}");
    }
}

#[test]
fn at_least_once_loses_nothing() {
    let d = tempfile::tempdir().unwrap();
    let ext = Arc::new(Mutex::new(External::default()));
    run_once(
        d.path(),
        CheckpointMode::AtLeastOnce,
        ext.clone(),
        Some(N / 3),
        false,
    )
    .unwrap_err();
    run_once(
        d.path(),
        CheckpointMode::AtLeastOnce,
        ext.clone(),
        None,
        true,
    )
    .unwrap();
    let ext = ext.lock().unwrap();
    let got = grouped(&ext.committed);
    for (k, sums) in reference() {
        let g = &got[&k];
        for s in sums {
            assert!(
                g.binary_search(&s).is_ok(),
                "key {k}: running sum {s} missing"
            );
        }
    }
}

/// A finished bounded job rerun with restore-latest changes no output.
#[test]
fn rerunning_a_finished_job_from_latest_changes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let ext = Arc::new(Mutex::new(External::default()));
    run_once(
        d.path(),
        CheckpointMode::ExactlyOnce,
        ext.clone(),
        None,
        false,
    )
    .unwrap();
    let first = ext.lock().unwrap().committed.len();
    assert_eq!(first, N as usize);
    let restored = run_once(
        d.path(),
        CheckpointMode::ExactlyOnce,
        ext.clone(),
        None,
        true,
    )
    .unwrap();
    assert!(restored.is_some());
    assert_eq!(ext.lock().unwrap().committed.len(), first);
    // Retention keeps at most `retained` (3) complete checkpoints, and no file that none of
    // them references.
    let complete = assert_no_orphans(&d.path().join("store/cp-test"));
    assert!(
        (1..=3).contains(&complete),
        "{complete} complete checkpoints left"
    );
}

/// Checks that every snapshot file in a job's checkpoint directory is listed by a complete
/// checkpoint's metadata (no orphans) and that every listed file exists; returns the number
/// of complete checkpoints.
fn assert_no_orphans(job_dir: &std::path::Path) -> usize {
    let mut listed = std::collections::BTreeSet::new();
    let mut present = std::collections::BTreeSet::new();
    let mut complete = 0;
    for e in std::fs::read_dir(job_dir).unwrap() {
        let dir = e.unwrap().path();
        let id: u64 = dir.file_name().unwrap().to_str().unwrap()[4..]
            .parse()
            .unwrap();
        for f in std::fs::read_dir(&dir).unwrap() {
            let name = f.unwrap().file_name().into_string().unwrap();
            if name == "_metadata" {
                complete += 1;
                let meta = weir_storage::decode_metadata(&std::fs::read(dir.join(&name)).unwrap())
                    .unwrap();
                for f in meta.files {
                    listed.insert((f.checkpoint, f.name));
                }
            } else {
                present.insert((id, name));
            }
        }
    }
    assert_eq!(
        present, listed,
        "files on disk vs files the checkpoints list"
    );
    complete
}

/// Failing checkpoints (the local directory becomes unusable) are aborted and counted while
/// processing goes on; past `tolerable_failures` consecutive failures the job fails with a
/// checkpoint error naming the cause.
#[test]
fn failed_checkpoints_count_toward_tolerable_failures() {
    let d = tempfile::tempdir().unwrap();
    let env = StreamEnv::new(RuntimeConfig {
        workers: 2,
        parallelism: 2,
        pin_workers: false,
        ..RuntimeConfig::default()
    });
    let mut cfg = test_config(d.path());
    cfg.tolerable_failures = 2;
    env.enable_checkpointing(cfg);
    env.source("paced", |info| {
        Ok(Paced {
            next: info.subtask as u64,
            step: info.parallelism as u64,
            not_before: Instant::now(),
        })
    })
    .key_by(|r: &(u64, u64)| r.0)
    .sum(|r: &mut (u64, u64)| &mut r.1)
    .for_each("drop", |_| Ok(()));
    let h = env.start("failing").unwrap();
    while h.checkpoints().is_empty() {
        std::thread::sleep(Duration::from_millis(5));
    }
    // Break the local directory: snapshot files can no longer be created.
    let local = d.path().join("local/failing");
    std::fs::remove_dir_all(&local).unwrap();
    std::fs::write(&local, b"not a directory").unwrap();
    let metrics = h.metrics().clone();
    let before = metrics.source_records();
    let err = h.join().unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, JobError::Checkpoint(_)), "{msg}");
    assert!(
        msg.contains("3 consecutive checkpoints failed") && msg.contains("tolerable_failures = 2"),
        "{msg}"
    );
    assert!(msg.contains("local directory"), "the cause is named: {msg}");
    assert!(
        metrics.source_records() > before,
        "processing went on while checkpoints failed"
    );
}

struct SlowPreCommit {
    slow: Arc<std::sync::atomic::AtomicBool>,
}

impl SinkWriter<(u64, u64)> for SlowPreCommit {
    fn write(&mut self, batch: &mut Vec<(i64, (u64, u64))>) -> Result<(), BoxError> {
        batch.clear();
        Ok(())
    }
    fn finish(&mut self) -> Result<(), BoxError> {
        Ok(())
    }
    fn pre_commit(&mut self, _checkpoint: u64) -> Result<PreCommit, BoxError> {
        let slow = self.slow.load(Ordering::SeqCst);
        Ok(PreCommit {
            state: Vec::new(),
            durable: Some(Box::new(move || {
                if slow {
                    std::thread::sleep(Duration::from_millis(400));
                }
                Ok(())
            })),
            ..PreCommit::default()
        })
    }
}

/// A checkpoint slower than `timeout` is aborted without stopping the job, and checkpoints
/// succeed again once the slowness is gone.
#[test]
fn slow_checkpoints_time_out_and_later_ones_succeed() {
    let d = tempfile::tempdir().unwrap();
    let env = StreamEnv::new(RuntimeConfig {
        workers: 2,
        parallelism: 2,
        pin_workers: false,
        ..RuntimeConfig::default()
    });
    let mut cfg = test_config(d.path());
    cfg.timeout = Duration::from_millis(150);
    cfg.tolerable_failures = 1000;
    env.enable_checkpointing(cfg);
    let slow = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let s2 = slow.clone();
    env.source("paced", |info| {
        Ok(Paced {
            next: info.subtask as u64,
            step: info.parallelism as u64,
            not_before: Instant::now(),
        })
    })
    .sink("slow", move |_| Ok(SlowPreCommit { slow: s2.clone() }));
    let h = env.start("timeouts").unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        h.checkpoints().is_empty(),
        "every checkpoint so far is slower than its timeout"
    );
    // The monitoring view lists them as failed, with the reason.
    let monitor = h.monitor();
    let failed = monitor.failed_checkpoints();
    assert!(!failed.is_empty());
    assert!(
        failed[0].reason.contains("after the timeout of 150ms"),
        "{failed:?}"
    );
    assert!(failed.windows(2).all(|w| w[0].id < w[1].id), "{failed:?}");
    let (completed, failures) = monitor.checkpoint_counts();
    assert_eq!(completed, 0);
    assert!(failures >= failed.len() as u64);
    if h.is_finished() {
        panic!("job ended: {:?}", h.join().map(|_| ()));
    }
    slow.store(false, Ordering::SeqCst);
    let t = Instant::now();
    while h.checkpoints().is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no checkpoint succeeded after the store recovered"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    h.cancel();
    let _ = h.join();
}

/// Records a `ProcessFunction` emits in `close` (end of input) are part of the final
/// checkpoint and committed by two-phase sinks (they used to arrive after the final barrier:
/// never committed, and `TwoPhaseSink::finish` asserts against that).
/// Counts its records in a field (not checkpointed) and emits `(999, count)` in `close`.
#[derive(Clone)]
struct CountAtEnd(u64);

impl weir_runtime::ProcessFunction<(u64, u64), (u64, u64)> for CountAtEnd {
    fn process(
        &mut self,
        _v: (u64, u64),
        _ctx: &mut weir_runtime::Context<'_, (u64, u64)>,
    ) -> Result<(), BoxError> {
        self.0 += 1;
        Ok(())
    }
    fn close(&mut self, ctx: &mut weir_runtime::Context<'_, (u64, u64)>) -> Result<(), BoxError> {
        ctx.emit((999, self.0));
        Ok(())
    }
}

/// `input` -> `CountAtEnd` -> a two-phase sink into `ext`.
fn count_at_end_into(input: DataStream<(u64, u64)>, ext: &Arc<Mutex<External>>) {
    let ext = ext.clone();
    input
        .process("count-at-end", CountAtEnd(0))
        .sink("two-phase", move |info| {
            Ok(TwoPhaseSink {
                subtask: info.subtask,
                buffer: Vec::new(),
                ext: ext.clone(),
            })
        });
}

/// The counts `CountAtEnd` committed.
fn counts_at_end(ext: &External) -> Vec<u64> {
    ext.committed
        .iter()
        .filter(|r| r.0 == 999)
        .map(|r| r.1)
        .collect()
}

/// A stop keeps its final checkpoint and sends no final watermark, but a process function's
/// fields are not checkpointed: `close` runs before that checkpoint (at the barrier after
/// which no record follows), and what it emits is committed with it.
#[test]
fn a_stop_lets_process_functions_emit_before_the_final_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let env = StreamEnv::new(two_workers());
    env.enable_checkpointing(test_config(dir.path()));
    let ext = Arc::new(Mutex::new(External::default()));
    let input = env.source("ticking", |_| {
        Ok(Ticking {
            next: 0,
            not_before: Instant::now(),
        })
    });
    count_at_end_into(input, &ext);
    let h = env.start("close-at-stop").unwrap();
    while h.metrics().source_records() < 2000 {
        std::thread::sleep(Duration::from_millis(5));
    }
    h.stop();
    let metrics = h.metrics().clone();
    h.join().unwrap();
    let ext = ext.lock().unwrap();
    let counts = counts_at_end(&ext);
    assert_eq!(counts.len(), 2, "one count per subtask: {counts:?}");
    assert_eq!(counts.iter().sum::<u64>(), metrics.source_records());
    assert!(ext.staged.is_empty(), "{:?}", ext.staged.keys());
}

#[test]
fn records_emitted_at_the_end_of_input_are_committed() {
    let dir = tempfile::tempdir().unwrap();
    let env = StreamEnv::new(RuntimeConfig {
        workers: 2,
        parallelism: 2,
        pin_workers: false,
        ..RuntimeConfig::default()
    });
    env.enable_checkpointing(test_config(dir.path()));
    let ext = Arc::new(Mutex::new(External::default()));
    count_at_end_into(
        env.from_iter("numbers", (0..1000u64).map(|i| (i, 1)).collect()),
        &ext,
    );
    env.execute("close-emits").unwrap();
    let ext = ext.lock().unwrap();
    let counts = counts_at_end(&ext);
    assert_eq!(
        counts.len(),
        2,
        "one end-of-input record per subtask: {counts:?}"
    );
    assert_eq!(counts.iter().sum::<u64>(), 1000);
    assert!(
        ext.staged.is_empty(),
        "everything pre-committed was committed"
    );
}

/// Emits `(i % 97, i)` for ever, 20 records a millisecond, from its restored position.
struct Ticking {
    next: u64,
    not_before: Instant,
}

impl SourceReader<(u64, u64)> for Ticking {
    fn poll(
        &mut self,
        out: &mut Vec<(i64, (u64, u64))>,
        _max: usize,
    ) -> Result<SourcePoll, BoxError> {
        if Instant::now() < self.not_before {
            return Ok(SourcePoll::Idle(Some(self.not_before)));
        }
        self.not_before = Instant::now() + Duration::from_millis(1);
        for _ in 0..20 {
            out.push((NO_TIMESTAMP, (self.next % 97, self.next)));
            self.next += 1;
        }
        Ok(SourcePoll::Ready)
    }
    fn snapshot(&mut self, _checkpoint: u64) -> Result<Vec<u8>, BoxError> {
        Ok(self.next.to_le_bytes().to_vec())
    }
}

/// Every snapshot file under a job's local directory: (inode, its name in the spare directory
/// or `None` in a checkpoint's).
#[cfg(unix)]
fn local_files(job: &std::path::Path) -> Vec<(u64, Option<String>)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for d in std::fs::read_dir(job).into_iter().flatten().flatten() {
        let spare = d.file_name() == "spare";
        for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
            if let Ok(m) = f.metadata() {
                let name = spare.then(|| f.file_name().into_string().unwrap());
                out.push((m.ino(), name));
            }
        }
    }
    out
}

/// What [`run_ticking`] saw: per inode, the places it was in, in order (true: spare); the
/// names of spare files; the most spare files at once.
struct Seen {
    places: HashMap<u64, Vec<bool>>,
    spare_names: std::collections::BTreeSet<String>,
    most: usize,
}

impl Seen {
    /// Files that went from the spare directory into a checkpoint.
    fn reused(&self) -> usize {
        self.places
            .values()
            .filter(|p| p.windows(2).any(|w| w == [true, false]))
            .count()
    }
}

/// Runs the ticking job for `run_for`, polling its local directory.
#[cfg(unix)]
fn run_ticking(dir: &std::path::Path, restore: bool, run_for: Duration) -> Seen {
    let env = StreamEnv::new(RuntimeConfig {
        workers: 2,
        parallelism: 2,
        pin_workers: false,
        ..RuntimeConfig::default()
    });
    let mut cfg = CheckpointConfig::new(format!("file://{}", dir.join("store").display()));
    cfg.interval = Duration::from_millis(30);
    cfg.local_dir = dir.join("local");
    cfg.retained = 2;
    // Full checkpoints: each one's files retire as soon as two newer ones completed.
    cfg.incremental = false;
    env.enable_checkpointing(cfg);
    if restore {
        env.restore_from(RestoreFrom::Latest);
    }
    env.source("ticking", |info| {
        let next = info
            .restored_state()
            .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
        Ok(Ticking {
            next,
            not_before: Instant::now(),
        })
    })
    .set_parallelism(1)
    .key_by(|r: &(u64, u64)| r.0)
    .sum(|r: &mut (u64, u64)| &mut r.1)
    .sink("discard", |_| Ok(Discard));
    let job = dir.join("local/spare-test");
    let h = env.start("spare-test").unwrap();
    let mut seen = Seen {
        places: HashMap::new(),
        spare_names: Default::default(),
        most: 0,
    };
    let t = Instant::now();
    while t.elapsed() < run_for {
        let files = local_files(&job);
        seen.most = seen
            .most
            .max(files.iter().filter(|f| f.1.is_some()).count());
        for (ino, name) in files {
            let spare = name.is_some();
            seen.spare_names.extend(name);
            let places = seen.places.entry(ino).or_default();
            if places.last() != Some(&spare) {
                places.push(spare);
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    h.cancel();
    let _ = h.join();
    seen
}

struct Discard;

impl SinkWriter<(u64, u64)> for Discard {
    fn write(&mut self, batch: &mut Vec<(i64, (u64, u64))>) -> Result<(), BoxError> {
        batch.clear();
        Ok(())
    }
    fn finish(&mut self) -> Result<(), BoxError> {
        Ok(())
    }
}

/// Retention hands the local copies of retired checkpoints to the snapshot writers, which
/// overwrite them instead of creating new files (at most two per worker wait), but never the
/// files of the checkpoint a run was restored from (they stay mapped while it runs).
#[cfg(unix)]
#[test]
fn retired_local_copies_are_reused_but_never_the_restored_ones() {
    let d = tempfile::tempdir().unwrap();
    let first = run_ticking(d.path(), false, Duration::from_millis(1500));
    assert!(
        first.most <= 4,
        "{} spare files at once (at most 2 per worker)",
        first.most
    );
    assert!(first.reused() >= 4, "{} files reused", first.reused());
    // The restored run (first checkpoint: one past the newest in the store) must not make
    // spare files of the checkpoints of the first run, whose files it may have mapped. A
    // spare file is named after the checkpoint it came from.
    let job = d.path().join("local/spare-test");
    let already: std::collections::BTreeSet<String> =
        local_files(&job).into_iter().filter_map(|f| f.1).collect();
    let store = format!("file://{}", d.path().join("store").display());
    let newest = weir_storage::open_store(&store, "spare-test")
        .unwrap()
        .list()
        .unwrap()
        .into_iter()
        .max()
        .unwrap();
    let second = run_ticking(d.path(), true, Duration::from_millis(1500));
    assert!(second.most <= 4, "{} spare files at once", second.most);
    for name in second.spare_names.difference(&already) {
        let id: u64 = name
            .strip_prefix("chk-")
            .and_then(|n| n.split('-').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("spare file `{name}`"));
        assert!(
            id > newest,
            "`{name}`: a file of the first run (checkpoints up to {newest}) became spare"
        );
    }
    assert!(second.reused() >= 4, "{} files reused", second.reused());
}
