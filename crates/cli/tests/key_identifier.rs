//! `cowcrypt key identifier`: prints what the kernel's FS_IOC_ADD_ENCRYPTION_KEY returns, and
//! refuses bad input with one line and exit status 1.

use std::io::Write;
use std::process::{Command, Stdio};

fn cowcrypt() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cowcrypt"))
}

#[test]
fn identifier_of_xfstests_key_from_file_and_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    let raw: Vec<u8> = (1..=64).collect();
    std::fs::write(&path, &raw).unwrap();

    let out = cowcrypt()
        .args(["key", "identifier"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "69b2f6edeee720cce0577937eb8a6751\n"
    );

    let mut child = cowcrypt()
        .args(["key", "identifier"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&raw[..32]).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "0ce1cb43a5ed41b2b8b82349b30bb750\n"
    );
}

fn assert_one_line_failure(out: std::process::Output, needle: &str) {
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(needle), "{err}");
}

#[test]
fn bad_input_is_one_line_and_status_1() {
    let dir = tempfile::tempdir().unwrap();
    for (len, needle) in [(15usize, "15"), (65, "65"), (0, "got 0")] {
        let path = dir.path().join(format!("key{len}"));
        std::fs::write(&path, vec![1u8; len]).unwrap();
        let out = cowcrypt()
            .args(["key", "identifier"])
            .arg(&path)
            .output()
            .unwrap();
        assert_one_line_failure(out, needle);
    }
    let out = cowcrypt()
        .args(["key", "identifier", "/nonexistent/key"])
        .output()
        .unwrap();
    assert_one_line_failure(out, "/nonexistent/key");
}
