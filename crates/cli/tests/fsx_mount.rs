//! fsx against a real cowcrypt mount: mkfs, mount with the built `cowcrypt` binary, at least
//! 20,000 random operations (every read and size compared with the model), unmount and mount
//! again every few thousand operations with a full compare after each, then `cowcrypt fsck`
//! must find the image clean.
//!
//! Needs root and /dev/fuse; skipped with a message otherwise, except under CI=true where that
//! is a failure. FSX_SEED and FSX_OPS override the seed and the operation count.

use std::path::Path;

use fsx::harness::{CowcryptMount, binary_can_mount, mount_tests_can_run};
use fsx::{Config, DirTarget, Fsx};

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

#[test]
fn fsx_on_a_cowcrypt_mount_with_remounts_then_fsck_clean() {
    if !mount_tests_can_run("fsx_on_a_cowcrypt_mount") {
        return;
    }
    if !binary_can_mount(
        Path::new(env!("CARGO_BIN_EXE_cowcrypt")),
        "fsx_on_a_cowcrypt_mount",
    ) {
        return;
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_cowcrypt"));
    let tmp = tempfile::Builder::new()
        .prefix("cowcrypt-fsx.")
        .tempdir_in(std::env::var("COWCRYPT_SCRATCH").unwrap_or_else(|_| "/var/tmp".into()))
        .expect("scratch dir");
    let image = tmp.path().join("fsx.img");
    let dir = tmp.path().join("mnt");
    let log = tmp.path().join("daemon.log");

    CowcryptMount::mkfs(bin, &image, "2G").expect("mkfs");
    let mut mount = CowcryptMount::mount(bin, &image, &dir, &log).expect("mount");

    let cfg = Config {
        seed: env_u64("FSX_SEED", 0x00c0_ffee),
        ops: env_u64("FSX_OPS", 20_000),
        files: 4,
        max_file_size: 4 << 20,
        max_op_len: 512 << 10,
        remount_every: 4_000,
        history: 40,
        // cowcrypt implements every fallocate mode and copy_file_range: EOPNOTSUPP is a bug.
        strict: true,
        progress_every: 5_000,
        ..Config::default()
    };
    eprintln!(
        "fsx on cowcrypt: seed {:#x}, {} ops, remount every {}",
        cfg.seed, cfg.ops, cfg.remount_every
    );
    let expected_remounts = cfg.ops / cfg.remount_every;
    let mut target = DirTarget::new(&dir, cfg.files);
    let mut hook = || mount.remount();
    let result = Fsx::new(cfg).run(&mut target, Some(&mut hook));
    let daemon_log = mount.log_text();
    mount.unmount().expect("unmount");
    match result {
        Ok(report) => {
            eprintln!("{report}");
            assert_eq!(report.remounts, expected_remounts, "{report}");
        }
        Err(failure) => panic!("{failure}\n--- daemon log ---\n{daemon_log}"),
    }
    let out = CowcryptMount::fsck(bin, &image)
        .unwrap_or_else(|e| panic!("fsck after fsx found faults: {e}"));
    eprintln!("fsck: {}", String::from_utf8_lossy(&out.stdout).trim());
}
