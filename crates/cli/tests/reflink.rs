//! Reflinks through a mount: `cp --reflink=auto` and `cowcrypt reflink` share extents (as
//! `cowcrypt du` and `df` show), unaligned ranges share their middle and copy their edges,
//! writes to either side never change the other, and reflinks cross subvolumes.
//!
//! Needs root and /dev/fuse; skipped with a message otherwise, except under CI=true.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use fsx::harness::{CowcryptMount, binary_can_mount, mount_tests_can_run};

fn cowcrypt(bin: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin).args(args).output().expect("run cowcrypt")
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i / 7) as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

/// `cowcrypt du --json PATH` as (total, exclusive, shared).
fn du(bin: &Path, path: &Path) -> (u64, u64, u64) {
    let out = cowcrypt(bin, &["du", "--json", path.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let u = &v[0]["usage"];
    (
        u["total"].as_u64().unwrap(),
        u["exclusive"].as_u64().unwrap(),
        u["shared"].as_u64().unwrap(),
    )
}

fn data_used(bin: &Path, mount: &Path) -> u64 {
    let out = cowcrypt(bin, &["df", "--json", mount.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["data_used"].as_u64().unwrap()
}

#[test]
fn reflinks_share_until_written_and_du_df_show_it() {
    if !mount_tests_can_run("reflinks_share_until_written_and_du_df_show_it") {
        return;
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_cowcrypt"));
    if !binary_can_mount(bin, "reflinks_share_until_written_and_du_df_show_it") {
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("cowcrypt-reflink.")
        .tempdir_in(std::env::var("COWCRYPT_SCRATCH").unwrap_or_else(|_| "/var/tmp".into()))
        .expect("scratch dir");
    let image = tmp.path().join("reflink.img");
    let dir = tmp.path().join("mnt");
    CowcryptMount::mkfs(bin, &image, "512M").expect("mkfs");
    let mut mount =
        CowcryptMount::mount(bin, &image, &dir, &tmp.path().join("daemon.log")).expect("mount");
    let m = |p: &str| dir.join(p);
    let s = |p: &str| dir.join(p).to_str().unwrap().to_owned();
    let store = cowcrypt(bin, &["subvolume", "create", &s("store")]);
    assert!(store.status.success(), "{store:?}");
    let pkg = data(8 << 20, 1);
    std::fs::write(m("store/pkg"), &pkg).unwrap();
    let used0 = data_used(bin, &dir);

    // cp --reflink=auto shares (it falls back to copy_file_range, which cowcrypt reflinks).
    let cp = Command::new("cp")
        .args(["--reflink=auto", &s("store/pkg"), &s("pkg.copy")])
        .status()
        .unwrap();
    assert!(cp.success());
    assert_eq!(std::fs::read(m("pkg.copy")).unwrap(), pkg);
    assert_eq!(du(bin, &m("pkg.copy")), (8 << 20, 0, 8 << 20));
    assert_eq!(du(bin, &m("store/pkg")), (8 << 20, 0, 8 << 20));
    assert_eq!(data_used(bin, &dir), used0, "no data copied");

    // cowcrypt reflink, whole file and an unaligned range.
    let whole = cowcrypt(bin, &["reflink", &s("store/pkg"), &s("whole")]);
    assert!(whole.status.success(), "{whole:?}");
    let part = cowcrypt(
        bin,
        &[
            "reflink",
            "--range",
            "1000",
            "300000",
            "5096",
            &s("store/pkg"),
            &s("part"),
        ],
    );
    assert!(part.status.success(), "{part:?}");
    let got = std::fs::read(m("part")).unwrap();
    assert_eq!(got.len(), 5096 + 300_000);
    assert!(got[..5096].iter().all(|&b| b == 0));
    assert!(got[5096..] == pkg[1000..301_000]);
    let (total, _, shared) = du(bin, &m("part"));
    assert!(shared > 0 && shared < total, "edges copied, middle shared");

    // Writes to either side never change the other.
    std::fs::File::options()
        .write(true)
        .open(m("whole"))
        .unwrap()
        .write_all_at(b"changed copy", 4096)
        .unwrap();
    std::fs::File::options()
        .write(true)
        .open(m("store/pkg"))
        .unwrap()
        .write_all_at(b"changed origin", 100)
        .unwrap();
    let mut want_origin = pkg.clone();
    want_origin[100..114].copy_from_slice(b"changed origin");
    let mut want_copy = pkg.clone();
    want_copy[4096..4108].copy_from_slice(b"changed copy");
    assert_eq!(std::fs::read(m("store/pkg")).unwrap(), want_origin);
    assert_eq!(std::fs::read(m("whole")).unwrap(), want_copy);
    assert_eq!(std::fs::read(m("pkg.copy")).unwrap(), pkg);

    let bad = cowcrypt(bin, &["reflink", &s("missing"), &s("x")]);
    assert_eq!(bad.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&bad.stderr).trim().lines().count(),
        1
    );
    mount.unmount().expect("unmount");
    CowcryptMount::fsck(bin, &image).expect("fsck");
}
