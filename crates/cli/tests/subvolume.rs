//! The control channel and `cowcrypt subvolume ...` end to end against a real FUSE mount.
//!
//! Needs root and /dev/fuse. Without them each test says why and passes as skipped, except under
//! CI=true where a missing requirement fails the test. Every mount is owned by a guard that
//! unmounts it (lazily if it must) even when an assertion fails.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn cowcrypt() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cowcrypt"))
}

/// Whether this machine can mount; under CI=true it must.
fn can_mount() -> bool {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root");
    }
    if !Path::new("/dev/fuse").exists() {
        missing.push("/dev/fuse");
    }
    if missing.is_empty() {
        return true;
    }
    let why = format!("needs {}", missing.join(", "));
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true: mount tests cannot run: {why}");
    }
    let _ = writeln!(std::io::stderr(), "skipping mount test: {why}");
    false
}

fn is_mounted(dir: &Path) -> bool {
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|mp| Path::new(mp) == dir.as_path())
    })
}

fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A scratch image and mount point.
struct Scratch {
    _tmp: tempfile::TempDir,
    image: PathBuf,
    dir: PathBuf,
}

fn scratch(size: &str) -> Scratch {
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("disk.img");
    let dir = tmp.path().join("mnt");
    fs::create_dir(&dir).unwrap();
    ok(
        cowcrypt()
            .args(["mkfs", "--size", size])
            .arg(&image)
            .output()
            .unwrap(),
        "mkfs",
    );
    Scratch {
        _tmp: tmp,
        image,
        dir,
    }
}

/// Unmounts on drop whatever is still mounted.
struct Mounted {
    dir: PathBuf,
    image: PathBuf,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if is_mounted(&self.dir) {
            let clean = Command::new("umount").arg(&self.dir).status();
            if !clean.map(|s| s.success()).unwrap_or(false) {
                let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
            }
        }
        // The daemon's last commit is done once it lets go of the image.
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if fs::File::open(&self.image).is_ok_and(|f| f.try_lock().is_ok()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn mount(s: &Scratch) -> Mounted {
    let out = cowcrypt().arg("mount").arg(&s.image).arg(&s.dir).output();
    let guard = Mounted {
        dir: s.dir.clone(),
        image: s.image.clone(),
    };
    ok(out.unwrap(), "mount");
    assert!(is_mounted(&s.dir));
    guard
}

#[test]
fn subvolume_list_goes_through_the_control_channel() {
    if !can_mount() {
        return;
    }
    let s = scratch("64M");
    let m = mount(&s);
    fs::create_dir(s.dir.join("d")).unwrap();
    fs::write(s.dir.join("d/f"), b"x").unwrap();

    // From the top directory, from a subdirectory and from a file: any inode of the mount.
    for at in [s.dir.clone(), s.dir.join("d"), s.dir.join("d/f")] {
        let out = ok(
            cowcrypt()
                .args(["subvolume", "list", "--json"])
                .arg(&at)
                .output()
                .unwrap(),
            "subvolume list",
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let list = v["subvolumes"].as_array().unwrap();
        assert_eq!(list.len(), 1, "{v}");
        assert_eq!(list[0]["id"], 0);
        assert_eq!(list[0]["path"], "");
    }
    let out = ok(
        cowcrypt()
            .args(["subvolume", "list"])
            .arg(&s.dir)
            .output()
            .unwrap(),
        "subvolume list",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().nth(1).unwrap().trim_start().starts_with("0 "),
        "{text}"
    );

    // Other ioctls still get ENOTTY: a terminal probe on a file of the mount.
    let f = fs::File::open(s.dir.join("d/f")).unwrap();
    let mut ws = [0u8; 64];
    // SAFETY: TCGETS writes a struct termios (60 bytes) into the 64-byte buffer.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            libc::TCGETS,
            ws.as_mut_ptr(),
        )
    };
    assert_eq!(rc, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ENOTTY)
    );
    drop(f);
    drop(m);
}

#[test]
fn a_path_off_any_mount_is_a_one_line_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = cowcrypt()
        .args(["subvolume", "list"])
        .arg(tmp.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("not on a cowcrypt mount"), "{err}");
}
