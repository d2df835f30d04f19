//! The container workflow's encryption through a mount: a plaintext base, a snapshot turned
//! encrypted with `cowcrypt encrypt`, writes there are encrypted (no marker in the raw image,
//! after sync, remount and delete), reflinks from a plaintext store share while a cross-key
//! reflink falls back to a copy, and removing the key with a file open is FILES_BUSY: the open
//! file keeps working, new opens get ENOKEY, the last close makes the key ABSENT.
//!
//! Needs root and /dev/fuse; skipped with a message otherwise, except under CI=true.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::Command;

use common::{encrypted_dir, ok, run};
use fsx::harness::{CowcryptMount, Scratch};

fn image_has(image: &Path, needle: &[u8]) -> bool {
    let all = std::fs::read(image).unwrap();
    all.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn container_encryption_through_the_mount() {
    let bin = Path::new(env!("CARGO_BIN_EXE_cowcrypt"));
    let Some(scratch) = Scratch::new(bin, "container_encryption_through_the_mount", "256M") else {
        return;
    };
    let (image, dir) = (&scratch.image, &scratch.dir);
    let mut mount = scratch.mount(bin);
    let s = |p: &str| dir.join(p).to_str().unwrap().to_owned();
    let marker = b"ENCRYPTION-MARKER-7f3a";
    let secret: Vec<u8> = marker.iter().cycle().take(200_000).copied().collect();

    ok(run(bin, &["subvolume", "create", &s("base")], None));
    std::fs::write(dir.join("base/os-release"), b"base image\n").unwrap();
    ok(run(bin, &["subvolume", "create", &s("store")], None));
    std::fs::write(dir.join("store/pkg"), vec![0x42u8; 1 << 20]).unwrap();
    ok(run(
        bin,
        &["subvolume", "snapshot", &s("base"), &s("c1")],
        None,
    ));
    let key: Vec<u8> = (100..164).collect();
    let id = ok(run(bin, &["key", "add", &s("")], Some(&key)));
    assert_eq!(id.len(), 32);
    ok(run(bin, &["encrypt", &s("c1"), "--key", &id], None));
    let pol = ok(run(bin, &["policy", &s("c1")], None));
    assert!(pol.contains("AES-256-XTS") && pol.contains(&id), "{pol}");
    // A second encrypt with another key is EEXIST; a non-empty plain directory ENOTEMPTY.
    let other = ok(run(bin, &["key", "add", &s("")], Some(&[7u8; 32])));
    let again = run(bin, &["encrypt", &s("c1"), "--key", &other], None);
    assert_eq!(again.status.code(), Some(1));
    std::fs::create_dir(dir.join("base/dir")).unwrap();
    std::fs::write(dir.join("base/dir/x"), b"x").unwrap();
    let full = run(bin, &["encrypt", &s("base/dir"), "--key", &id], None);
    assert_eq!(full.status.code(), Some(1));

    std::fs::write(dir.join("c1/secret"), &secret).unwrap();
    assert_eq!(
        std::fs::read(dir.join("c1/os-release")).unwrap(),
        b"base image\n"
    );
    // From the plaintext store: shared. Across keys: refused, so cp copies (encrypted).
    let cp = Command::new("cp")
        .args(["--reflink=auto", &s("store/pkg"), &s("c1/pkg")])
        .status()
        .unwrap();
    assert!(cp.success());
    let du = ok(run(bin, &["du", "--json", &s("c1/pkg")], None));
    let v: serde_json::Value = serde_json::from_str(&du).unwrap();
    assert_eq!(v[0]["usage"]["shared"], 1 << 20, "{du}");
    std::fs::create_dir(dir.join("other")).unwrap();
    ok(run(bin, &["encrypt", &s("other"), "--key", &other], None));
    let cross = Command::new("cp")
        .args(["--reflink=auto", &s("c1/secret"), &s("other/secret")])
        .status()
        .unwrap();
    assert!(cross.success());
    assert_eq!(std::fs::read(dir.join("other/secret")).unwrap(), secret);
    let du = ok(run(bin, &["du", "--json", &s("other/secret")], None));
    let v: serde_json::Value = serde_json::from_str(&du).unwrap();
    assert_eq!(
        v[0]["usage"]["shared"], 0,
        "a cross-key reflink is a copy: {du}"
    );

    // Key removal with an open file.
    let mut open = std::fs::File::open(dir.join("c1/secret")).unwrap();
    let rm = ok(run(bin, &["key", "remove", &s(""), &id], None));
    assert!(rm.contains("FILES_BUSY"), "{rm}");
    let st = ok(run(bin, &["key", "status", &s(""), &id], None));
    assert!(st.contains("INCOMPLETELY_REMOVED"), "{st}");
    let mut got = Vec::new();
    open.read_to_end(&mut got).unwrap();
    assert_eq!(got, secret);
    let err = std::fs::File::open(dir.join("c1/os-release"))
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOKEY));
    drop(open);
    let st = ok(run(bin, &["key", "status", &s(""), &id], None));
    assert!(st.contains("ABSENT"), "{st}");

    mount.unmount().expect("unmount");
    assert!(
        !image_has(image, marker),
        "plaintext marker in the raw image"
    );
    CowcryptMount::fsck(bin, image).expect("fsck");
    let scrub = run(bin, &["scrub", image.to_str().unwrap()], None);
    assert!(scrub.status.success(), "keyless scrub: {scrub:?}");
    // Remount: locked until the key is added again.
    let mut mount = scratch.mount(bin);
    let err = std::fs::read(dir.join("c1/secret")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOKEY));
    ok(run(bin, &["key", "add", &s("")], Some(&key)));
    assert_eq!(std::fs::read(dir.join("c1/secret")).unwrap(), secret);
    std::fs::remove_file(dir.join("c1/secret")).unwrap();
    mount.unmount().expect("unmount");
    assert!(!image_has(image, marker));
}

/// Byte `i` of the test files: never a long run of zeros, and different at every offset of a
/// block, so a block written to the wrong place or lost shows.
fn byte_at(seed: u64, i: u64) -> u8 {
    let x = (i ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_mul(0x2545_f491_4f6c_dd1d);
    (x >> 56) as u8 | 1
}

/// Write-behind through the kernel: two writers fill 80 MiB encrypted files in unaligned
/// pieces, so flights of buffered data leave while the next pieces arrive (about 250 writes
/// meet a flight in a run; a few complete a block in flight, which the library's model tests
/// force every time), while a reader reads back what is written. Every byte reads back, after
/// an fsync and a crash (the daemon killed) and after a clean remount; the image checks clean
/// and holds no marker in clear.
#[test]
fn write_behind_through_the_mount_loses_nothing() {
    use std::os::unix::fs::FileExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    let bin = Path::new(env!("CARGO_BIN_EXE_cowcrypt"));
    let Some(scratch) = Scratch::new(bin, "write_behind_through_the_mount_loses_nothing", "512M")
    else {
        return;
    };
    let (image, dir) = (&scratch.image, &scratch.dir);
    let mut mount = scratch.mount(bin);
    let s = |p: &str| dir.join(p).to_str().unwrap().to_owned();
    let key: Vec<u8> = (1..65).collect();
    encrypted_dir(bin, dir, "c", &key, &[]);
    const SIZE: u64 = 80 << 20;
    const PIECE: u64 = (1 << 20) + 4097;
    let marker = b"WRITE-BEHIND-MARKER-31c9";
    let content = |seed: u64| -> Vec<u8> {
        let mut v: Vec<u8> = (0..SIZE).map(|i| byte_at(seed, i)).collect();
        for at in (0..SIZE as usize - marker.len()).step_by(1 << 20) {
            v[at..at + marker.len()].copy_from_slice(marker);
        }
        v
    };
    let written = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..2u64)
        .map(|w| {
            let path = dir.join(format!("c/f{w}"));
            let written = written.clone();
            std::thread::spawn(move || {
                let want = content(w);
                let f = std::fs::File::create(&path).unwrap();
                let mut at = 0;
                while at < SIZE {
                    let end = (at + PIECE).min(SIZE);
                    f.write_all_at(&want[at as usize..end as usize], at)
                        .unwrap();
                    at = end;
                    if w == 0 {
                        written.store(at, Ordering::Release);
                    }
                }
                f.sync_all().unwrap();
                want
            })
        })
        .collect();
    // The reader: what writer 0 has written reads back while later pieces are in the air.
    let reader = {
        let path = dir.join("c/f0");
        let written = written.clone();
        std::thread::spawn(move || {
            let want = content(0);
            let mut checked = 0;
            while checked < 20 {
                let done = written.load(Ordering::Acquire);
                if done < PIECE * 2 {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    continue;
                }
                let f = std::fs::File::open(&path).unwrap();
                let at = (done / 3) & !4095;
                let mut buf = vec![0u8; (done - at).min(3 << 20) as usize];
                f.read_exact_at(&mut buf, at).unwrap();
                assert!(
                    buf == want[at as usize..at as usize + buf.len()],
                    "read at {at}"
                );
                checked += 1;
                if done == SIZE {
                    break;
                }
            }
        })
    };
    let wants: Vec<Vec<u8>> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    reader.join().unwrap();
    let check = |when: &str| {
        for (w, want) in wants.iter().enumerate() {
            let got = std::fs::read(dir.join(format!("c/f{w}"))).unwrap();
            assert!(got == *want, "file {w} {when}");
        }
    };
    check("after the writes");
    // Both files were fsync'd: a crash loses none of it.
    mount.crash_and_remount().expect("crash and remount");
    ok(run(bin, &["key", "add", &s("")], Some(&key)));
    check("after a crash");
    mount.unmount().expect("unmount");
    CowcryptMount::fsck(bin, image).expect("fsck");
    assert!(
        !image_has(image, marker),
        "plaintext marker in the raw image"
    );
    let mut mount = scratch.mount(bin);
    ok(run(bin, &["key", "add", &s("")], Some(&key)));
    check("after a remount");
    mount.unmount().expect("unmount");
}
