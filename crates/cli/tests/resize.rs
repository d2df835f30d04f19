//! `cowcrypt resize` on an image: fill a mount, delete most of it, shrink (chunks move), check,
//! read everything back through a new mount, grow, write more into the new space, check again.
//! Refusals (too small, mounted image) are one line with status 1 and change nothing.
//!
//! Needs root and /dev/fuse; skipped with a message otherwise, except under CI=true.

use std::path::Path;
use std::process::Command;

use fsx::harness::{CowcryptMount, Scratch};

fn cowcrypt(bin: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin).args(args).output().expect("run cowcrypt")
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn shrink_and_grow_an_image_keep_every_byte() {
    let bin = Path::new(env!("CARGO_BIN_EXE_cowcrypt"));
    let Some(scratch) = Scratch::new(bin, "shrink_and_grow_an_image_keep_every_byte", "512M")
    else {
        return;
    };
    let (image, dir) = (&scratch.image, &scratch.dir);
    let img = image.to_str().unwrap();
    let mut mount = scratch.mount(bin);
    // Fill most of it, keep the last files (far on the device) and one early one.
    let mut kept = Vec::new();
    for i in 0..12u8 {
        let path = dir.join(format!("f{i}"));
        std::fs::write(&path, data(24 << 20, i)).expect("write");
        if i == 0 || i >= 10 {
            kept.push((path, i));
        }
    }
    for i in 1..10u8 {
        std::fs::remove_file(dir.join(format!("f{i}"))).expect("unlink");
    }
    // Refused while mounted: the image is locked.
    let busy = cowcrypt(bin, &["resize", img, "256M"]);
    assert_eq!(busy.status.code(), Some(1));
    mount.unmount().expect("unmount");

    let shrink = cowcrypt(bin, &["resize", img, "200M"]);
    assert!(shrink.status.success(), "{shrink:?}");
    let said = String::from_utf8_lossy(&shrink.stdout);
    assert!(said.contains("-> 200 MiB"), "{said}");
    assert_eq!(std::fs::metadata(image).unwrap().len(), 200 << 20);
    CowcryptMount::fsck(bin, image).expect("fsck after shrink");

    let tiny = cowcrypt(bin, &["resize", img, "40M"]);
    assert_eq!(tiny.status.code(), Some(1), "{tiny:?}");
    let err = String::from_utf8_lossy(&tiny.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(std::fs::metadata(image).unwrap().len(), 200 << 20);

    let grow = cowcrypt(bin, &["resize", img, "1G"]);
    assert!(grow.status.success(), "{grow:?}");
    let mut mount = scratch.mount(bin);
    for (path, i) in &kept {
        assert!(
            std::fs::read(path).expect("read") == data(24 << 20, *i),
            "{path:?}"
        );
    }
    // The new space takes new data.
    for i in 0..20u8 {
        std::fs::write(dir.join(format!("g{i}")), data(32 << 20, 100 + i))
            .expect("write after grow");
    }
    mount.unmount().expect("unmount");
    CowcryptMount::fsck(bin, image).expect("fsck after grow");
}

#[test]
fn balance_on_a_mount_then_offline_keeps_every_byte() {
    let bin = Path::new(env!("CARGO_BIN_EXE_cowcrypt"));
    let Some(scratch) = Scratch::new(
        bin,
        "balance_on_a_mount_then_offline_keeps_every_byte",
        "512M",
    ) else {
        return;
    };
    let (image, dir) = (&scratch.image, &scratch.dir);
    let mut mount = scratch.mount(bin);
    for i in 0..12u8 {
        std::fs::write(dir.join(format!("f{i}")), data(20 << 20, i)).expect("write");
    }
    for i in (0..12u8).step_by(2) {
        std::fs::remove_file(dir.join(format!("f{i}"))).expect("unlink");
    }
    let out = cowcrypt(bin, &["balance", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!said.contains(" 0 emptied"), "{said}");
    let bad = cowcrypt(bin, &["balance", "--usage", "101", dir.to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(1));
    for i in (1..12u8).step_by(2) {
        let got = std::fs::read(dir.join(format!("f{i}"))).expect("read");
        assert!(got == data(20 << 20, i), "f{i} after balance");
    }
    mount.unmount().expect("unmount");
    let offline = cowcrypt(bin, &["balance", image.to_str().unwrap()]);
    assert!(offline.status.success(), "{offline:?}");
    CowcryptMount::fsck(bin, image).expect("fsck after balance");
}
