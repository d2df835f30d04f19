//! Subvolumes through the library: create, nest, snapshot (O(1), writes on either side stay
//! apart), read-only snapshots, EXDEV across subvolumes, delete with background release, and
//! fsck clean after every step and after a remount.

mod common;

use common::*;
use cowfs::{Filesystem, OpenFlags, ROOT_INO, RenameFlags};

#[test]
fn create_snapshot_write_both_sides_then_delete() {
    let (dev, fs) = new_fs();
    let c = root();
    let base = fs.subvolume_create(ROOT_INO, b"base", 0o755, &c).unwrap();
    assert_ne!(base.ino >> 48, 0, "a subvolume's inodes carry its number");
    let f = put(&fs, base.ino, b"image.txt", &pattern(100_000, 1), &c);
    let d = fs.mkdir(base.ino, b"etc", 0o755, &c).unwrap();
    put(&fs, d.ino, b"passwd", b"root:x:0:0", &c);
    assert_clean(&fs);

    let snap = fs
        .subvolume_snapshot(base.ino, ROOT_INO, b"snap", false, &c)
        .unwrap();
    assert_ne!(snap.ino >> 48, base.ino >> 48);
    let sf = fs.lookup(snap.ino, b"image.txt", &c).unwrap();
    assert_eq!(content(&fs, sf.ino), pattern(100_000, 1));
    // Writes on either side never show on the other.
    let h = fs.open(sf.ino, rw(), &c).unwrap();
    fs.write(sf.ino, h, 10, b"snapshot side", &c).unwrap();
    fs.release(sf.ino, h).unwrap();
    let h = fs.open(f, rw(), &c).unwrap();
    fs.write(f, h, 20, b"origin side", &c).unwrap();
    fs.release(f, h).unwrap();
    let mut want_snap = pattern(100_000, 1);
    want_snap[10..23].copy_from_slice(b"snapshot side");
    let mut want_base = pattern(100_000, 1);
    want_base[20..31].copy_from_slice(b"origin side");
    assert_eq!(content(&fs, sf.ino), want_snap);
    assert_eq!(content(&fs, f), want_base);
    assert_clean(&fs);

    // Links and renames across subvolumes are EXDEV.
    assert_eq!(errno(fs.link(f, snap.ino, b"x", &c)), libc::EXDEV);
    assert_eq!(
        errno(fs.rename(
            base.ino,
            b"etc",
            snap.ino,
            b"etc2",
            RenameFlags::default(),
            &c
        )),
        libc::EXDEV
    );
    // Renaming a subvolume inside its parent works.
    fs.rename(
        ROOT_INO,
        b"snap",
        ROOT_INO,
        b"snap2",
        RenameFlags::default(),
        &c,
    )
    .unwrap();
    let list = fs.subvolume_list().unwrap();
    let paths: Vec<&str> = list.subvolumes.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(paths, ["", "base", "snap2"]);
    assert_eq!(list.subvolumes[2].snapshot_of, Some(base.ino >> 48));
    assert_clean(&fs);

    // Delete: the entry goes at once, space comes back once the background work is done.
    fs.sync().unwrap();
    let before = fs.statfs().unwrap().bfree;
    fs.subvolume_delete(ROOT_INO, b"base", &c).unwrap();
    assert_eq!(errno(fs.lookup(ROOT_INO, b"base", &c)), libc::ENOENT);
    fs.finish_subvolume_deletions().unwrap();
    assert_eq!(fs.subvolume_list().unwrap().deleting, 0);
    assert!(fs.statfs().unwrap().bfree > before, "space returned");
    assert_clean(&fs);
    fs.unmount().unwrap();

    let fs = Filesystem::open_device(dev, &opts()).unwrap();
    let snap = fs.lookup(ROOT_INO, b"snap2", &c).unwrap();
    let sf = fs.lookup(snap.ino, b"image.txt", &c).unwrap();
    assert_eq!(content(&fs, sf.ino), want_snap);
    assert_clean(&fs);
}

/// A subvolume deleted in the background frees its extents' checksums with them: nothing is
/// left in the checksum tree, and an extent later written at the same address checks clean
/// (a stale checksum item past its end used to make fsck fail).
#[test]
fn a_background_delete_frees_checksums_too() {
    let (dev, fs) = new_fs();
    let c = root();
    let sv = fs.subvolume_create(ROOT_INO, b"sv", 0o755, &c).unwrap();
    put(&fs, sv.ino, b"f", &pattern(3 * MIB, 1), &c);
    fs.sync().unwrap();
    fs.subvolume_delete(ROOT_INO, b"sv", &c).unwrap();
    fs.finish_subvolume_deletions().unwrap();
    fs.unmount().unwrap();
    {
        let store = store::Store::open(dev.clone()).unwrap();
        let r = store.read();
        let left = r
            .range(store::tree_id::CSUM_TREE, store::Key::MIN..=store::Key::MAX)
            .unwrap()
            .count();
        assert_eq!(left, 0, "checksum items outlived their extents");
    }
    let fs = Filesystem::open_device(dev, &opts()).unwrap();
    let g = put(&fs, ROOT_INO, b"g", &pattern(8192, 2), &c);
    fs.sync().unwrap();
    assert_eq!(content(&fs, g), pattern(8192, 2));
    let r = fs.check().unwrap();
    assert!(r.faults.is_empty(), "{:?}", r.faults);
}

#[test]
fn read_only_snapshots_refuse_changes() {
    let (_dev, fs) = new_fs();
    let c = root();
    let base = fs.subvolume_create(ROOT_INO, b"base", 0o755, &c).unwrap();
    let f = put(&fs, base.ino, b"f", b"data", &c);
    let ro = fs
        .subvolume_snapshot(base.ino, ROOT_INO, b"ro", true, &c)
        .unwrap();
    let rf = fs.lookup(ro.ino, b"f", &c).unwrap();
    assert_eq!(content(&fs, rf.ino), b"data");
    assert_eq!(errno(fs.open(rf.ino, rw(), &c)), libc::EROFS);
    assert_eq!(errno(fs.mkdir(ro.ino, b"d", 0o755, &c)), libc::EROFS);
    assert_eq!(errno(fs.unlink(ro.ino, b"f", &c)), libc::EROFS);
    assert!(fs.subvolume_show(rf.ino).unwrap().read_only);
    // The origin stays writable; clearing the flag makes the snapshot writable.
    let h = fs.open(f, rw(), &c).unwrap();
    fs.write(f, h, 0, b"DATA", &c).unwrap();
    fs.release(f, h).unwrap();
    fs.subvolume_set_read_only(ro.ino, false, &c).unwrap();
    fs.mkdir(ro.ino, b"d", 0o755, &c).unwrap();
    assert_eq!(content(&fs, rf.ino), b"data");
    assert_clean(&fs);
}

#[test]
fn nested_subvolumes_show_as_empty_directories_in_a_snapshot() {
    let (_dev, fs) = new_fs();
    let c = root();
    let outer = fs.subvolume_create(ROOT_INO, b"outer", 0o755, &c).unwrap();
    let inner = fs.subvolume_create(outer.ino, b"inner", 0o700, &c).unwrap();
    put(&fs, inner.ino, b"secret", b"inner data", &c);
    assert_eq!(
        errno(fs.subvolume_delete(ROOT_INO, b"outer", &c)),
        libc::ENOTEMPTY,
        "a subvolume holding another one"
    );
    let snap = fs
        .subvolume_snapshot(outer.ino, ROOT_INO, b"snap", false, &c)
        .unwrap();
    let stand_in = fs.lookup(snap.ino, b"inner", &c).unwrap();
    assert_eq!(stand_in.kind, cowfs::FileKind::Dir);
    assert_ne!(stand_in.ino, inner.ino);
    assert_eq!(names(&fs, stand_in.ino), [&b"."[..], b".."]);
    // Through the original parent the nested subvolume is the real one.
    let real = fs.lookup(outer.ino, b"inner", &c).unwrap();
    assert_eq!(real.ino, inner.ino);
    assert_eq!(names(&fs, inner.ino), [&b"."[..], b"..", b"secret"]);
    // Its ".." is the directory it is linked in.
    assert_eq!(fs.lookup(inner.ino, b"..", &c).unwrap().ino, outer.ino);
    // The stand-in goes with rmdir; the real one with subvolume delete.
    fs.rmdir(snap.ino, b"inner", &c).unwrap();
    fs.subvolume_delete(outer.ino, b"inner", &c).unwrap();
    fs.subvolume_delete(ROOT_INO, b"outer", &c).unwrap();
    fs.finish_subvolume_deletions().unwrap();
    assert_clean(&fs);
}

#[test]
fn deleting_needs_a_subvolume_and_no_open_files() {
    let (_dev, fs) = new_fs();
    let c = root();
    fs.mkdir(ROOT_INO, b"plain", 0o755, &c).unwrap();
    assert_eq!(
        errno(fs.subvolume_delete(ROOT_INO, b"plain", &c)),
        libc::EINVAL
    );
    let sv = fs.subvolume_create(ROOT_INO, b"sv", 0o777, &c).unwrap();
    let f = put(&fs, sv.ino, b"f", b"x", &c);
    let h = fs.open(f, OpenFlags(libc::O_RDONLY), &c).unwrap();
    assert_eq!(errno(fs.subvolume_delete(ROOT_INO, b"sv", &c)), libc::EBUSY);
    fs.release(f, h).unwrap();
    let other = user(1000, 1000, &[]);
    assert_eq!(
        errno(fs.subvolume_delete(ROOT_INO, b"sv", &other)),
        libc::EACCES,
        "no write permission on the parent"
    );
    fs.subvolume_delete(ROOT_INO, b"sv", &c).unwrap();
    assert_clean(&fs);
}

#[test]
fn users_snapshot_and_delete_only_their_own_subvolumes() {
    let (_dev, fs) = new_fs();
    let c = root();
    let alice = user(1000, 1000, &[]);
    let bob = user(1001, 1001, &[]);
    let pub_dir = fs.mkdir(ROOT_INO, b"pub", 0o777, &c).unwrap();
    let theirs = fs
        .subvolume_create(ROOT_INO, b"root-owned", 0o755, &c)
        .unwrap();
    // Readable, but not hers: no snapshot (btrfs asks for ownership too).
    assert_eq!(
        errno(fs.subvolume_snapshot(theirs.ino, pub_dir.ino, b"s", false, &alice)),
        libc::EPERM
    );
    let mine = fs
        .subvolume_create(pub_dir.ino, b"alice", 0o755, &alice)
        .unwrap();
    assert_eq!(mine.uid, 1000);
    let snap = fs
        .subvolume_snapshot(mine.ino, pub_dir.ino, b"alice-snap", true, &alice)
        .unwrap();
    assert_eq!(snap.uid, 1000);
    // Bob may write in the directory but owns neither subvolume.
    assert_eq!(
        errno(fs.subvolume_delete(pub_dir.ino, b"alice", &bob)),
        libc::EPERM
    );
    fs.subvolume_delete(pub_dir.ino, b"alice-snap", &alice)
        .unwrap();
    fs.subvolume_delete(pub_dir.ino, b"alice", &alice).unwrap();
    fs.finish_subvolume_deletions().unwrap();
    assert_clean(&fs);
}

/// Model file -> contents.
type Files = std::collections::BTreeMap<u8, Vec<u8>>;
/// Subvolume name -> (root ino, read-only, files).
type Subvols = std::collections::BTreeMap<String, (u64, bool, Files)>;

/// A small deterministic generator (xorshift), so a failure replays with its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Interleaved writes to origins and snapshots, snapshots of snapshots, reflinks across
/// subvolumes, deletions in random order: every file always reads as the model says, fsck is
/// clean along the way, and once everything is deleted the data space is exactly what it was.
#[test]
fn random_snapshots_writes_reflinks_and_deletes_match_a_model() {
    for seed in [0x5eed_u64, 0xc0ffee, 0xbadcafe] {
        random_round(seed);
    }
}

fn random_round(seed: u64) {
    use std::collections::BTreeMap;
    let dev = new_dev(256 * MIB);
    let fs = Filesystem::open_device(dev, &opts()).unwrap();
    let c = root();
    let mut rng = Rng(seed);
    fs.sync().unwrap();
    let free_at_start = fs.statfs().unwrap().bfree;
    let mut subvols: Subvols = BTreeMap::new();
    let mut next = 0;
    // Operations done per kind: create, write, snapshot, reflink, delete, balance.
    let mut done = [0usize; 6];
    let mut moved = 0;
    for step in 0..120 {
        let op = rng.below(11);
        let names: Vec<String> = subvols.keys().cloned().collect();
        if subvols.is_empty() || op == 0 {
            let name = format!("sv{next}");
            next += 1;
            let a = fs
                .subvolume_create(ROOT_INO, name.as_bytes(), 0o755, &c)
                .unwrap();
            subvols.insert(name, (a.ino, false, Files::new()));
            done[0] += 1;
        } else if op <= 5 {
            // Write into a file of a writable subvolume.
            let w: Vec<&String> = names.iter().filter(|n| !subvols[*n].1).collect();
            let Some(name) = w.get(rng.below(w.len().max(1) as u64) as usize) else {
                continue;
            };
            let (dir, _, files) = subvols.get_mut(*name).unwrap();
            let f = rng.below(4) as u8;
            // Up to 2 MiB per file, so data spreads over several chunks for balance to pack.
            let at = rng.below(1 << 20) as usize;
            let len = 1 + rng.below(1 << 20) as usize;
            let data = pattern(len, step as u8);
            let a = match fs.lookup(*dir, &fname(f), &c) {
                Ok(a) => a,
                Err(_) => {
                    let (a, h) = fs.create(*dir, &fname(f), 0o644, rw(), &c).unwrap();
                    fs.release(a.ino, h).unwrap();
                    a
                }
            };
            let h = fs.open(a.ino, rw(), &c).unwrap();
            fs.write(a.ino, h, at as u64, &data, &c).unwrap();
            fs.release(a.ino, h).unwrap();
            let v = files.entry(f).or_default();
            if v.len() < at + len {
                v.resize(at + len, 0);
            }
            v[at..at + len].copy_from_slice(&data);
            done[1] += 1;
        } else if op <= 7 {
            // Snapshot, sometimes read-only.
            let src = &names[rng.below(names.len() as u64) as usize];
            let ro = rng.below(3) == 0;
            let name = format!("sv{next}");
            next += 1;
            let a = fs
                .subvolume_snapshot(subvols[src].0, ROOT_INO, name.as_bytes(), ro, &c)
                .unwrap();
            let files = subvols[src].2.clone();
            subvols.insert(name, (a.ino, ro, files));
            done[2] += 1;
        } else if op == 8 {
            // Reflink a block-aligned range between files of two subvolumes.
            let from = &names[rng.below(names.len() as u64) as usize];
            let w: Vec<&String> = names.iter().filter(|n| !subvols[*n].1).collect();
            let Some(to) = w.get(rng.below(w.len().max(1) as u64) as usize) else {
                continue;
            };
            let Some((&sf, sdata)) = subvols[from].2.iter().next() else {
                continue;
            };
            let sdata = sdata.clone();
            let off_in = rng.below(4) * 4096;
            if off_in >= sdata.len() as u64 {
                continue;
            }
            let len = (1 + rng.below(5)) * 4096;
            let off_out = rng.below(4) * 4096;
            let src = fs.lookup(subvols[from].0, &fname(sf), &c).unwrap();
            let (dst, dh) = match fs.lookup(subvols[*to].0, b"copy", &c) {
                Ok(a) => (a.clone(), fs.open(a.ino, rw(), &c).unwrap()),
                Err(_) => fs.create(subvols[*to].0, b"copy", 0o644, rw(), &c).unwrap(),
            };
            let sh = fs.open(src.ino, OpenFlags(libc::O_RDONLY), &c).unwrap();
            let n = fs
                .copy_file_range(src.ino, sh, off_in, dst.ino, dh, off_out, len, &c)
                .unwrap();
            fs.release(src.ino, sh).unwrap();
            fs.release(dst.ino, dh).unwrap();
            let piece = &sdata[off_in as usize..(off_in + n) as usize];
            let v = subvols.get_mut(*to).unwrap().2.entry(b'y').or_default();
            let end = off_out as usize + piece.len();
            if v.len() < end {
                v.resize(end, 0);
            }
            v[off_out as usize..end].copy_from_slice(piece);
            done[3] += 1;
        } else if op == 9 {
            let name = &names[rng.below(names.len() as u64) as usize];
            fs.subvolume_delete(ROOT_INO, name.as_bytes(), &c).unwrap();
            subvols.remove(name);
            done[4] += 1;
        } else {
            // Balance in between: extents move, every reference with them.
            moved += fs.balance(100, &mut |_, _| {}).unwrap().extents_moved;
            done[5] += 1;
        }
        if step % 10 == 9 {
            check_model(&fs, &subvols, seed, step);
        }
    }
    check_model(&fs, &subvols, seed, 120);
    eprintln!("seed {seed:#x}: create, write, snapshot, reflink, delete, balance: {done:?}");
    assert!(
        done.iter().all(|&n| n > 0),
        "seed {seed:#x}: every kind ran: {done:?}"
    );
    assert!(moved > 0, "seed {seed:#x}: balances moved nothing");
    // Delete the rest in random order.
    let mut rest: Vec<String> = subvols.keys().cloned().collect();
    while !rest.is_empty() {
        let name = rest.remove(rng.below(rest.len() as u64) as usize);
        fs.subvolume_delete(ROOT_INO, name.as_bytes(), &c).unwrap();
    }
    fs.finish_subvolume_deletions().unwrap();
    assert_clean(&fs);
    assert_eq!(
        fs.statfs().unwrap().bfree,
        free_at_start,
        "seed {seed:#x}: data space after deleting everything"
    );
}

/// The name of model file `f`: "f0".."f3", or "copy" for the reflink target.
fn fname(f: u8) -> Vec<u8> {
    if f == b'y' {
        b"copy".to_vec()
    } else {
        vec![b'f', b'0' + f]
    }
}

fn check_model(fs: &Filesystem, subvols: &Subvols, seed: u64, step: usize) {
    let c = root();
    for (name, (ino, _, files)) in subvols {
        for (f, want) in files {
            let fname = fname(*f);
            let a = fs.lookup(*ino, &fname, &c).unwrap();
            assert!(
                content(fs, a.ino) == *want,
                "seed {seed:#x} step {step}: {name}/{} differs",
                String::from_utf8_lossy(&fname)
            );
        }
    }
    assert_clean(fs);
}
