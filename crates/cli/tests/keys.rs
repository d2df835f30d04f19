//! `cowcrypt key add|remove|status` through a mount, with the kernel's semantics: claims per
//! uid, OTHER_USERS when another user still holds the key, only root removes for all users,
//! ABSENT once removed, re-adding restores; bad input is one line with status 1.
//!
//! Needs root, /dev/fuse and setpriv; skipped with a message otherwise, except under CI=true.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use fsx::harness::{CowcryptMount, binary_can_mount, mount_tests_can_run};

fn run(bin: &Path, uid: Option<u32>, args: &[&str], stdin: Option<&[u8]>) -> Output {
    use std::io::Write;
    let mut cmd = match uid {
        None => Command::new(bin),
        Some(u) => {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={u}"),
                &format!("--regid={u}"),
                "--clear-groups",
            ])
            .arg(bin);
            c
        }
    };
    cmd.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

#[test]
fn key_claims_follow_the_kernels_rules() {
    if !mount_tests_can_run("key_claims_follow_the_kernels_rules") {
        return;
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_cowcrypt"));
    if !binary_can_mount(bin, "key_claims_follow_the_kernels_rules") {
        return;
    }
    let setpriv = Command::new("setpriv").arg("--version").output();
    if !setpriv.is_ok_and(|o| o.status.success()) {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI=true: needs setpriv"
        );
        eprintln!("skipping: needs setpriv");
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("cowcrypt-keys.")
        .tempdir_in(std::env::var("COWCRYPT_SCRATCH").unwrap_or_else(|_| "/var/tmp".into()))
        .expect("scratch dir");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let image = tmp.path().join("keys.img");
    let dir = tmp.path().join("mnt");
    CowcryptMount::mkfs(bin, &image, "128M").expect("mkfs");
    std::fs::create_dir(&dir).unwrap();
    let m = run(
        bin,
        None,
        &[
            "mount",
            "-o",
            "allow_other",
            image.to_str().unwrap(),
            dir.to_str().unwrap(),
        ],
        None,
    );
    assert!(m.status.success(), "{m:?}");
    let mnt = dir.to_str().unwrap();
    let key: Vec<u8> = (1..=64).collect();

    // Root adds: the identifier is the kernel's (the xfstests key gives this one).
    let add = run(bin, None, &["key", "add", mnt], Some(&key));
    assert!(add.status.success(), "{add:?}");
    let id = text(&add);
    assert_eq!(id, "69b2f6edeee720cce0577937eb8a6751");
    let st = run(bin, None, &["key", "status", mnt, &id], None);
    assert!(
        text(&st).contains("PRESENT (users: 1, including you)"),
        "{st:?}"
    );

    // A second user adds the same key: two claims.
    let add2 = run(bin, Some(1000), &["key", "add", mnt], Some(&key));
    assert!(add2.status.success(), "{add2:?}");
    let st = run(bin, Some(1000), &["key", "status", mnt, &id], None);
    assert!(
        text(&st).contains("PRESENT (users: 2, including you)"),
        "{st:?}"
    );
    // Only root removes for all users.
    let all = run(
        bin,
        Some(1000),
        &["key", "remove", mnt, &id, "--all-users"],
        None,
    );
    assert_eq!(all.status.code(), Some(1), "{all:?}");
    // Root's own removal leaves the other user's claim: OTHER_USERS.
    let rm = run(bin, None, &["key", "remove", mnt, &id], None);
    assert!(text(&rm).contains("OTHER_USERS"), "{rm:?}");
    let st = run(bin, None, &["key", "status", mnt, &id], None);
    assert_eq!(text(&st), format!("{id}: PRESENT (users: 1)"));
    // The user removes theirs: gone.
    let rm = run(bin, Some(1000), &["key", "remove", mnt, &id], None);
    assert!(text(&rm).ends_with("removed"), "{rm:?}");
    let st = run(bin, None, &["key", "status", mnt, &id], None);
    assert!(text(&st).contains("ABSENT"), "{st:?}");
    let again = run(bin, None, &["key", "remove", mnt, &id], None);
    assert_eq!(again.status.code(), Some(1), "ENOKEY: {again:?}");
    // Re-adding restores it; root removes for all users.
    assert!(
        run(bin, None, &["key", "add", mnt], Some(&key))
            .status
            .success()
    );
    assert!(
        run(bin, Some(1000), &["key", "add", mnt], Some(&key))
            .status
            .success()
    );
    let all = run(bin, None, &["key", "remove", mnt, &id, "--all-users"], None);
    assert!(text(&all).ends_with("removed"), "{all:?}");
    assert!(text(&run(bin, None, &["key", "status", mnt, &id], None)).contains("ABSENT"));

    // Bad input: one line, status 1.
    for (args, input) in [
        (vec!["key", "add", mnt], Some(&[7u8; 8][..])),
        (vec!["key", "status", mnt, "not-hex"], None),
        (vec!["key", "remove", mnt, "abcd"], None),
    ] {
        let o = run(bin, None, &args, input);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {o:?}");
        assert_eq!(
            String::from_utf8_lossy(&o.stderr).trim().lines().count(),
            1,
            "{o:?}"
        );
    }
    let u = Command::new("umount").arg(&dir).status().unwrap();
    assert!(u.success());
}
