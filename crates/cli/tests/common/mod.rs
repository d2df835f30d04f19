//! Helpers shared by the CLI tests that run `cowcrypt` commands with input and check output.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Runs `bin` with `args`, feeding `stdin` if given.
pub fn run(bin: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    use std::io::Write;
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

/// The trimmed standard output of a command that must have succeeded.
pub fn ok(o: Output) -> String {
    assert!(o.status.success(), "{o:?}");
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// Adds `key` to the mount on `mnt` and makes `mnt/name` a new directory encrypted with it
/// (`encrypt_args` added to `cowcrypt encrypt`); returns the key's identifier.
pub fn encrypted_dir(
    bin: &Path,
    mnt: &Path,
    name: &str,
    key: &[u8],
    encrypt_args: &[&str],
) -> String {
    let path = |p: &str| mnt.join(p).to_str().unwrap().to_owned();
    let id = ok(run(bin, &["key", "add", &path("")], Some(key)));
    std::fs::create_dir(mnt.join(name)).unwrap();
    let dir = path(name);
    let mut args = vec!["encrypt", &dir, "--key", &id];
    args.extend_from_slice(encrypt_args);
    ok(run(bin, &args, None));
    id
}
