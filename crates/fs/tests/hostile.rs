//! Hostile images: items whose bytes are damaged but whose tree nodes are valid (written through
//! the store, so checksums pass). Opening, walking, reading, checking and changing such a
//! filesystem returns errors where it must, and never panics or hangs.

mod common;

use common::*;
use cowfs::{FileKind, Filesystem, Ino, OpenFlags, ROOT_INO, RenameFlags};
use store::crash::SplitMix64;
use store::{Key, Store};

fn populate(fs: &Filesystem) {
    let c = root();
    let d = fs.mkdir(ROOT_INO, b"dir", 0o755, &c).unwrap();
    put(fs, d.ino, b"small", b"hello", &c);
    put(fs, d.ino, b"big", &pattern(70_000, 3), &c);
    let f = put(fs, ROOT_INO, b"f", &pattern(9000, 1), &c);
    fs.link(f, d.ino, b"hard", &c).unwrap();
    fs.symlink(ROOT_INO, b"s", b"dir/small", &c).unwrap();
    fs.setxattr(f, b"user.x", b"value", 0, &c).unwrap();
    fs.mknod(ROOT_INO, b"fifo", libc::S_IFIFO | 0o644, 0, &c)
        .unwrap();
    // The handle is never released: the image keeps an orphan item.
    let (o, fh) = fs.create(ROOT_INO, b"open", 0o644, rw(), &c).unwrap();
    fs.write(o.ino, fh, 0, b"orphan", &c).unwrap();
    fs.unlink(ROOT_INO, b"open", &c).unwrap();
    fs.sync().unwrap();
}

/// Damages one item value: flip bits, cut it short, or grow it.
fn damage(v: &mut Vec<u8>, rng: &mut SplitMix64) {
    match rng.below(4) {
        0 if !v.is_empty() => {
            for _ in 0..1 + rng.below(3) {
                let i = rng.below(v.len() as u64) as usize;
                v[i] ^= 1 << rng.below(8);
            }
        }
        1 => v.truncate(rng.below(v.len() as u64 + 1) as usize),
        2 => v.extend((0..1 + rng.below(20)).map(|_| rng.below(256) as u8)),
        _ => {
            // A plausible field made huge: overwrite 8 bytes with a large number.
            if v.len() >= 9 {
                let at = 1 + rng.below(v.len() as u64 - 8) as usize;
                v[at..at + 8].copy_from_slice(&(u64::MAX - rng.below(1 << 20)).to_le_bytes());
            }
        }
    }
}

fn walk(fs: &Filesystem, dir: Ino, depth: usize) {
    if depth > 8 {
        return;
    }
    let c = root();
    let Ok(dh) = fs.opendir(dir, &c) else { return };
    let mut cookie = 0;
    for _ in 0..1000 {
        let Ok(es) = fs.readdirplus(dir, dh, cookie, 16) else {
            break;
        };
        let Some(last) = es.last() else { break };
        cookie = last.0.cookie;
        for (e, _) in es {
            if e.name == b"." || e.name == b".." {
                continue;
            }
            let _ = fs.lookup(dir, &e.name, &c);
            let _ = fs.listxattr(e.ino, &c);
            let _ = fs.getxattr(e.ino, b"user.x", &c);
            match e.kind {
                FileKind::Dir => walk(fs, e.ino, depth + 1),
                FileKind::Symlink => drop(fs.readlink(e.ino)),
                _ => {
                    if let Ok(fh) = fs.open(e.ino, OpenFlags(libc::O_RDWR), &c) {
                        let _ = fs.read(e.ino, fh, 0, 1 << 20);
                        let _ = fs.write(e.ino, fh, 10, b"new", &c);
                        let _ = fs.lseek(e.ino, fh, 0, cowfs::Whence::Hole);
                        let _ = fs.release(e.ino, fh);
                    }
                }
            }
        }
    }
    let _ = fs.releasedir(dir, dh);
}

#[test]
fn damaged_items_give_errors_not_panics() {
    let cases: u64 = std::env::var("COWCRYPT_HOSTILE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let (mut opened, mut faulty) = (0, 0);
    for seed in 0..cases {
        let dev = new_dev(32 * MIB);
        let fs = Filesystem::open_device(dev.clone(), &opts()).unwrap();
        populate(&fs);
        drop(fs);
        let mut rng = SplitMix64::new(seed);
        {
            let store = Store::open(dev.clone()).unwrap();
            let mut t = store.begin().unwrap();
            let items: Vec<(Key, Vec<u8>)> =
                t.range(256, ..).unwrap().map(|r| r.unwrap()).collect();
            for _ in 0..1 + rng.below(3) {
                let (k, mut v) = items[rng.below(items.len() as u64) as usize].clone();
                damage(&mut v, &mut rng);
                t.insert(256, k, &v).unwrap();
            }
            t.commit().unwrap();
        }
        let Ok(fs) = Filesystem::open_device(dev, &opts()) else {
            continue;
        };
        opened += 1;
        walk(&fs, ROOT_INO, 0);
        let c = root();
        if fs.check().is_ok_and(|r| !r.is_clean()) {
            faulty += 1;
        }
        let _ = fs.inspect().map(|i| i.to_string());
        let _ = fs.rename(
            ROOT_INO,
            b"dir",
            ROOT_INO,
            b"dir2",
            RenameFlags::default(),
            &c,
        );
        let _ = fs.unlink(ROOT_INO, b"f", &c);
        let _ = fs.rmdir(ROOT_INO, b"dir2", &c);
        let _ = fs.create(ROOT_INO, b"new", 0o644, rw(), &c);
        let _ = fs.statfs();
        let _ = fs.sync();
    }
    eprintln!("{opened} of {cases} damaged images opened, {faulty} checked with faults");
    // Most damage is found by check; some images must open, or the walk tested nothing.
    assert!(opened > cases / 4, "only {opened} opened");
}

/// A flipped bit in file data (the tree nodes stay valid) is found by check() as a checksum
/// fault naming the inode, and a read of that block is an error, not the damaged bytes.
#[test]
fn damaged_file_data_is_a_check_fault_and_a_read_error() {
    let (dev, fs) = new_fs();
    let c = root();
    let f = put(&fs, ROOT_INO, b"f", &pattern(3 * 4096, 9), &c);
    fs.sync().unwrap();
    assert_clean(&fs);
    let ins = fs.inspect().unwrap();
    let ext = &ins.subvolumes[0]
        .inodes
        .iter()
        .find(|i| i.ino == f)
        .unwrap()
        .extents[0];
    let physical = ext.physical.expect("mapped extent");
    fs.unmount().unwrap();
    // Flip one bit in the second block of the file's data.
    let at = physical + 4096 + 17;
    let mut b = [0u8; 1];
    dev.read_at(&mut b, at).unwrap();
    b[0] ^= 0x10;
    dev.write_at(&b, at).unwrap();
    let fs = Filesystem::open_device(dev, &opts()).unwrap();
    let r = fs.check().unwrap();
    assert!(!r.is_clean(), "damaged data passed fsck: {r}");
    assert!(
        r.faults.iter().any(|x| x.contains(&format!("inode {f}"))),
        "{r}"
    );
    let h = fs.open(f, OpenFlags(libc::O_RDONLY), &c).unwrap();
    assert_eq!(
        fs.read(f, h, 0, 4096).unwrap(),
        pattern(3 * 4096, 9)[..4096]
    );
    assert_eq!(errno(fs.read(f, h, 4096, 4096)), libc::EIO);
    fs.release(f, h).unwrap();
}

/// Scrub finds a damaged data sector and names every file holding it (through a reflink and in
/// a subvolume), and finds a damaged tree node; a clean filesystem scrubs clean.
#[test]
fn scrub_names_files_of_bad_sectors_and_finds_bad_nodes() {
    let (dev, fs) = new_fs();
    let c = root();
    let sv = fs.subvolume_create(ROOT_INO, b"sv", 0o755, &c).unwrap();
    let d = fs.mkdir(sv.ino, b"dir", 0o755, &c).unwrap();
    let f = put(&fs, d.ino, b"f", &pattern(5 * 4096, 4), &c);
    let (g, gh) = fs.create(ROOT_INO, b"g", 0o644, rw(), &c).unwrap();
    let fh = fs.open(f, OpenFlags(libc::O_RDONLY), &c).unwrap();
    fs.copy_file_range(f, fh, 0, g.ino, gh, 4096, 5 * 4096, &c)
        .unwrap();
    fs.release(f, fh).unwrap();
    fs.release(g.ino, gh).unwrap();
    fs.sync().unwrap();
    let clean = fs.scrub(&mut |_, _| {}).unwrap();
    assert!(clean.is_clean(), "{clean:?}");
    assert!(clean.data_extents >= 1 && clean.metadata_nodes > 0);
    let ins = fs.inspect().unwrap();
    let ext = ins
        .subvolumes
        .iter()
        .flat_map(|s| s.inodes.iter())
        .find(|i| i.ino == f)
        .unwrap()
        .extents[0]
        .clone();
    fs.unmount().unwrap();
    let at = ext.physical.unwrap() + 3 * 4096 + 100;
    let mut b = [0u8; 1];
    dev.read_at(&mut b, at).unwrap();
    b[0] ^= 1;
    dev.write_at(&b, at).unwrap();
    let fs = Filesystem::open_device(dev.clone(), &opts()).unwrap();
    let r = fs.scrub(&mut |_, _| {}).unwrap();
    assert_eq!(r.bad_sectors, 1, "{r:?}");
    let spots: Vec<(String, u64)> = r.bad[0]
        .files
        .iter()
        .map(|s| (s.path.clone(), s.offset))
        .collect();
    assert_eq!(
        spots
            .iter()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        [
            ("sv/dir/f".to_string(), 3 * 4096),
            ("g".to_string(), 4 * 4096)
        ]
        .into_iter()
        .collect()
    );
    fs.unmount().unwrap();
    // Now a tree node: the root of subvolume "sv" (tree 257), which opening never reads.
    let store = Store::open(dev.clone()).unwrap();
    let item = store
        .read()
        .get(
            store::tree_id::ROOT_TREE,
            &Key::new(
                store::tree_id::FIRST_SUBVOL_TREE + 1,
                store::item_type::ROOT_ITEM,
                0,
            ),
        )
        .unwrap()
        .unwrap();
    let root_node = store::RootItem::decode(&item).unwrap().root;
    let node_at = store
        .chunk_map()
        .to_physical(root_node.bytenr, 4096)
        .unwrap();
    drop(store);
    let mut b = [0u8; 1];
    dev.read_at(&mut b, node_at + 200).unwrap();
    b[0] ^= 0x80;
    dev.write_at(&b, node_at + 200).unwrap();
    let ro = cowfs::OpenOptions {
        read_only: true,
        ..opts()
    };
    let fs = Filesystem::open_device(dev, &ro).unwrap();
    let r = fs.scrub(&mut |_, _| {}).unwrap();
    assert!(!r.metadata_errors.is_empty(), "{r:?}");
    assert!(!r.is_clean());
}
