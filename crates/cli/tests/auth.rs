//! Authenticated encryption through the mount and the CLI: `cowcrypt encrypt --authenticated`,
//! files read back, then the image is tampered with offline (a bit flipped in a data unit, its
//! keyless checksum rewritten to match, as an attacker can): a read through the mount gets EIO
//! and the daemon logs the file, offset and subvolume; `scrub` with the key names the file and
//! exits 1; without the key, scrub is clean but says what it could not verify; untampered data
//! still reads.
//!
//! Needs root and /dev/fuse; skipped with a message otherwise, except under CI=true.

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use common::{encrypted_dir, ok, run};
use cowfs::items::{self, ty};
use fsx::harness::Scratch;
use store::{BlockDevice, FileDevice, Key, Store, tree_id};

/// The logical start of every authenticated (version-2 context) extent, from inspect --json.
fn authenticated_extents(bin: &Path, image: &Path) -> Vec<u64> {
    let out = ok(run(
        bin,
        &["inspect", "--json", image.to_str().unwrap()],
        None,
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut found = Vec::new();
    for sv in v["subvolumes"].as_array().unwrap() {
        for inode in sv["inodes"].as_array().unwrap() {
            for e in inode["extents"].as_array().unwrap() {
                if e["crypt_context"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("020101"))
                {
                    found.push(e["extent"].as_u64().unwrap());
                }
            }
        }
    }
    found
}

/// Flips a bit in data unit 1 of the extent at `bytenr` and rewrites that unit's CRC-32C, so
/// only the MAC can tell.
fn tamper(image: &Path, bytenr: u64) {
    let dev: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(image, true).unwrap());
    let store = Store::open(dev).unwrap();
    let io = store.data_io().unwrap();
    let mut unit = io.read_raw(bytenr, 4096, 4096).unwrap();
    unit[17] ^= 0x01;
    io.write(bytenr, 4096, &unit, None).unwrap();
    let key = Key::new(bytenr, ty::DATA_CSUM, 0);
    let mut t = store.begin().unwrap();
    let mut c =
        items::decode_csums(&key, &t.get(tree_id::CSUM_TREE, &key).unwrap().unwrap()).unwrap();
    c[1] = store::checksum(&unit);
    t.insert(tree_id::CSUM_TREE, key, &items::encode_csums(&c))
        .unwrap();
    t.commit().unwrap();
}

#[test]
fn tampering_is_eio_through_the_mount_and_found_by_scrub() {
    let bin = Path::new(env!("CARGO_BIN_EXE_cowcrypt"));
    let Some(scratch) = Scratch::new(bin, "tampering_is_eio_through_the_mount", "256M") else {
        return;
    };
    let (image, dir) = (&scratch.image, &scratch.dir);
    let mut mount = scratch.mount(bin);
    let s = |p: &str| dir.join(p).to_str().unwrap().to_owned();
    let key: Vec<u8> = (1..65).collect();
    let id = encrypted_dir(bin, dir, "vault", &key, &["--authenticated"]);
    let pol = ok(run(bin, &["policy", &s("vault")], None));
    assert!(pol.contains("authenticated"), "{pol}");
    let body: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 % 253) as u8).collect();
    std::fs::write(dir.join("vault/db"), &body).unwrap();
    std::fs::write(dir.join("vault/other"), b"left alone").unwrap();
    assert_eq!(std::fs::read(dir.join("vault/db")).unwrap(), body);
    let scrub = ok(run(bin, &["scrub", &s("")], None));
    assert!(scrub.contains("2 verified with their key"), "{scrub}");
    mount.unmount().unwrap();

    let extents = authenticated_extents(bin, image);
    assert_eq!(extents.len(), 2, "{extents:?}");
    // The larger file's extent: the one with a second data unit.
    let big = *extents.iter().min().unwrap();
    tamper(image, big);
    let fsck = run(bin, &["fsck", image.to_str().unwrap()], None);
    assert!(
        fsck.status.success(),
        "keyless fsck sees matching checksums: {fsck:?}"
    );

    mount.remount().unwrap();
    ok(run(bin, &["key", "add", &s("")], Some(&key)));
    assert_eq!(
        std::fs::read(dir.join("vault/other")).unwrap(),
        b"left alone"
    );
    let mut f = std::fs::File::open(dir.join("vault/db")).unwrap();
    let mut first = vec![0u8; 4096];
    f.read_exact(&mut first).unwrap();
    assert_eq!(first, &body[..4096]);
    f.seek(SeekFrom::Start(4096)).unwrap();
    let mut buf = vec![0u8; 4096];
    let e = f.read_exact(&mut buf).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    drop(f);
    let log = mount.log_text();
    assert!(
        log.contains("authentication failed") && log.contains("vault/db"),
        "{log}"
    );
    let scrub = run(bin, &["scrub", &s("")], None);
    assert_eq!(scrub.status.code(), Some(1), "{scrub:?}");
    let out = String::from_utf8_lossy(&scrub.stdout);
    assert!(
        out.contains("tampered data unit") && out.contains("/vault/db offset 4096"),
        "{out}"
    );
    // Without the key: the checksums match, so scrub is clean, and says what it skipped.
    ok(run(bin, &["key", "remove", &s(""), &id], None));
    let scrub = ok(run(bin, &["scrub", &s("")], None));
    assert!(scrub.contains("2 not verified"), "{scrub}");
    mount.unmount().unwrap();
}
