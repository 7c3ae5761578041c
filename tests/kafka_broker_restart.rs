//! A Kafka broker restarted in the middle of an exactly-once job: the job recovers on its own
//! (librdkafka reconnects; what cannot be retried fails the job, which restarts from its latest
//! checkpoint under its restart strategy) and the output stays exactly once. A test binary of
//! its own, so that restarting the shared broker disturbs no other test.

use std::time::{Duration, Instant};

mod common;

use common::kafka::*;
use common::*;

#[test]
fn broker_restart_during_an_exactly_once_job() {
    let d = tempfile::tempdir().unwrap();
    let b = broker();
    let input = unique("restart-in");
    let output = unique("restart-out");
    create_topic(&b, &input, 4);
    create_topic(&b, &output, 4);
    let (recs, all) = sum_input(600_000);
    produce(&b, &input, &recs, |_| None, |_| None);
    let job = d.path().join("job.toml");
    let text = sum_job_toml(
        "broker-restart",
        "",
        &input,
        &output,
        "exactly-once",
        "200ms",
        "tolerable_failures = 100\n[restart]\nattempts = 20\ndelay = \"2s\"",
    );
    std::fs::write(&job, text).unwrap();
    let mut child = Spawned::new(
        weir()
            .arg("run")
            .arg(&job)
            .arg("--quiet")
            .stderr(std::process::Stdio::piped()),
    );
    // Read as the job runs: a pipe nobody reads holds 64 KiB, and a job that logs more (its
    // warnings while the broker is down) would block writing to it and never finish.
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let log = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stderr, &mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    });
    // Restart the broker as soon as the job is under way (its first checkpoint completed).
    let first = d.path().join("checkpoints/broker-restart/chk-1/_metadata");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !first.exists() && child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the job took no checkpoint within a minute"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    if child.try_wait().unwrap().is_some() {
        let o = child.wait_with_output().unwrap();
        panic!(
            "the job ended ({}) before the broker restart: {}",
            o.status,
            log.join().unwrap()
        );
    }
    let t = Instant::now();
    let o = std::process::Command::new("bash")
        .arg(format!(
            "{}/scripts/services/kafka.sh",
            env!("CARGO_MANIFEST_DIR")
        ))
        .arg("restart")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "kafka.sh restart: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!("broker restarted in {:?}", t.elapsed());
    let deadline = Instant::now() + Duration::from_secs(300);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the job did not finish after the broker restart: {}",
                log.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let o = child.wait_with_output().unwrap();
    let log = log.join().unwrap();
    assert!(o.status.success(), "{log}");
    check_exactly_once(&read_all(&b, &output, "read_committed"), &all);
    eprintln!("{log}");
}
