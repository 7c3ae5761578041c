//! Weir as a library: word counts and per-key event-time windows, in one process.
//!
//! Run: `cargo run --release --example embedded`

use std::time::Duration;

use weir::connectors::Generator;
use weir::{RuntimeConfig, StreamEnv, WindowAssigner};

#[derive(Debug, Clone)]
struct Click {
    user: u32,
    ms_on_page: u64,
    ts: i64,
}

fn main() -> Result<(), weir::JobError> {
    let env = StreamEnv::new(RuntimeConfig {
        parallelism: 2,
        ..RuntimeConfig::default()
    });

    // A deterministic, bounded stream of 100k clicks, one every 10 ms of event time.
    let clicks = Generator::new(|i| Click {
        user: (i * 7 % 5) as u32,
        ms_on_page: i % 1000,
        ts: i as i64 * 10,
    })
    .count(100_000);
    let per_minute = env
        .source("clicks", move |info| clicks.reader(info))
        .filter(|c| c.ms_on_page >= 100)
        .with_timestamps(|c| c.ts, Duration::from_secs(1))
        .key_by(|c| c.user)
        .window(WindowAssigner::tumbling(Duration::from_secs(60)))
        .avg(|c| c.ms_on_page as f64)
        .collect();

    let summary = env.execute("clicks-per-minute")?;
    let mut rows = per_minute.take();
    rows.sort_by_key(|r| (r.start, r.key));
    for r in rows.iter().take(5) {
        println!(
            "user {} minute starting {:>6} ms: avg {:.1} ms on page",
            r.key, r.start, r.value
        );
    }
    println!(
        "{} windows from {} clicks in {:?}",
        rows.len(),
        summary.records_in,
        summary.duration
    );
    Ok(())
}
