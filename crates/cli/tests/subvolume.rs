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

fn run_ok(args: &[&str], paths: &[&Path]) -> Output {
    let mut cmd = cowcrypt();
    cmd.args(args);
    for p in paths {
        cmd.arg(p);
    }
    ok(cmd.output().unwrap(), &args.join(" "))
}

fn errno_of(r: std::io::Result<impl Sized>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

fn list_json(mount: &Path) -> serde_json::Value {
    let out = run_ok(&["subvolume", "list", "--json"], &[mount]);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn fsck_clean(image: &Path) {
    let out = ok(cowcrypt().arg("fsck").arg(image).output().unwrap(), "fsck");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("clean"), "{text}");
}

fn unmount(m: Mounted) {
    ok(
        Command::new("umount").arg(&m.dir).output().unwrap(),
        "umount",
    );
    drop(m); // waits for the daemon to let go of the image
}

#[test]
fn subvolume_commands_snapshots_and_read_only() {
    if !can_mount() {
        return;
    }
    let s = scratch("256M");
    let m = mount(&s);
    let d = &s.dir;
    let (a, ro, rw) = (d.join("a"), d.join("ro"), d.join("rw"));
    run_ok(&["subvolume", "create"], &[&a]);
    fs::write(a.join("f"), b"origin").unwrap();
    fs::create_dir(a.join("dir")).unwrap();
    fs::write(a.join("dir/g"), b"deep").unwrap();
    run_ok(&["subvolume", "create"], &[&a.join("nested")]);
    fs::write(a.join("nested/n"), b"nested").unwrap();

    run_ok(&["subvolume", "snapshot", "-r"], &[&a, &ro]);
    run_ok(&["subvolume", "snapshot"], &[&a, &rw]);
    // An existing directory as DEST: the snapshot goes in under the source's name.
    fs::create_dir(d.join("into")).unwrap();
    run_ok(&["subvolume", "snapshot"], &[&a, &d.join("into")]);
    assert_eq!(fs::read(d.join("into/a/f")).unwrap(), b"origin");

    // Snapshots hold the origin's files; a nested subvolume shows as an empty directory.
    for snap in [&ro, &rw] {
        assert_eq!(fs::read(snap.join("f")).unwrap(), b"origin");
        assert_eq!(fs::read(snap.join("dir/g")).unwrap(), b"deep");
        assert!(snap.join("nested").is_dir());
        assert_eq!(fs::read_dir(snap.join("nested")).unwrap().count(), 0);
    }
    // Each subvolume is its own device-less inode space: distinct inode numbers for the roots.
    let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
    assert_ne!(ino(&a), ino(&ro));
    assert_ne!(ino(&a.join("f")), ino(&ro.join("f")));

    // Writes to origin and writable snapshot are independent.
    fs::write(a.join("f"), b"origin changed").unwrap();
    fs::write(rw.join("f"), b"snapshot changed").unwrap();
    fs::write(rw.join("new"), b"only here").unwrap();
    assert_eq!(fs::read(a.join("f")).unwrap(), b"origin changed");
    assert_eq!(fs::read(rw.join("f")).unwrap(), b"snapshot changed");
    assert_eq!(fs::read(ro.join("f")).unwrap(), b"origin");
    assert!(!a.join("new").exists());

    // The read-only snapshot refuses every change with EROFS.
    let erofs = libc::EROFS;
    assert_eq!(errno_of(fs::write(ro.join("x"), b"")), erofs);
    assert_eq!(
        errno_of(fs::OpenOptions::new().write(true).open(ro.join("f"))),
        erofs
    );
    assert_eq!(errno_of(fs::create_dir(ro.join("d"))), erofs);
    assert_eq!(errno_of(fs::remove_file(ro.join("f"))), erofs);
    assert_eq!(errno_of(fs::rename(ro.join("f"), ro.join("f2"))), erofs);
    assert_eq!(
        errno_of(std::os::unix::fs::symlink("t", ro.join("l"))),
        erofs
    );
    assert_eq!(fs::read(ro.join("f")).unwrap(), b"origin");
    // The flag can be cleared and set again.
    run_ok(&["subvolume", "set-read-only", "--off"], &[&ro]);
    fs::write(ro.join("x"), b"now writable").unwrap();
    run_ok(&["subvolume", "set-read-only"], &[&ro]);
    assert_eq!(errno_of(fs::remove_file(ro.join("x"))), erofs);
    assert_eq!(
        errno_of(fs::OpenOptions::new().append(true).open(ro.join("x"))),
        erofs
    );
    // Only on a subvolume's top directory.
    let out = cowcrypt()
        .args(["subvolume", "set-read-only"])
        .arg(a.join("dir"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));

    // Renames and links across subvolumes are EXDEV.
    assert_eq!(errno_of(fs::rename(a.join("f"), d.join("f"))), libc::EXDEV);
    assert_eq!(
        errno_of(fs::hard_link(a.join("f"), rw.join("hl"))),
        libc::EXDEV
    );

    // list and show.
    let v = list_json(d);
    let subs = v["subvolumes"].as_array().unwrap();
    let by_path = |p: &str| {
        subs.iter()
            .find(|s| s["path"] == p)
            .unwrap_or_else(|| panic!("{p} not in {v}"))
    };
    assert_eq!(subs.len(), 6, "{v}");
    let a_id = by_path("a")["id"].as_u64().unwrap();
    assert_eq!(by_path("ro")["read_only"], true);
    assert_eq!(by_path("ro")["snapshot_of"], a_id);
    assert_eq!(by_path("rw")["read_only"], false);
    assert_eq!(by_path("into/a")["snapshot_of"], a_id);
    assert_eq!(by_path("a/nested")["snapshot_of"], serde_json::Value::Null);
    let out = run_ok(&["subvolume", "show", "--json"], &[&ro.join("dir/g")]);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["path"], "ro");
    assert_eq!(shown["read_only"], true);
    let out = run_ok(&["subvolume", "show"], &[&a]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Path:         a"));

    // Deleting: nested first (ENOTEMPTY), a plain directory is not a subvolume, then the rest.
    let out = cowcrypt()
        .args(["subvolume", "delete"])
        .arg(&a)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("holds other subvolumes"), "{err}");
    let out = cowcrypt()
        .args(["subvolume", "delete"])
        .arg(a.join("dir"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("dir is not a subvolume"), "{err}");
    run_ok(&["subvolume", "delete"], &[&a.join("nested")]);
    run_ok(&["subvolume", "delete"], &[&a]);
    run_ok(&["subvolume", "delete"], &[&ro]);
    // Gone at once, for the kernel's cache too.
    assert!(!a.exists());
    assert!(!ro.exists());
    assert_eq!(fs::read(rw.join("f")).unwrap(), b"snapshot changed");
    assert_eq!(fs::read(rw.join("dir/g")).unwrap(), b"deep");
    let v = list_json(d);
    assert_eq!(v["subvolumes"].as_array().unwrap().len(), 3, "{v}");

    unmount(m);
    fsck_clean(&s.image);
}

/// Free bytes of the filesystem holding `p`.
fn free_bytes(p: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(p).unwrap();
    st.blocks_available() as u64 * st.fragment_size() as u64
}

fn wait_deleted(mount: &Path) {
    let start = Instant::now();
    loop {
        let v = list_json(mount);
        if v["deleting"] == 0 {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "deletion not finished: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn deleting_on_disk(image: &Path) -> u64 {
    let out = ok(
        cowcrypt()
            .args(["inspect", "--json"])
            .arg(image)
            .output()
            .unwrap(),
        "inspect",
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["deleting"].as_u64().unwrap()
}

#[test]
fn delete_frees_space_in_the_background_and_resumes_after_remount() {
    if !can_mount() {
        return;
    }
    const MIB: u64 = 1 << 20;
    let s = scratch("256M");
    let mut m = mount(&s);
    let d = s.dir.clone();
    let before = free_bytes(&d);

    // A deletion that runs while mounted.
    let a = d.join("a");
    run_ok(&["subvolume", "create"], &[&a]);
    for i in 0..8 {
        fs::write(a.join(format!("f{i}")), vec![i as u8 + 1; 4 << 20]).unwrap();
    }
    run_ok(&["subvolume", "snapshot"], &[&a, &d.join("snap")]);
    ok(Command::new("sync").output().unwrap(), "sync");
    let full = free_bytes(&d);
    assert!(before - full >= 30 * MIB, "{before} {full}");
    // The snapshot shares every block: deleting the origin frees nothing yet.
    run_ok(&["subvolume", "delete"], &[&a]);
    wait_deleted(&d);
    assert!(free_bytes(&d) < full + 2 * MIB);
    assert_eq!(fs::read(d.join("snap/f3")).unwrap(), vec![4u8; 4 << 20]);
    // Deleting the last holder frees the data; --wait returns once it is free.
    run_ok(&["subvolume", "delete", "--wait"], &[&d.join("snap")]);
    assert_eq!(list_json(&d)["deleting"], 0);
    let after = free_bytes(&d);
    assert!(after + 2 * MIB >= before, "{before} {after}");

    // A deletion cut short by an unmount resumes after the next mount. The background step
    // runs on a timer, so the unmount may come after it finished: try until one is caught.
    let mut caught = false;
    for round in 0..4 {
        let b = d.join(format!("b{round}"));
        run_ok(&["subvolume", "create"], &[&b]);
        for i in 0..4 {
            fs::write(b.join(format!("f{i}")), vec![7u8; 4 << 20]).unwrap();
        }
        ok(Command::new("sync").output().unwrap(), "sync");
        let base = free_bytes(&d);
        run_ok(&["subvolume", "delete"], &[&b]);
        unmount(m);
        let pending = deleting_on_disk(&s.image);
        fsck_clean(&s.image);
        m = mount(&s);
        wait_deleted(&d);
        assert!(free_bytes(&d) >= base + 14 * MIB);
        if pending > 0 {
            caught = true;
            break;
        }
    }
    assert!(
        caught,
        "no unmount came before the background deletion finished"
    );
    unmount(m);
    fsck_clean(&s.image);
}

#[test]
fn a_list_larger_than_one_frame_comes_in_pages() {
    if !can_mount() {
        return;
    }
    let s = scratch("128M");
    let m = mount(&s);
    // About 450 bytes of JSON each: 80 of them need three 16 KiB frames.
    let mut want = vec![String::new()];
    for i in 0..80 {
        let name = format!("{i:03}{}", "n".repeat(250));
        run_ok(&["subvolume", "create"], &[&s.dir.join(&name)]);
        want.push(name);
    }
    let v = list_json(&s.dir);
    let subs = v["subvolumes"].as_array().unwrap();
    let paths: Vec<&str> = subs.iter().map(|s| s["path"].as_str().unwrap()).collect();
    assert_eq!(paths, want);
    let ids: Vec<u64> = subs.iter().map(|s| s["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    unmount(m);
    fsck_clean(&s.image);
}

/// Whether `setpriv` is here; under CI=true it must be.
fn have_setpriv() -> bool {
    let found = Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true: needs setpriv");
        }
        let _ = writeln!(std::io::stderr(), "skipping: needs setpriv");
    }
    found
}

/// `cowcrypt ARGS` as uid/gid 65534; (success, stdout and stderr).
fn cowcrypt_as_nobody(args: &[&str], path: &Path, more: &[&Path]) -> (bool, String) {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_cowcrypt"))
        .args(args)
        .arg(path);
    for p in more {
        cmd.arg(p);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn the_caller_of_a_control_request_is_the_user_who_sent_it() {
    if !can_mount() || !have_setpriv() {
        return;
    }
    let s = scratch("64M");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(s.dir.parent().unwrap(), fs::Permissions::from_mode(0o755)).unwrap();
    let out = cowcrypt()
        .args(["mount", "-o", "allow_other"])
        .arg(&s.image)
        .arg(&s.dir)
        .output();
    let m = Mounted {
        dir: s.dir.clone(),
        image: s.image.clone(),
    };
    ok(out.unwrap(), "mount");
    let open = s.dir.join("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    let (mine, snap, roots) = (open.join("mine"), open.join("snap"), open.join("roots"));
    run_ok(&["subvolume", "create"], &[&roots]);

    // A user makes and snapshots a subvolume of their own: both belong to them.
    let (made, text) = cowcrypt_as_nobody(&["subvolume", "create"], &mine, &[]);
    assert!(made, "{text}");
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&fs::metadata(&mine).unwrap()),
        65534
    );
    let (made, text) = cowcrypt_as_nobody(&["subvolume", "snapshot", "-r"], &mine, &[&snap]);
    assert!(made, "{text}");
    let (listed, text) = cowcrypt_as_nobody(&["subvolume", "list"], &s.dir, &[]);
    assert!(listed && text.contains("open/snap"), "{text}");
    // Root's subvolume is not listed for them (its path could name hidden directories).
    assert!(!text.contains("open/roots"), "{text}");
    let out = run_ok(&["subvolume", "list"], &[&s.dir]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("open/roots"));

    // Root's subvolume: neither snapshot nor delete, though the directory is open to all.
    let (done, text) =
        cowcrypt_as_nobody(&["subvolume", "snapshot"], &roots, &[&open.join("copy")]);
    assert!(!done && text.contains("Operation not permitted"), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
    let (done, text) = cowcrypt_as_nobody(&["subvolume", "delete"], &roots, &[]);
    assert!(!done && text.contains("Operation not permitted"), "{text}");
    assert!(roots.is_dir());

    // Their own go.
    for p in [&snap, &mine] {
        let (done, text) = cowcrypt_as_nobody(&["subvolume", "delete"], p, &[]);
        assert!(done, "{text}");
        assert!(!p.exists());
    }
    unmount(m);
    fsck_clean(&s.image);
}

/// One raw control ioctl on `path` with `frame` in the buffer: the answer frame or the errno.
fn raw_control(path: &Path, frame: &[u8]) -> Result<Vec<u8>, i32> {
    use cowfs::control::{FRAME_SIZE, IOCTL_CMD};
    let f = fs::File::open(path).unwrap();
    let mut buf = vec![0u8; FRAME_SIZE];
    buf[..frame.len()].copy_from_slice(frame);
    // SAFETY: the ioctl number says FRAME_SIZE bytes in and out, the buffer's length.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            IOCTL_CMD as libc::Ioctl,
            buf.as_mut_ptr(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
    }
    Ok(buf)
}

#[test]
fn the_frame_is_checked_by_the_daemon() {
    use cowfs::control::{PROTOCOL_VERSION, Request, Response};
    if !can_mount() {
        return;
    }
    let s = scratch("64M");
    let m = mount(&s);
    let answer = raw_control(&s.dir, &Request::Version.encode().unwrap()).unwrap();
    match Response::decode(&answer).unwrap() {
        Response::Version { protocol, program } => {
            assert_eq!(protocol, PROTOCOL_VERSION);
            assert_eq!(program, env!("CARGO_PKG_VERSION"));
        }
        other => panic!("{other:?}"),
    }
    let frame = |json: &[u8]| {
        let mut f = (json.len() as u32).to_le_bytes().to_vec();
        f.extend_from_slice(json);
        f
    };
    // Another version, an unknown request, not JSON, a length past the buffer.
    assert_eq!(
        raw_control(&s.dir, &frame(br#"{"version":99,"body":"version"}"#)),
        Err(libc::EPROTO)
    );
    assert_eq!(
        raw_control(&s.dir, &frame(br#"{"version":1,"body":"format_disk"}"#)),
        Err(libc::EINVAL)
    );
    assert_eq!(raw_control(&s.dir, &frame(b"\xff\xfe")), Err(libc::EINVAL));
    assert_eq!(raw_control(&s.dir, &[0xff; 8]), Err(libc::EINVAL));
    // Errors of the operation come back as its errno: deleting a name that is no subvolume is
    // EINVAL, a name that does not exist ENOENT.
    fs::create_dir(s.dir.join("plain")).unwrap();
    let req = |r: Request| raw_control(&s.dir, &r.encode().unwrap()).map(|_| ());
    assert_eq!(
        req(Request::SubvolumeDelete {
            name: b"plain".to_vec()
        }),
        Err(libc::EINVAL)
    );
    assert_eq!(
        req(Request::SubvolumeDelete {
            name: b"none".to_vec()
        }),
        Err(libc::ENOENT)
    );
    assert!(s.dir.join("plain").is_dir());
    unmount(m);
    fsck_clean(&s.image);
}

#[test]
fn a_daemon_killed_after_snapshot_and_delete_keeps_both_and_resumes_the_release() {
    if !can_mount() {
        return;
    }
    const MIB: u64 = 1 << 20;
    let s = scratch("128M");
    let d = s.dir.clone();
    // Foreground, so the test holds the daemon and can SIGKILL it.
    let mut child = cowcrypt()
        .args(["mount", "-f"])
        .arg(&s.image)
        .arg(&d)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let m = Mounted {
        dir: d.clone(),
        image: s.image.clone(),
    };
    let start = Instant::now();
    while !is_mounted(&d) {
        assert!(start.elapsed() < Duration::from_secs(30), "mount not live");
        std::thread::sleep(Duration::from_millis(50));
    }
    run_ok(&["subvolume", "create"], &[&d.join("a")]);
    fs::write(d.join("a/big"), vec![3u8; 16 << 20]).unwrap();
    run_ok(
        &["subvolume", "snapshot", "-r"],
        &[&d.join("a"), &d.join("snap")],
    );
    run_ok(&["subvolume", "create"], &[&d.join("gone")]);
    fs::write(d.join("gone/big"), vec![5u8; 16 << 20]).unwrap();
    ok(Command::new("sync").output().unwrap(), "sync");
    let before = free_bytes(&d);
    run_ok(&["subvolume", "delete"], &[&d.join("gone")]);
    child.kill().unwrap();
    child.wait().unwrap();
    ok(
        Command::new("umount").arg(&d).output().unwrap(),
        "umount of a dead mount",
    );
    drop(m);
    // Snapshot and delete were durable when the commands returned.
    fsck_clean(&s.image);
    let m = mount(&s);
    assert!(!d.join("gone").exists());
    assert_eq!(fs::read(d.join("snap/big")).unwrap(), vec![3u8; 16 << 20]);
    let list = list_json(&d);
    let paths: Vec<&str> = list["subvolumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["", "a", "snap"], "{list}");
    wait_deleted(&d);
    assert!(free_bytes(&d) >= before + 15 * MIB);
    unmount(m);
    fsck_clean(&s.image);
}
