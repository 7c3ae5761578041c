//! Crash loop: the `weir` binary runs a bounded file job (key_by + running sum, exactly-once
//! file sink, 150 ms checkpoints) and is killed with SIGKILL at random moments, then rerun with
//! `--restore latest`, at least 50 times (WEIR_CRASH_KILLS and WEIR_CRASH_RECORDS override;
//! scripts/soak-crash.sh runs longer). The visible output must then be exactly one consistent execution: every input
//! record once, and each key's running sums a prefix-sum sequence of exactly its records.

use std::process::Stdio;
use std::time::{Duration, Instant};

mod common;

use common::*;

#[test]
fn sigkill_crash_loop_keeps_output_exactly_once() {
    let kills: usize = std::env::var("WEIR_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let d = tempfile::tempdir().unwrap();
    let records: u64 = std::env::var("WEIR_CRASH_RECORDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120_000);
    let input = write_input(&d.path().join("in"), records, 12);
    let job = sum_job(d.path(), "crash", "checkpoints");
    // A full run's length bounds where kills land.
    let t = Instant::now();
    run_to_completion(&job);
    let full = t.elapsed();
    check_exactly_once(&read_visible(&d.path().join("out")), &input);
    // Start over for the crash loop.
    std::fs::remove_dir_all(d.path().join("out")).unwrap();
    std::fs::remove_dir_all(d.path().join("checkpoints")).unwrap();
    std::fs::remove_dir_all(d.path().join("local")).unwrap();

    let mut rng = Rng(42);
    let mut finished_early = 0;
    for i in 0..kills {
        let mut child = weir()
            .args([
                "run",
                job.to_str().unwrap(),
                "--quiet",
                "--restore",
                "latest",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Kill anywhere from start-up to the end of a run (later kills hit the final phase).
        let wait = Duration::from_millis(rng.next() % (full.as_millis() as u64 + 200).max(50));
        std::thread::sleep(wait);
        let _ = child.kill(); // SIGKILL
        let o = child.wait_with_output().unwrap();
        if o.status.success() {
            finished_early += 1;
            // It completed before the kill: start the next round from scratch so that kills keep
            // landing mid-run (a completed output must already be exact).
            check_exactly_once(&read_visible(&d.path().join("out")), &input);
            for sub in ["out", "checkpoints", "local"] {
                let _ = std::fs::remove_dir_all(d.path().join(sub));
            }
        } else {
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                o.status.code().is_none() || err.is_empty(),
                "round {i}: the job failed on its own instead of being killed: {err}"
            );
        }
    }
    // Final run to completion.
    run_to_completion(&job);
    check_exactly_once(&read_visible(&d.path().join("out")), &input);
    // Rerunning a finished job from its latest checkpoint changes nothing.
    let before = read_visible(&d.path().join("out")).len();
    run_to_completion(&job);
    assert_eq!(read_visible(&d.path().join("out")).len(), before);
    // After all those crashes, the store and the local directory hold exactly the files the
    // retained checkpoints list: nothing orphaned, nothing missing.
    assert_listing(
        "files in the store",
        &files_in(&d.path().join("checkpoints/crash")),
        &listed_files(&d.path().join("checkpoints/crash")),
        &d.path().join("local/crash"),
    );
    eprintln!(
        "{kills} kills ({finished_early} runs finished before their kill); full run {full:?}"
    );
}
