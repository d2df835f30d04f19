//! Resizing an unmounted filesystem: shrinking drops unused chunks and moves used ones (with
//! their sharing: snapshots and reflinks) below the new end, growing adds chunks that new data
//! then uses; every byte reads back, fsck is clean, and nothing lives past the new end. A crash
//! at any write of a shrink that moves chunks leaves a filesystem that opens clean with every
//! byte as before, and running it again completes it; the same holds for a grow. A shrink that
//! does not fit into half-used chunks fits after a balance packs them.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::*;
use cowfs::{Filesystem, ROOT_INO};
use store::crash::{CrashOptions, RecordingDevice, crash_images};
use store::{BlockDevice, MemDevice};

/// name -> contents of the files in the root and in subvolume "sv".
type Files = BTreeMap<String, Vec<u8>>;

fn files(fs: &Filesystem) -> Files {
    let c = root();
    let mut out = Files::new();
    let sv = fs.lookup(ROOT_INO, b"sv", &c).unwrap().ino;
    let snap = fs.lookup(ROOT_INO, b"snap", &c).unwrap().ino;
    for (prefix, dir) in [("", ROOT_INO), ("sv/", sv), ("snap/", snap)] {
        for name in names(fs, dir) {
            if name == b"." || name == b".." {
                continue;
            }
            let a = fs.lookup(dir, &name, &c).unwrap();
            if a.kind != cowfs::FileKind::File {
                continue;
            }
            out.insert(
                format!("{prefix}{}", String::from_utf8_lossy(&name)),
                content(fs, a.ino),
            );
        }
    }
    out
}

/// The first `len` bytes of `dev` as a device of that size (what cutting an image leaves).
fn cut(dev: &Arc<dyn BlockDevice>, len: usize) -> Arc<dyn BlockDevice> {
    let mut b = vec![0u8; len];
    dev.read_at(&mut b, 0).unwrap();
    Arc::new(MemDevice::from_bytes(b))
}

/// `dev`'s bytes on a device of `len` bytes (what extending an image gives).
fn extend(dev: &Arc<dyn BlockDevice>, len: usize) -> Arc<dyn BlockDevice> {
    let mut b = vec![0u8; dev.size() as usize];
    dev.read_at(&mut b, 0).unwrap();
    b.resize(len, 0);
    Arc::new(MemDevice::from_bytes(b))
}

/// A 256 MiB filesystem whose data ends up at the far end of the device: the device is filled,
/// then everything but the last files is deleted. A subvolume, its snapshot and a reflink share
/// some of what is left.
fn far_data() -> (Arc<dyn BlockDevice>, Files) {
    let dev = new_dev(256 * MIB);
    let fs = Filesystem::open_device(dev.clone(), &opts()).unwrap();
    let c = root();
    let mut n = 0;
    loop {
        let (a, h) = fs
            .create(ROOT_INO, format!("fill{n}").as_bytes(), 0o644, rw(), &c)
            .unwrap();
        let r = fs.write(a.ino, h, 0, &pattern(8 * MIB, n as u8), &c);
        fs.release(a.ino, h).unwrap();
        fs.sync().unwrap();
        n += 1;
        if r.is_err() || fs.statfs().unwrap().bfree * 4096 < 40 * MIB as u64 {
            break;
        }
    }
    for i in 0..n - 2 {
        fs.unlink(ROOT_INO, format!("fill{i}").as_bytes(), &c)
            .unwrap();
    }
    let sv = fs.subvolume_create(ROOT_INO, b"sv", 0o755, &c).unwrap();
    put(&fs, sv.ino, b"own", &pattern(300_000, 77), &c);
    fs.sync().unwrap();
    // Reflink the last fill file into the subvolume, then snapshot it.
    let last = fs
        .lookup(ROOT_INO, format!("fill{}", n - 1).as_bytes(), &c)
        .unwrap();
    let (dst, dh) = fs.create(sv.ino, b"shared", 0o644, rw(), &c).unwrap();
    let sh = fs
        .open(last.ino, cowfs::OpenFlags(libc::O_RDONLY), &c)
        .unwrap();
    fs.copy_file_range(last.ino, sh, 0, dst.ino, dh, 0, 4 * MIB as u64, &c)
        .unwrap();
    fs.release(last.ino, sh).unwrap();
    fs.release(dst.ino, dh).unwrap();
    fs.subvolume_snapshot(sv.ino, ROOT_INO, b"snap", true, &c)
        .unwrap();
    let want = files(&fs);
    assert_clean(&fs);
    fs.unmount().unwrap();
    (dev, want)
}

#[test]
fn shrink_moves_used_chunks_and_grow_adds_space() {
    let (dev, want) = far_data();
    let r = Filesystem::resize_device(dev.clone(), 112 * MIB as u64, &mut |_, _| {}).unwrap();
    assert!(r.chunks_moved > 0, "{r:?}");
    assert!(r.chunks_removed > 0, "{r:?}");
    // Nothing lives past the new end: the cut device opens and reads everything.
    let small = cut(&dev, 112 * MIB);
    let fs = Filesystem::open_device(small.clone(), &opts()).unwrap();
    assert_eq!(files(&fs), want);
    assert_clean(&fs);
    fs.unmount().unwrap();

    // Grow again, then fill the new space.
    let big = extend(&small, 192 * MIB);
    let r = Filesystem::resize_device(big.clone(), 192 * MIB as u64, &mut |_, _| {}).unwrap();
    assert!(r.chunks_added > 0, "{r:?}");
    let fs = Filesystem::open_device(big, &opts()).unwrap();
    let free = fs.statfs().unwrap().bfree * 4096;
    assert!(free > 60 * MIB as u64, "{free} bytes free after growing");
    let c = root();
    let more = pattern(50 * MIB, 200);
    put(&fs, ROOT_INO, b"more", &more, &c);
    fs.sync().unwrap();
    let mut want2 = want.clone();
    want2.insert("more".into(), more);
    assert_eq!(files(&fs), want2);
    assert_clean(&fs);
}

#[test]
fn shrink_refuses_what_cannot_fit_and_changes_nothing() {
    let (dev, want) = far_data();
    let e = Filesystem::resize_device(dev.clone(), 24 * MIB as u64, &mut |_, _| {}).unwrap_err();
    assert_eq!(e.errno(), libc::ENOSPC, "{e}");
    let fs = Filesystem::open_device(dev, &opts()).unwrap();
    assert_eq!(files(&fs), want);
    assert_clean(&fs);
}

#[test]
fn a_crash_anywhere_in_a_shrink_loses_nothing() {
    let (dev, want) = far_data();
    let mut base = vec![0u8; dev.size() as usize];
    dev.read_at(&mut base, 0).unwrap();
    let rec = Arc::new(RecordingDevice::new(MemDevice::from_bytes(base.clone())));
    let r = Filesystem::resize_device(rec.clone(), 112 * MIB as u64, &mut |_, _| {}).unwrap();
    assert!(r.chunks_moved > 0);
    let log = rec.log();
    let crash = CrashOptions {
        torn_variants: 1,
        reorder_variants: 1,
        ..CrashOptions::default()
    };
    let mut images = 0;
    let mut resumed = 0;
    for img in crash_images(&base, &log, 3, crash) {
        images += 1;
        let dev: Arc<dyn BlockDevice> = Arc::new(img.image);
        let fs = Filesystem::open_device(dev.clone(), &opts())
            .unwrap_or_else(|e| panic!("{}: open: {e}", img.description));
        assert_eq!(files(&fs), want, "{}", img.description);
        let r = fs.check().unwrap();
        assert!(r.is_clean(), "{}: {r}", img.description);
        fs.unmount().unwrap();
        // Running the shrink again after a crash finishes it (a sample: each run copies chunks).
        if images % 16 == 1 {
            Filesystem::resize_device(dev.clone(), 112 * MIB as u64, &mut |_, _| {})
                .unwrap_or_else(|e| panic!("{}: shrink again: {e}", img.description));
            let fs = Filesystem::open_device(cut(&dev, 112 * MIB), &opts()).unwrap();
            assert_eq!(files(&fs), want, "{}: shrunk again", img.description);
            assert_clean(&fs);
            resumed += 1;
        }
    }
    eprintln!(
        "{images} crash images of a shrink ({} device operations), {resumed} shrunk again",
        log.len()
    );
    assert!(images > log.len());
    assert!(resumed > 0);
}

#[test]
fn a_crash_anywhere_in_a_grow_loses_nothing() {
    let (dev, want) = far_data();
    let old = dev.size();
    let big = 320 * MIB;
    let grown = extend(&dev, big);
    let mut base = vec![0u8; big];
    grown.read_at(&mut base, 0).unwrap();
    let rec = Arc::new(RecordingDevice::new(MemDevice::from_bytes(base.clone())));
    let r = Filesystem::resize_device(rec.clone(), big as u64, &mut |_, _| {}).unwrap();
    assert!(r.chunks_added > 0, "{r:?}");
    let log = rec.log();
    let crash = CrashOptions {
        torn_variants: 1,
        reorder_variants: 1,
        ..CrashOptions::default()
    };
    let mut sizes = std::collections::BTreeSet::new();
    let mut images = 0;
    for img in crash_images(&base, &log, 3, crash) {
        images += 1;
        let dev: Arc<dyn BlockDevice> = Arc::new(img.image);
        let fs = Filesystem::open_device(dev.clone(), &opts())
            .unwrap_or_else(|e| panic!("{}: open: {e}", img.description));
        assert_eq!(files(&fs), want, "{}", img.description);
        let r = fs.check().unwrap();
        assert!(r.is_clean(), "{}: {r}", img.description);
        let total = fs.statfs().unwrap().blocks * 4096;
        sizes.insert(total);
        fs.unmount().unwrap();
        // Growing again after the crash completes, and the new space takes data.
        let r = Filesystem::resize_device(dev.clone(), big as u64, &mut |_, _| {})
            .unwrap_or_else(|e| panic!("{}: grow again: {e}", img.description));
        assert_eq!(r.new_size, big as u64, "{}", img.description);
        let fs = Filesystem::open_device(dev, &opts()).unwrap();
        assert!(
            fs.statfs().unwrap().bfree * 4096 > 60 * MIB as u64,
            "{}: the added space is free",
            img.description
        );
        assert_eq!(files(&fs), want, "{}: grown again", img.description);
        assert_clean(&fs);
    }
    eprintln!(
        "{images} crash images of a grow from {old} to {big} bytes ({} device operations), \
         sizes seen {sizes:?}",
        log.len()
    );
    assert!(images > log.len());
    assert!(
        sizes.len() == 2,
        "both the old and the new size are seen: {sizes:?}"
    );
}

/// A filesystem whose data chunks are all half used: every other file of a full device deleted.
fn half_used_chunks() -> (Arc<dyn BlockDevice>, Files) {
    let dev = new_dev(256 * MIB);
    let fs = Filesystem::open_device(dev.clone(), &opts()).unwrap();
    let c = root();
    let sv = fs.subvolume_create(ROOT_INO, b"sv", 0o755, &c).unwrap();
    put(&fs, sv.ino, b"own", &pattern(300_000, 77), &c);
    let mut n = 0;
    loop {
        let (a, h) = fs
            .create(ROOT_INO, format!("f{n}").as_bytes(), 0o644, rw(), &c)
            .unwrap();
        let r = fs.write(a.ino, h, 0, &pattern(2 * MIB, n as u8), &c);
        fs.release(a.ino, h).unwrap();
        fs.sync().unwrap();
        n += 1;
        if r.is_err() || fs.statfs().unwrap().bfree * 4096 < 24 * MIB as u64 {
            break;
        }
    }
    for i in (0..n).step_by(2) {
        fs.unlink(ROOT_INO, format!("f{i}").as_bytes(), &c).unwrap();
    }
    fs.subvolume_snapshot(sv.ino, ROOT_INO, b"snap", true, &c)
        .unwrap();
    fs.sync().unwrap();
    let want = files(&fs);
    assert_clean(&fs);
    fs.unmount().unwrap();
    (dev, want)
}

#[test]
fn a_shrink_that_does_not_fit_fits_after_a_balance() {
    let (dev, want) = half_used_chunks();
    let fs = Filesystem::open_device(dev.clone(), &opts()).unwrap();
    let s = fs.space().unwrap();
    fs.unmount().unwrap();
    // Room for the data packed, the metadata chunks and some slack, in whole data chunks
    // (16 MiB on this device); less than the chunks hold now.
    let chunk = 16 * MIB as u64;
    let target = (s.data_used + s.metadata_total + 3 * chunk).div_ceil(chunk) * chunk;
    assert!(
        target + chunk < s.data_total + s.metadata_total,
        "{s:?}: the test needs half-used chunks"
    );
    Filesystem::resize_device(dev.clone(), target, &mut |_, _| {})
        .expect_err("the used chunks do not fit below the new end");

    let fs = Filesystem::open_device(dev.clone(), &opts()).unwrap();
    let r = fs.balance(100, &mut |_, _| {}).unwrap();
    assert!(r.chunks_emptied > 0, "{r:?}");
    fs.unmount().unwrap();
    let r = Filesystem::resize_device(dev.clone(), target, &mut |_, _| {}).unwrap();
    assert!(r.chunks_removed > 0, "{r:?}");
    let fs = Filesystem::open_device(cut(&dev, target as usize), &opts()).unwrap();
    assert_eq!(files(&fs), want);
    assert_clean(&fs);
}
