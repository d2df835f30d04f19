//! The tester against kernels' own filesystems, which must pass: tmpfs (no ZERO_RANGE there, so
//! not strict) and ext4 on a loop device, strict, with real unmount/mount cycles as the remount
//! hook. If these fail, the tester's model is wrong, not the filesystem.
//!
//! Needs root (mounting); skipped with a message otherwise, except under CI=true.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use fsx::harness::{is_mount_point, mount_tests_can_run};
use fsx::{Config, DirTarget, Fsx};

fn sh(cmd: &mut Command) -> io::Result<String> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Unmounts `dir` and detaches `loop_dev` on drop.
struct Guard {
    dir: PathBuf,
    loop_dev: Option<String>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if is_mount_point(&self.dir).unwrap_or(false) {
            let _ = Command::new("umount").arg(&self.dir).status();
        }
        if let Some(dev) = &self.loop_dev {
            let _ = Command::new("losetup").arg("-d").arg(dev).status();
        }
    }
}

fn cfg(seed: u64, remount_every: u64, strict: bool) -> Config {
    Config {
        seed,
        ops: 6_000,
        files: 3,
        max_file_size: 2 << 20,
        max_op_len: 512 << 10,
        remount_every,
        strict,
        ..Config::default()
    }
}

#[test]
fn tmpfs_passes() {
    if !mount_tests_can_run("fsx tmpfs baseline") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mnt");
    std::fs::create_dir(&dir).unwrap();
    sh(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"])
        .arg(&dir))
    .unwrap();
    let _g = Guard {
        dir: dir.clone(),
        loop_dev: None,
    };
    let mut t = DirTarget::new(&dir, 3);
    let report = Fsx::new(cfg(11, 0, false)).run(&mut t, None).unwrap();
    eprintln!("{report}");
    // tmpfs has no FALLOC_FL_ZERO_RANGE; everything else must have run.
    for op in ["PUNCH_HOLE", "copy_file_range", "SEEK_DATA", "SEEK_HOLE"] {
        assert!(!report.unsupported.contains(op), "{report}");
        assert!(report.counts.get(op).copied().unwrap_or(0) > 0, "{report}");
    }
}

#[test]
fn ext4_passes_strict_with_real_remounts() {
    if !mount_tests_can_run("fsx ext4 baseline") {
        return;
    }
    let scratch = std::env::var("COWCRYPT_SCRATCH").unwrap_or_else(|_| "/var/tmp".into());
    let tmp = tempfile::Builder::new()
        .prefix("fsx-ext4.")
        .tempdir_in(scratch)
        .unwrap();
    let image = tmp.path().join("ext4.img");
    let dir = tmp.path().join("mnt");
    std::fs::create_dir(&dir).unwrap();
    std::fs::File::create(&image)
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    sh(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image)).unwrap();
    let dev = sh(Command::new("losetup")
        .args(["--find", "--show"])
        .arg(&image))
    .unwrap();
    let _g = Guard {
        dir: dir.clone(),
        loop_dev: Some(dev.clone()),
    };
    let mount = |dir: &Path| sh(Command::new("mount").arg(&dev).arg(dir)).map(|_| ());
    mount(&dir).unwrap();
    let mut t = DirTarget::new(&dir, 3);
    let mut hook = || {
        sh(Command::new("umount").arg(&dir))?;
        mount(&dir)
    };
    let report = Fsx::new(cfg(12, 1_500, true))
        .run(&mut t, Some(&mut hook))
        .unwrap();
    eprintln!("{report}");
    assert_eq!(report.remounts, 4);
    assert!(report.unsupported.is_empty(), "{report}");
}
