//! Reference-model tests: the engine's results on random input equal a plain sequential
//! computation, at parallelism 1, 2 and 4 (on 2 workers, so several subtasks share a worker).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use proptest::prelude::*;
use weir_runtime::{
    KeyedContext, KeyedProcessFunction, OpenContext, RuntimeConfig, StreamEnv, ValueState,
    WindowAssigner,
};

#[derive(Debug, Clone, PartialEq)]
struct Ev {
    id: u64,
    key: u32,
    value: i64,
    ts: i64,
}

fn env(parallelism: usize, batch_size: usize) -> StreamEnv {
    StreamEnv::new(RuntimeConfig {
        workers: 2,
        parallelism,
        batch_size,
        channel_capacity: 2,
        pin_workers: false,
        ..RuntimeConfig::default()
    })
}

fn events(raw: &[(u32, i64, i64)]) -> Vec<Ev> {
    raw.iter()
        .enumerate()
        .map(|(i, &(key, value, ts))| Ev {
            id: i as u64,
            key,
            value,
            ts,
        })
        .collect()
}

/// Running sum per key: for every input the output carries the sum of the values of its key
/// up to and including it, in input order per key. Input order per key is preserved only with
/// parallelism 1 upstream, so the source runs with parallelism 1 and the sum in parallel.
fn check_running_sum(raw: Vec<(u32, i64, i64)>, p: usize, batch: usize) {
    let evs = events(&raw);
    let env = env(p, batch);
    let out = env
        .from_iter("events", evs.clone())
        .set_parallelism(1)
        .key_by(|e: &Ev| e.key)
        .sum(|e: &mut Ev| &mut e.value)
        .collect();
    env.execute("running-sum").unwrap();
    let mut got = out.take();
    got.sort_by_key(|e| e.id);
    let mut sums: HashMap<u32, i64> = HashMap::new();
    let expected: Vec<Ev> = evs
        .iter()
        .map(|e| {
            let s = sums.entry(e.key).or_default();
            *s += e.value;
            Ev {
                value: *s,
                ..e.clone()
            }
        })
        .collect();
    assert_eq!(got, expected);
}

/// Tumbling and sliding window sums and counts per key; with a watermark lag large enough that
/// nothing is late, the result equals grouping all records by (key, window).
fn check_windows(raw: Vec<(u32, i64, i64)>, p: usize, size: i64, slide: i64) {
    let evs = events(&raw);
    let env = env(p, 7);
    let max_ts = evs.iter().map(|e| e.ts).max().unwrap_or(0);
    let assigner = if size == slide {
        WindowAssigner::tumbling(Duration::from_millis(size as u64))
    } else {
        WindowAssigner::sliding(
            Duration::from_millis(size as u64),
            Duration::from_millis(slide as u64),
        )
    };
    let stream = env
        .from_iter("events", evs.clone())
        .with_timestamps(|e: &Ev| e.ts, Duration::from_millis(max_ts as u64 + 1));
    let sums = stream
        .key_by(|e: &Ev| e.key)
        .window(assigner)
        .sum(|e: &Ev| e.value)
        .collect();
    let counts = stream
        .key_by(|e: &Ev| e.key)
        .window(assigner)
        .count()
        .collect();
    env.execute("windows").unwrap();

    let mut expected: BTreeMap<(u32, i64), (i64, u64)> = BTreeMap::new();
    for e in &evs {
        let mut start = e.ts - e.ts.rem_euclid(slide);
        while start > e.ts - size {
            let x = expected.entry((e.key, start)).or_default();
            x.0 += e.value;
            x.1 += 1;
            start -= slide;
        }
    }
    let got_sums: BTreeMap<(u32, i64), i64> = sums
        .take()
        .into_iter()
        .map(|r| {
            assert_eq!(r.end - r.start, size);
            ((r.key, r.start), r.value)
        })
        .collect();
    let got_counts: BTreeMap<(u32, i64), u64> = counts
        .take()
        .into_iter()
        .map(|r| ((r.key, r.start), r.value))
        .collect();
    let exp_sums: BTreeMap<_, _> = expected.iter().map(|(k, v)| (*k, v.0)).collect();
    let exp_counts: BTreeMap<_, _> = expected.iter().map(|(k, v)| (*k, v.1)).collect();
    assert_eq!(got_sums, exp_sums);
    assert_eq!(got_counts, exp_counts);
}

fn input() -> impl Strategy<Value = Vec<(u32, i64, i64)>> {
    prop::collection::vec((0u32..20, -1000i64..1000, 0i64..500), 0..400)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn running_sum_matches_model(raw in input(), p in prop::sample::select(vec![1usize, 2, 4]), batch in 1usize..64) {
        check_running_sum(raw, p, batch);
    }

    #[test]
    fn windows_match_model(raw in input(), p in prop::sample::select(vec![1usize, 2, 4]), size in 1i64..50, k in 1i64..4) {
        let slide = (size / k).max(1);
        check_windows(raw, p, size, slide);
    }
}

#[test]
fn running_sum_large_input_all_parallelisms() {
    let raw: Vec<(u32, i64, i64)> = (0..50_000u64)
        .map(|i| ((i * 7919 % 1013) as u32, (i % 17) as i64 - 8, i as i64))
        .collect();
    for p in [1, 2, 4] {
        check_running_sum(raw.clone(), p, 256);
    }
}

/// Late records (behind the watermark) are dropped from windows and counted, not silently lost.
#[test]
fn late_records_are_dropped_and_counted() {
    let evs = events(&[(1, 1, 100), (1, 1, 0), (1, 1, 150)]);
    let env = env(1, 1);
    let out = env
        .from_iter("events", evs)
        .with_timestamps(|e: &Ev| e.ts, Duration::ZERO)
        .key_by(|e: &Ev| e.key)
        .window(WindowAssigner::tumbling(Duration::from_millis(10)))
        .count()
        .collect();
    let handle = env.start("late").unwrap();
    let metrics = handle.metrics().clone();
    handle.join().unwrap();
    let mut got: Vec<(i64, u64)> = out.take().into_iter().map(|r| (r.start, r.value)).collect();
    got.sort();
    assert_eq!(got, vec![(100, 1), (150, 1)]);
    let late: u64 = metrics
        .nodes
        .iter()
        .map(|n| n.late_records.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    assert_eq!(late, 1);
}

/// A process function with value state and event-time timers: per key, emit the count of
/// records once the watermark passes the key's first timestamp + 10.
#[derive(Clone, Default)]
struct CountThenFire {
    count: Option<ValueState<u64>>,
}

impl KeyedProcessFunction<u32, Ev, (u32, u64)> for CountThenFire {
    fn open(&mut self, ctx: &mut OpenContext<'_, u32>) -> Result<(), weir_runtime::BoxError> {
        self.count = Some(ctx.value_state("count"));
        Ok(())
    }
    fn process(
        &mut self,
        e: Ev,
        ctx: &mut KeyedContext<'_, u32, (u32, u64)>,
    ) -> Result<(), weir_runtime::BoxError> {
        let st = self.count.as_ref().unwrap();
        let n = st.get(ctx).copied().unwrap_or(0);
        if n == 0 {
            ctx.register_event_time_timer(e.ts + 10);
        }
        st.set(ctx, n + 1);
        Ok(())
    }
    fn on_timer(
        &mut self,
        ctx: &mut KeyedContext<'_, u32, (u32, u64)>,
    ) -> Result<(), weir_runtime::BoxError> {
        let st = self.count.as_ref().unwrap();
        let n = st.clear(ctx).unwrap_or(0);
        let k = *ctx.key();
        ctx.emit((k, n));
        Ok(())
    }
}

#[test]
fn keyed_process_function_with_state_and_timers() {
    for p in [1, 2, 4] {
        let raw: Vec<(u32, i64, i64)> = (0..1000).map(|i| ((i % 13) as u32, 1, i as i64)).collect();
        let env = env(p, 16);
        let out = env
            .from_iter("events", events(&raw))
            .set_parallelism(1)
            .with_timestamps(|e: &Ev| e.ts, Duration::ZERO)
            .key_by(|e: &Ev| e.key)
            .process("count-then-fire", CountThenFire::default())
            .collect();
        env.execute("timers").unwrap();
        let mut got = out.take();
        got.sort();
        // Keys restart counting after each fire; total per key must equal its records.
        let mut per_key: BTreeMap<u32, u64> = BTreeMap::new();
        for (k, n) in &got {
            *per_key.entry(*k).or_default() += n;
        }
        let expected: BTreeMap<u32, u64> = (0..13u32)
            .map(|k| (k, (0..1000).filter(|i| i % 13 == k).count() as u64))
            .collect();
        assert_eq!(per_key, expected, "p={p}");
        // Timers fired repeatedly per key (state was cleared and timers re-registered).
        assert!(
            got.len() >= 13 && got.iter().all(|(_, n)| *n > 0),
            "p={p}: {got:?}"
        );
    }
}

#[derive(Clone, Default)]
struct TagSubtask {
    subtask: usize,
}

impl weir_runtime::ProcessFunction<u64, (usize, u64)> for TagSubtask {
    fn open(&mut self, info: &weir_runtime::TaskInfo) -> Result<(), weir_runtime::BoxError> {
        self.subtask = info.subtask;
        Ok(())
    }
    fn process(
        &mut self,
        v: u64,
        ctx: &mut weir_runtime::Context<'_, (usize, u64)>,
    ) -> Result<(), weir_runtime::BoxError> {
        ctx.emit((self.subtask, v));
        Ok(())
    }
}

/// A forward edge between different parallelisms (1 -> 3) spreads records over every
/// downstream instance, and an edge 3 -> 1 merges them; nothing is lost or duplicated.
#[test]
fn forward_edges_between_different_parallelisms_spread_and_merge() {
    let env = env(3, 8);
    let out = env
        .from_iter("numbers", (0..10_000u64).collect())
        .set_parallelism(1)
        .process("tag", TagSubtask::default())
        .set_parallelism(3)
        .map(|x| x)
        .set_parallelism(1)
        .collect();
    env.execute("spread").unwrap();
    let got = out.take();
    let mut per_subtask = [0usize; 3];
    let mut values: Vec<u64> = got
        .iter()
        .map(|&(s, v)| {
            per_subtask[s] += 1;
            v
        })
        .collect();
    values.sort();
    assert_eq!(values, (0..10_000).collect::<Vec<_>>());
    assert!(per_subtask.iter().all(|&n| n > 1000), "{per_subtask:?}");
}

/// Subtask 0 emits 41 records with event times 1000..=5000 ms and then waits (not ended);
/// subtask 1 never emits and says whether it is idle.
struct SometimesIdle {
    subtask: usize,
    next: i64,
    idle: bool,
}

impl weir_runtime::SourceReader<u32> for SometimesIdle {
    fn poll(
        &mut self,
        out: &mut Vec<(i64, u32)>,
        _max: usize,
    ) -> Result<weir_runtime::SourcePoll, weir_runtime::BoxError> {
        if self.subtask == 0 && self.next <= 5000 {
            out.push((self.next, 7));
            self.next += 100;
            return Ok(weir_runtime::SourcePoll::Ready);
        }
        Ok(weir_runtime::SourcePoll::Idle(Some(
            std::time::Instant::now() + Duration::from_millis(50),
        )))
    }
    fn watermark(&mut self) -> Option<i64> {
        (self.subtask == 0 && self.next > 1000).then_some(self.next - 101)
    }
    fn idle(&self) -> bool {
        self.subtask == 1 && self.idle
    }
}

/// A source subtask with nothing to emit holds event time back for the whole job, through
/// an exchange, unless it says it is idle (Flink's watermark status): then windows fire while
/// the job runs. Both runs count every record once by the end.
#[test]
fn an_idle_source_subtask_does_not_hold_back_windows() {
    let windows_while_running = |idle: bool| -> usize {
        let env = env(2, 8);
        let out = env
            .source("sometimes-idle", move |info| {
                Ok::<_, weir_runtime::BoxError>(SometimesIdle {
                    subtask: info.subtask,
                    next: 1000,
                    idle,
                })
            })
            .key_by(|k: &u32| *k)
            .window(WindowAssigner::tumbling(Duration::from_secs(1)))
            .count()
            .collect();
        let handle = env.start("idle").unwrap();
        let mut fired = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(if idle { 30 } else { 2 });
        while std::time::Instant::now() < deadline && fired.len() < 4 {
            fired.extend(out.take());
            std::thread::sleep(Duration::from_millis(20));
        }
        let while_running = fired.len();
        handle.stop();
        handle.join().unwrap();
        fired.extend(out.take());
        assert_eq!(fired.iter().map(|w| w.value).sum::<u64>(), 41);
        while_running
    };
    assert_eq!(windows_while_running(false), 0);
    assert_eq!(windows_while_running(true), 4);
}
