//! Balance: half-empty data chunks are emptied by moving their extents elsewhere; every byte
//! reads back, extents shared by a snapshot and a reflink stay shared (one extent each), fsck is
//! clean, free space ends up in whole empty chunks, and a crash at any write of a balance leaves
//! every file as it was.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use common::*;
use cowfs::{Filesystem, OpenFlags, ROOT_INO};
use store::crash::{CrashOptions, RecordingDevice, crash_images};
use store::{BlockDevice, MemDevice};

type Files = BTreeMap<String, Vec<u8>>;

fn files(fs: &Filesystem) -> Files {
    let c = root();
    let mut out = Files::new();
    let sv = fs.lookup(ROOT_INO, b"sv", &c).unwrap().ino;
    let snap = fs.lookup(ROOT_INO, b"snap", &c).unwrap().ino;
    for (prefix, dir) in [("", ROOT_INO), ("sv/", sv), ("snap/", snap)] {
        for name in names(fs, dir) {
            let a = match name.as_slice() {
                b"." | b".." => continue,
                _ => fs.lookup(dir, &name, &c).unwrap(),
            };
            if a.kind == cowfs::FileKind::File {
                out.insert(
                    format!("{prefix}{}", String::from_utf8_lossy(&name)),
                    content(fs, a.ino),
                );
            }
        }
    }
    out
}

/// Extents of a file, by inode number, from inspect.
fn extents_of(fs: &Filesystem, ino: u64) -> Vec<u64> {
    let ins = fs.inspect().unwrap();
    ins.subvolumes
        .iter()
        .flat_map(|s| s.inodes.iter())
        .filter(|i| i.ino == ino)
        .flat_map(|i| i.extents.iter().map(|e| e.extent))
        .collect()
}

/// A filesystem whose data chunks are about half used, with a subvolume, a snapshot of it and
/// a reflink sharing extents.
fn half_used() -> Arc<dyn BlockDevice> {
    let dev = new_dev(256 * MIB);
    let fs = Filesystem::open_device(dev.clone(), &opts()).unwrap();
    let c = root();
    let sv = fs.subvolume_create(ROOT_INO, b"sv", 0o755, &c).unwrap();
    for i in 0..16u8 {
        put(
            &fs,
            sv.ino,
            format!("f{i}").as_bytes(),
            &pattern(6 * MIB, i),
            &c,
        );
        fs.sync().unwrap();
    }
    for i in (0..16u8).step_by(2) {
        fs.unlink(sv.ino, format!("f{i}").as_bytes(), &c).unwrap();
    }
    // A reflink into the top-level subvolume and a read-only snapshot share extents.
    let src = fs.lookup(sv.ino, b"f5", &c).unwrap();
    let (dst, dh) = fs.create(ROOT_INO, b"reflinked", 0o644, rw(), &c).unwrap();
    let sh = fs.open(src.ino, OpenFlags(libc::O_RDONLY), &c).unwrap();
    fs.copy_file_range(src.ino, sh, 0, dst.ino, dh, 0, 6 * MIB as u64, &c)
        .unwrap();
    fs.release(src.ino, sh).unwrap();
    fs.release(dst.ino, dh).unwrap();
    fs.subvolume_snapshot(sv.ino, ROOT_INO, b"snap", true, &c)
        .unwrap();
    fs.unmount().unwrap();
    dev
}

#[test]
fn balance_empties_chunks_and_keeps_bytes_and_sharing() {
    let dev = half_used();
    let fs = Filesystem::open_device(dev.clone(), &opts()).unwrap();
    let c = root();
    let want = files(&fs);
    let free_before = fs.statfs().unwrap().bfree;
    let mut seen = 0;
    let r = fs.balance(100, &mut |done, _| seen = done).unwrap();
    assert!(r.chunks_emptied > 0 && r.extents_moved > 0, "{r:?}");
    assert!(r.bytes_moved > 0 && seen > 0, "{r:?}");
    assert_eq!(files(&fs), want);
    assert_clean(&fs);
    assert_eq!(
        fs.statfs().unwrap().bfree,
        free_before,
        "balance neither leaks nor frees"
    );
    // Still shared: the snapshot's file and the reflink use the origin's extents.
    let sv = fs.lookup(ROOT_INO, b"sv", &c).unwrap();
    let snap = fs.lookup(ROOT_INO, b"snap", &c).unwrap();
    let f5 = extents_of(&fs, fs.lookup(sv.ino, b"f5", &c).unwrap().ino);
    let s5 = extents_of(&fs, fs.lookup(snap.ino, b"f5", &c).unwrap().ino);
    let r5 = extents_of(&fs, fs.lookup(ROOT_INO, b"reflinked", &c).unwrap().ino);
    assert_eq!(f5, s5);
    assert_eq!(f5, r5);
    fs.unmount().unwrap();
    // After a remount, too; and a second balance finds the data packed.
    let fs = Filesystem::open_device(dev, &opts()).unwrap();
    assert_eq!(files(&fs), want);
    assert_clean(&fs);
    let again = fs.balance(50, &mut |_, _| {}).unwrap();
    assert_eq!(again.chunks_emptied, 0, "{again:?}");
}

#[test]
fn a_crash_anywhere_in_a_balance_loses_nothing() {
    let dev = half_used();
    let mut base = vec![0u8; dev.size() as usize];
    dev.read_at(&mut base, 0).unwrap();
    let want = {
        let fs = Filesystem::open_device(dev.clone(), &opts()).unwrap();
        files(&fs)
    };
    let rec = Arc::new(RecordingDevice::new(MemDevice::from_bytes(base.clone())));
    let fs = Filesystem::open_device(rec.clone(), &opts()).unwrap();
    let r = fs.balance(100, &mut |_, _| {}).unwrap();
    assert!(r.extents_moved > 0);
    fs.unmount().unwrap();
    let log = rec.log();
    let crash = CrashOptions {
        torn_variants: 1,
        reorder_variants: 1,
        ..CrashOptions::default()
    };
    let mut images = 0;
    let mut generations = BTreeSet::new();
    for img in crash_images(&base, &log, 5, crash) {
        images += 1;
        let dev: Arc<dyn BlockDevice> = Arc::new(img.image);
        let fs = Filesystem::open_device(dev, &opts())
            .unwrap_or_else(|e| panic!("{}: open: {e}", img.description));
        assert_eq!(files(&fs), want, "{}", img.description);
        let r = fs.check().unwrap();
        assert!(r.is_clean(), "{}: {r}", img.description);
        generations.insert(r.generation);
    }
    eprintln!("{images} crash images of a balance, generations {generations:?}");
    assert!(
        generations.len() > 2,
        "the balance committed chunk by chunk"
    );
}
