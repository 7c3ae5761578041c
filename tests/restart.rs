//! In-process failures: operator panics injected at several points of one run are cured by
//! the restart strategy (restore from the latest checkpoint, same process), and the committed
//! file output is still exactly once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use weir::connectors::{prepare_output_dir, FileSink, Generator};
use weir::job::RestartStrategy;
use weir::{CheckpointConfig, RuntimeConfig, StreamEnv};

#[derive(Clone, Debug, serde::Serialize)]
struct Rec {
    id: u64,
    key: u64,
    n: u64,
}

#[test]
fn injected_panics_are_cured_by_restarts_with_exactly_once_output() {
    const N: u64 = 30_000;
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    prepare_output_dir(&out, false).unwrap();
    let processed = Arc::new(AtomicU64::new(0));
    let panics = Arc::new(AtomicU64::new(0));
    let strategy = RestartStrategy {
        attempts: 5,
        delay: Duration::from_millis(20),
        ..RestartStrategy::default()
    };
    let mut restarts = 0;
    let summary = weir::supervisor::run_with_restarts(
        &strategy,
        true,
        None,
        |restore| {
            let env = StreamEnv::new(RuntimeConfig {
                workers: 2,
                parallelism: 2,
                pin_workers: false,
                ..RuntimeConfig::default()
            });
            let mut cfg =
                CheckpointConfig::new(format!("file://{}", d.path().join("store").display()));
            cfg.interval = Duration::from_millis(100);
            cfg.local_dir = d.path().join("local");
            env.enable_checkpointing(cfg);
            if let Some(r) = restore {
                env.restore_from(r.clone());
            }
            let gen = Generator::new(|i| Rec {
                id: i,
                key: i % 7,
                n: 1,
            })
            .count(N)
            .rate(20_000.0);
            let (processed, panics) = (processed.clone(), panics.clone());
            let sink = FileSink::new(&out);
            env.source("gen", move |info| gen.reader(info))
                .map(move |r| {
                    let p = processed.fetch_add(1, Ordering::SeqCst);
                    if [3_000, 9_000, 15_000].contains(&p) {
                        panics.fetch_add(1, Ordering::SeqCst);
                        panic!("injected failure after {p} records");
                    }
                    r
                })
                .key_by(|r: &Rec| r.key)
                .sum(|r: &mut Rec| &mut r.n)
                .sink("out", move |info| sink.writer(info));
            env.start("restarts")
        },
        |h| h.join(),
        |_, _, _| restarts += 1,
        || false,
    )
    .expect("the restart strategy cures the injected failures");
    assert_eq!(panics.load(Ordering::SeqCst), 3);
    assert_eq!(restarts, 3);
    assert!(summary.records_in > 0);

    let mut ids = Vec::new();
    let mut per_key: HashMap<u64, Vec<u64>> = HashMap::new();
    for e in std::fs::read_dir(&out).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(!name.starts_with('.'), "uncommitted file left: {name}");
        for line in std::fs::read_to_string(e.path()).unwrap().lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            ids.push(v["id"].as_u64().unwrap());
            per_key
                .entry(v["key"].as_u64().unwrap())
                .or_default()
                .push(v["n"].as_u64().unwrap());
        }
    }
    ids.sort_unstable();
    assert_eq!(ids, (0..N).collect::<Vec<_>>(), "every record exactly once");
    for (k, mut counts) in per_key {
        counts.sort_unstable();
        assert_eq!(
            counts,
            (1..=counts.len() as u64).collect::<Vec<_>>(),
            "key {k}: running counts"
        );
    }
}
