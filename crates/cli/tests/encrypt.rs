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

use common::{ok, run};
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
