//! du and df through the library: exclusive and shared bytes across reflinks and snapshots,
//! totals that match st_blocks (what fsck checks), and space figures that move with writes.

mod common;

use common::*;
use cowfs::{OpenFlags, ROOT_INO};

#[test]
fn du_splits_exclusive_and_shared_bytes() {
    let (_dev, fs) = new_fs();
    let c = root();
    let sv = fs.subvolume_create(ROOT_INO, b"sv", 0o755, &c).unwrap();
    let a = put(&fs, sv.ino, b"a", &pattern(1 << 20, 1), &c);
    let du = fs.disk_usage(a).unwrap();
    assert_eq!((du.total, du.exclusive, du.shared), (1 << 20, 1 << 20, 0));
    assert_eq!(du.total, fs.getattr(a).unwrap().blocks * 512);

    // A reflink of the first half: those bytes are shared by both files.
    let (b, bh) = fs.create(sv.ino, b"b", 0o644, rw(), &c).unwrap();
    let ah = fs.open(a, OpenFlags(libc::O_RDONLY), &c).unwrap();
    fs.copy_file_range(a, ah, 0, b.ino, bh, 0, 1 << 19, &c)
        .unwrap();
    fs.release(a, ah).unwrap();
    fs.release(b.ino, bh).unwrap();
    let du = fs.disk_usage(a).unwrap();
    assert_eq!(du.total, 1 << 20);
    assert_eq!(
        du.shared,
        1 << 20,
        "the whole extent is shared, half of it referenced by b"
    );
    let dub = fs.disk_usage(b.ino).unwrap();
    assert_eq!(
        (dub.total, dub.exclusive, dub.shared),
        (1 << 19, 0, 1 << 19)
    );

    // A directory sums its files; set shared counts the extent's bytes once.
    assert_eq!(du.set_shared, 1 << 20);
    assert_eq!(dub.set_shared, 1 << 19);
    let all = fs.disk_usage(sv.ino).unwrap();
    assert_eq!(all.total, (1 << 20) + (1 << 19));
    assert_eq!(all.files, 2);
    assert_eq!((all.shared, all.set_shared), (all.total, 1 << 20));

    // A snapshot shares everything until either side writes.
    let snap = fs
        .subvolume_snapshot(sv.ino, ROOT_INO, b"snap", false, &c)
        .unwrap();
    let c_ino = put(&fs, sv.ino, b"c", &pattern(64 << 10, 3), &c);
    let sa = fs.lookup(snap.ino, b"a", &c).unwrap();
    let du = fs.disk_usage(sa.ino).unwrap();
    assert_eq!((du.exclusive, du.shared), (0, 1 << 20));
    // A file made after the snapshot is the origin's alone.
    let du = fs.disk_usage(c_ino).unwrap();
    assert_eq!((du.exclusive, du.shared), (64 << 10, 0));
    assert_clean(&fs);
}

#[test]
fn space_moves_with_writes_and_deletes() {
    let (_dev, fs) = new_fs();
    let c = root();
    fs.sync().unwrap();
    let before = fs.space().unwrap();
    assert_eq!(
        before.size,
        before.data_total + before.metadata_total,
        "{before:?}"
    );
    assert_eq!(before.free, fs.statfs().unwrap().bfree * 4096);
    put(&fs, ROOT_INO, b"f", &pattern(4 << 20, 9), &c);
    let after = fs.space().unwrap();
    assert_eq!(after.data_used, before.data_used + (4 << 20));
    assert_eq!(after.free, before.free - (4 << 20));
    assert!(after.metadata_used > 0);
    fs.unlink(ROOT_INO, b"f", &c).unwrap();
    fs.sync().unwrap();
    assert_eq!(fs.space().unwrap().data_used, before.data_used);
}
