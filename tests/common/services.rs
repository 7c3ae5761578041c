//! Starting the test services through the same scripts a person uses; shared by the
//! integration tests and the benchmarks (`benches/common` includes this file).

use std::process::Command;

/// Runs `scripts/services/<script> start` and returns its `KEY=value` lines.
pub fn start(script: &str) -> Vec<(String, String)> {
    let path = format!("{}/scripts/services/{script}", env!("CARGO_MANIFEST_DIR"));
    let o = Command::new("bash")
        .args([&path, "start"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{script} start: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
