//! pjdfstest (the Rust rewrite) against a fresh cowcrypt mount, through scripts/pjdfstest.sh.
//!
//! Fails on any failure not listed in tests/pjdfstest-known-failures.txt, on a listed failure
//! that now passes (so the list stays honest), on an unreasoned entry in that list, when too few
//! cases ran, and when the script fails (including `cowcrypt fsck` finding faults afterwards).
//! Needs root, /dev/fuse and pjdfstest (`cargo install pjdfstest --version 0.2.2 --locked`);
//! skipped with a message otherwise, except under CI=true where that is a failure.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use fsx::harness::{binary_can_mount, mount_tests_can_run};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `name  # reason` lines; every entry must carry a reason.
fn known_failures(path: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut known = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, reason) = line.split_once('#').unwrap_or((line, ""));
        let (name, reason) = (name.trim(), reason.trim());
        assert!(
            !name.contains(char::is_whitespace),
            "{}:{}: one test name per line: {line:?}",
            path.display(),
            i + 1
        );
        assert!(
            !reason.is_empty(),
            "{}:{}: known failure {name} has no reason",
            path.display(),
            i + 1
        );
        assert!(
            known.insert(name.to_string(), reason.to_string()).is_none(),
            "{name} listed twice"
        );
    }
    known
}

#[test]
fn known_failures_file_is_well_formed() {
    known_failures(&repo_root().join("tests/pjdfstest-known-failures.txt"));
}

fn pjdfstest_available() -> bool {
    let home = std::env::var("HOME").unwrap_or_default();
    Command::new("pjdfstest").arg("--version").output().is_ok()
        || Path::new(&home).join(".cargo/bin/pjdfstest").exists()
}

#[test]
fn pjdfstest_on_cowcrypt_matches_the_known_failures() {
    run_pjdfstest("pjdfstest_on_cowcrypt", None);
}

/// The same cases with a 16 KiB write buffer: nearly every write that buffers more than two
/// blocks sends a write-behind flight, and the next operations meet it on its way.
#[test]
fn pjdfstest_with_writes_behind_flights_matches_the_known_failures() {
    run_pjdfstest("pjdfstest_with_dirty_16", Some("dirty=16"));
}

/// One run at a time: the script creates the user `tests` when missing, and two runs at once
/// would race to create it (and share two cores).
static ONE_RUN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs scripts/pjdfstest.sh on a fresh mount (with `mount_opts` added) and checks its
/// results against the known failures.
fn run_pjdfstest(name: &str, mount_opts: Option<&str>) {
    let _one = ONE_RUN.lock().unwrap_or_else(|p| p.into_inner());
    if !mount_tests_can_run(name) {
        return;
    }
    if !binary_can_mount(Path::new(env!("CARGO_BIN_EXE_cowcrypt")), name) {
        return;
    }
    if !pjdfstest_available() {
        let msg = "pjdfstest not installed (cargo install pjdfstest --version 0.2.2 --locked)";
        assert!(std::env::var("CI").map_or(true, |v| v != "true"), "{msg}");
        eprintln!("SKIPPED {name}: {msg}");
        return;
    }
    let root = repo_root();
    let known_path = root.join("tests/pjdfstest-known-failures.txt");
    let known = known_failures(&known_path);
    let results = tempfile::tempdir().expect("results dir");
    let mut script = Command::new("bash");
    script
        .arg(root.join("scripts/pjdfstest.sh"))
        .args(["--fs", "cowcrypt", "--results"])
        .arg(results.path())
        .arg("--known")
        .arg(&known_path)
        .env("COWCRYPT", env!("CARGO_BIN_EXE_cowcrypt"));
    if let Some(opts) = mount_opts {
        script.args(["--mount-opts", opts]);
    }
    let out = script.output().expect("run scripts/pjdfstest.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");

    let table = std::fs::read_to_string(results.path().join("cowcrypt.results"))
        .unwrap_or_else(|e| panic!("no results file ({e}); script output:\n{stdout}{stderr}"));
    let mut by_status: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for line in table.lines() {
        if let Some((status, name)) = line.split_once(' ') {
            by_status.entry(status).or_default().insert(name);
        }
    }
    let failed = by_status.get("FAILED").cloned().unwrap_or_default();
    let passed = by_status.get("ok").cloned().unwrap_or_default();
    let skipped = by_status.get("skipped").cloned().unwrap_or_default();
    eprintln!(
        "{name}: {} ok, {} FAILED ({} known), {} skipped",
        passed.len(),
        failed.len(),
        known.len(),
        skipped.len()
    );
    let unexpected: Vec<&str> = failed
        .iter()
        .copied()
        .filter(|n| !known.contains_key(*n))
        .collect();
    let now_passing: Vec<&str> = known
        .keys()
        .map(String::as_str)
        .filter(|n| passed.contains(n))
        .collect();
    assert!(
        unexpected.is_empty(),
        "pjdfstest failures not in the known list: {unexpected:#?}\n\
         (details in the log above; fix cowcrypt or list them with a reason)"
    );
    assert!(
        now_passing.is_empty(),
        "known failures that now pass; remove them from {}: {now_passing:#?}",
        known_path.display()
    );
    assert!(
        passed.len() + failed.len() >= 350,
        "only {} pjdfstest cases ran",
        passed.len() + failed.len()
    );
    assert!(
        out.status.success(),
        "scripts/pjdfstest.sh failed ({}): see its output above",
        out.status
    );
}
