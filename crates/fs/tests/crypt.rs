//! Encryption through the library: keys, policies (Linux's rules), inheritance, encrypted
//! contents with a nonce and key per extent, ENOKEY without the key, key removal with an open
//! file (INCOMPLETELY_REMOVED, then ABSENT with no derived key left), a plaintext snapshot turned
//! encrypted (old extents stay plaintext and shared, new writes are encrypted), reflink and link
//! rules (EXDEV), no plaintext marker anywhere on the device, and an extent decrypted straight
//! from the raw device with the fscrypt crate alone.

mod common;

use std::collections::BTreeSet;

use common::*;
use cowfs::{Caller, Filesystem, KeyPresence, OpenFlags, ROOT_INO, RenameFlags};
use fscrypt::policy::{ContentsMode, FilenamesMode, PolicyV2};
use fscrypt::{KeyIdentifier, MasterKey};

const KEY: [u8; 64] = [0x5a; 64];
const OTHER_KEY: [u8; 64] = [0x3c; 64];

fn policy(id: &KeyIdentifier) -> Vec<u8> {
    PolicyV2::new(
        ContentsMode::Aes256Xts,
        FilenamesMode::Aes256Cts,
        0x02,
        0,
        *id,
    )
    .unwrap()
    .encode()
    .to_vec()
}

/// `KEY` added and a new directory `name` under the root encrypted with it.
fn encrypted_dir(fs: &Filesystem, name: &[u8], c: &Caller) -> (KeyIdentifier, cowfs::Attr) {
    let id = fs.add_key(&KEY, c).unwrap();
    let d = fs.mkdir(ROOT_INO, name, 0o755, c).unwrap();
    fs.set_policy(d.ino, &policy(&id), c).unwrap();
    (id, d)
}

/// A marker that must never reach the device in clear.
fn marked(len: usize) -> Vec<u8> {
    let m = b"MARKER-cowcrypt-plaintext-";
    (0..len).map(|i| m[i % m.len()]).collect()
}

fn device_has(dev: &std::sync::Arc<dyn store::BlockDevice>, needle: &[u8]) -> bool {
    let mut all = vec![0u8; dev.size() as usize];
    dev.read_at(&mut all, 0).unwrap();
    all.windows(needle.len()).any(|w| w == needle)
}

/// Unmounts `fs`, finds no marker on `dev`, opens it again with `KEY`: `ino` reads `want`, and
/// the filesystem checks clean.
fn unmount_then_read_back(
    fs: Filesystem,
    dev: std::sync::Arc<dyn store::BlockDevice>,
    ino: u64,
    want: &[u8],
) {
    fs.unmount().unwrap();
    assert!(!device_has(&dev, b"MARKER-cowcrypt-plaintext-"));
    let fs = Filesystem::open_device(dev, &opts()).unwrap();
    fs.add_key(&KEY, &root()).unwrap();
    assert!(read_all(&fs, ino, &root()).unwrap() == want);
    assert_clean(&fs);
}

fn read_all(fs: &Filesystem, ino: u64, c: &Caller) -> cowfs::Result<Vec<u8>> {
    let h = fs.open(ino, OpenFlags(libc::O_RDONLY), c)?;
    let size = fs.getattr(ino)?.size;
    let r = fs.read(ino, h, 0, size as u32);
    fs.release(ino, h)?;
    r
}

#[test]
fn encrypted_directory_end_to_end() {
    let (dev, fs) = new_fs();
    let c = root();
    let id = fs.add_key(&KEY, &c).unwrap();
    assert_eq!(id, MasterKey::from_raw(&KEY).unwrap().identifier());
    let d = fs.mkdir(ROOT_INO, b"secret", 0o755, &c).unwrap();
    fs.set_policy(d.ino, &policy(&id), &c).unwrap();
    assert_eq!(fs.get_policy(d.ino).unwrap(), policy(&id));
    // Inherited by what is made inside.
    let sub = fs.mkdir(d.ino, b"sub", 0o755, &c).unwrap();
    assert_eq!(fs.get_policy(sub.ino).unwrap(), policy(&id));
    let body = marked(300_000);
    let f = put(&fs, sub.ino, b"file", &body, &c);
    fs.sync().unwrap();
    assert_eq!(read_all(&fs, f, &c).unwrap(), body);
    assert!(
        !device_has(&dev, b"MARKER-cowcrypt-plaintext-"),
        "plaintext on the device"
    );
    // Every extent has its own context; nonces never repeat.
    let ins = fs.inspect().unwrap();
    let contexts: Vec<String> = ins.subvolumes[0]
        .inodes
        .iter()
        .flat_map(|i| i.extents.iter())
        .filter_map(|e| e.crypt_context.clone())
        .collect();
    assert!(!contexts.is_empty());
    let unique: BTreeSet<&String> = contexts.iter().collect();
    assert_eq!(unique.len(), contexts.len());

    // Decrypt the first extent straight from the device with the fscrypt crate alone.
    let inode = ins.subvolumes[0]
        .inodes
        .iter()
        .find(|i| i.ino == f)
        .unwrap();
    let e = &inode.extents[0];
    let ctx_bytes: Vec<u8> = (0..e.crypt_context.as_ref().unwrap().len() / 2)
        .map(|i| {
            u8::from_str_radix(&e.crypt_context.as_ref().unwrap()[2 * i..2 * i + 2], 16).unwrap()
        })
        .collect();
    let ctx = fscrypt::extent::ExtentContext::decode(&ctx_bytes).unwrap();
    let mk = MasterKey::from_raw(&KEY).unwrap();
    let key = fscrypt::keysetup::per_extent_key(&mk, &ContentsMode::Aes256Xts.info(), ctx.nonce())
        .unwrap();
    let cipher = fscrypt::contents::ContentsCipher::new(ContentsMode::Aes256Xts, &key).unwrap();
    let mut raw = vec![0u8; 8192];
    dev.read_at(&mut raw, e.physical.unwrap() + e.offset_in_extent)
        .unwrap();
    cipher
        .decrypt_units(e.offset_in_extent / 4096, 4096, &mut raw)
        .unwrap();
    assert_eq!(
        &raw[..],
        &body[e.file_offset as usize..e.file_offset as usize + 8192]
    );

    // Policy rules, as the kernel's.
    let other = fs.add_key(&OTHER_KEY, &c).unwrap();
    assert_eq!(
        errno(fs.set_policy(d.ino, &policy(&other), &c)),
        libc::EEXIST
    );
    assert_eq!(errno(fs.set_policy(f, &policy(&id), &c)), libc::ENOTDIR);
    let full = fs.mkdir(ROOT_INO, b"full", 0o755, &c).unwrap();
    put(&fs, full.ino, b"x", b"x", &c);
    assert_eq!(
        errno(fs.set_policy(full.ino, &policy(&id), &c)),
        libc::ENOTEMPTY
    );
    let empty = fs.mkdir(ROOT_INO, b"empty", 0o777, &c).unwrap();
    let nokey = MasterKey::from_raw(&[9u8; 32]).unwrap().identifier();
    assert_eq!(
        errno(fs.set_policy(empty.ino, &policy(&nokey), &c)),
        libc::ENOKEY
    );
    let user = user(1000, 1000, &[]);
    assert_eq!(
        errno(fs.set_policy(empty.ino, &policy(&id), &user)),
        libc::EACCES
    );

    // Links and renames across policies, and reflinks of encrypted extents, are EXDEV.
    let plain = put(&fs, ROOT_INO, b"plain", b"plain bytes", &c);
    assert_eq!(errno(fs.link(plain, sub.ino, b"p", &c)), libc::EXDEV);
    assert_eq!(
        errno(fs.rename(
            ROOT_INO,
            b"plain",
            sub.ino,
            b"p",
            RenameFlags::default(),
            &c
        )),
        libc::EXDEV
    );
    let (out, oh) = fs.create(ROOT_INO, b"out", 0o644, rw(), &c).unwrap();
    let fh = fs.open(f, OpenFlags(libc::O_RDONLY), &c).unwrap();
    assert_eq!(
        errno(fs.copy_file_range(f, fh, 0, out.ino, oh, 0, 65536, &c)),
        libc::EXDEV
    );
    assert_eq!(fs.getattr(out.ino).unwrap().size, 0, "nothing changed");
    fs.release(f, fh).unwrap();
    fs.release(out.ino, oh).unwrap();
    // Plaintext into an encrypted file shares, and stays readable.
    let (inside, ih) = fs.create(sub.ino, b"from-plain", 0o644, rw(), &c).unwrap();
    let ph = fs.open(plain, OpenFlags(libc::O_RDONLY), &c).unwrap();
    fs.copy_file_range(plain, ph, 0, inside.ino, ih, 0, 11, &c)
        .unwrap();
    fs.release(plain, ph).unwrap();
    fs.release(inside.ino, ih).unwrap();
    assert_eq!(read_all(&fs, inside.ino, &c).unwrap(), b"plain bytes");
    assert_clean(&fs);

    // Key removal with an open file: it keeps working; new opens get ENOKEY.
    let h = fs.open(f, rw(), &c).unwrap();
    let r = fs.remove_key(&id, false, &c).unwrap();
    assert!(r.files_busy && !r.other_users, "{r:?}");
    assert_eq!(
        fs.key_status(&id, &c).state,
        KeyPresence::IncompletelyRemoved
    );
    assert_eq!(fs.read(f, h, 0, 64).unwrap(), body[..64]);
    fs.write(f, h, 10, b"written while removing", &c).unwrap();
    assert_eq!(
        errno(fs.open(f, OpenFlags(libc::O_RDONLY), &c)),
        libc::ENOKEY
    );
    assert_eq!(
        errno(fs.create(sub.ino, b"new", 0o644, rw(), &c)),
        libc::ENOKEY
    );
    fs.release(f, h).unwrap();
    // The last close drops the last pin: ABSENT, and no key derived from it is left.
    assert_eq!(fs.key_status(&id, &c).state, KeyPresence::Absent);
    let stats = fs.keyring_stats();
    assert_eq!(stats.keys, 1, "only the other key: {stats:?}");
    assert_eq!(stats.pins, 0, "{stats:?}");
    // Names (no-key names now) and attributes still work without the key.
    let listed = names(&fs, sub.ino);
    assert_eq!(listed.len(), 4, "file and from-plain: {listed:?}");
    assert!(!listed.contains(&b"file".to_vec()));
    assert!(
        listed[2..]
            .iter()
            .any(|n| fs.lookup(sub.ino, n, &c).unwrap().ino == f)
    );
    assert_eq!(fs.getattr(f).unwrap().size, body.len() as u64);
    // Re-adding the key restores access, including what was written during removal.
    fs.add_key(&KEY, &c).unwrap();
    let mut want = body.clone();
    want[10..32].copy_from_slice(b"written while removing");
    assert_eq!(read_all(&fs, f, &c).unwrap(), want);
    fs.unmount().unwrap();
    assert!(!device_has(&dev, b"MARKER-cowcrypt-plaintext-"));
    assert!(!device_has(&dev, b"written while removing"));

    // After a remount (keys are in memory only) the data is locked until the key comes back.
    let fs = Filesystem::open_device(dev, &opts()).unwrap();
    assert_eq!(errno(read_all(&fs, f, &c)), libc::ENOKEY);
    fs.add_key(&KEY, &c).unwrap();
    assert_eq!(read_all(&fs, f, &c).unwrap(), want);
    assert_clean(&fs);
}

#[test]
fn a_plaintext_snapshot_turned_encrypted_mixes_old_and_new_extents() {
    let (dev, fs) = new_fs();
    let c = root();
    let base = fs.subvolume_create(ROOT_INO, b"base", 0o755, &c).unwrap();
    let image = pattern(256 * 1024, 5);
    let f = put(&fs, base.ino, b"image", &image, &c);
    let snap = fs
        .subvolume_snapshot(base.ino, ROOT_INO, b"container", false, &c)
        .unwrap();
    let id = fs.add_key(&KEY, &c).unwrap();
    // A subvolume root may be turned encrypted although it is not empty.
    fs.set_policy(snap.ino, &policy(&id), &c).unwrap();
    let before = fs.plaintext_bytes(snap.ino).unwrap();
    assert_eq!(before, 256 * 1024);
    let sf = fs.lookup(snap.ino, b"image", &c).unwrap();
    let secret = marked(8192);
    let h = fs.open(sf.ino, rw(), &c).unwrap();
    fs.write(sf.ino, h, 65536, &secret, &c).unwrap();
    fs.release(sf.ino, h).unwrap();
    let newf = put(&fs, snap.ino, b"new", &marked(20_000), &c);
    fs.sync().unwrap();
    // Reads mix plaintext and encrypted extents without the reader noticing.
    let mut want = image.clone();
    want[65536..65536 + 8192].copy_from_slice(&secret);
    assert_eq!(read_all(&fs, sf.ino, &c).unwrap(), want);
    assert_eq!(read_all(&fs, newf, &c).unwrap(), marked(20_000));
    assert_eq!(
        read_all(&fs, f, &c).unwrap(),
        image,
        "the base is untouched"
    );
    assert_eq!(fs.plaintext_bytes(snap.ino).unwrap(), before - 8192);
    // The old extents are still shared with the base.
    let du = fs.disk_usage(sf.ino).unwrap();
    assert!(du.shared >= 256 * 1024 - 8192, "{du:?}");
    assert!(!device_has(&dev, b"MARKER-cowcrypt-plaintext-"));
    // Without the key: plaintext parts of the file are still locked behind the open (ENOKEY).
    fs.remove_key(&id, true, &c).unwrap();
    assert_eq!(errno(read_all(&fs, sf.ino, &c)), libc::ENOKEY);
    assert_eq!(read_all(&fs, f, &c).unwrap(), image);
    // Keyless maintenance: balance and scrub work, and the data reads back with the key.
    fs.balance(100, &mut |_, _| {}).unwrap();
    assert!(fs.scrub(&mut |_, _| {}).unwrap().is_clean());
    fs.add_key(&KEY, &c).unwrap();
    assert_eq!(read_all(&fs, sf.ino, &c).unwrap(), want);
    assert_clean(&fs);
}

/// A subvolume nested inside an encrypted container, encrypted with another key: reflinks
/// between them are refused (EXDEV), and deleting it frees its space.
#[test]
fn nested_subvolume_with_another_key() {
    let (_dev, fs) = new_fs();
    let c = root();
    let outer_key = fs.add_key(&KEY, &c).unwrap();
    let inner_key = fs.add_key(&OTHER_KEY, &c).unwrap();
    let container = fs
        .subvolume_create(ROOT_INO, b"container", 0o755, &c)
        .unwrap();
    fs.set_policy(container.ino, &policy(&outer_key), &c)
        .unwrap();
    let nested = fs
        .subvolume_create(container.ino, b"nested", 0o755, &c)
        .unwrap();
    fs.set_policy(nested.ino, &policy(&inner_key), &c).unwrap();
    let a = put(&fs, container.ino, b"a", &marked(64 * 1024), &c);
    let b = put(&fs, nested.ino, b"b", &marked(64 * 1024), &c);
    let (bb, bh) = fs.create(nested.ino, b"copy", 0o644, rw(), &c).unwrap();
    let ah = fs.open(a, OpenFlags(libc::O_RDONLY), &c).unwrap();
    assert_eq!(
        errno(fs.copy_file_range(a, ah, 0, bb.ino, bh, 0, 65536, &c)),
        libc::EXDEV
    );
    fs.release(a, ah).unwrap();
    fs.release(bb.ino, bh).unwrap();
    assert_eq!(read_all(&fs, b, &c).unwrap(), marked(64 * 1024));
    fs.sync().unwrap();
    let before = fs.space().unwrap().data_used;
    fs.subvolume_delete(container.ino, b"nested", &c).unwrap();
    fs.finish_subvolume_deletions().unwrap();
    assert!(
        fs.space().unwrap().data_used < before,
        "deleting it freed its space"
    );
    assert_clean(&fs);
}

/// One flush of many scattered blocks and a long run in an encrypted file (its extents split
/// between two threads, each block encrypted where it lies and written with vectored writes)
/// reads back exactly, before and after a remount, and no block reaches the device in clear.
#[test]
fn a_flush_of_scattered_and_sequential_encrypted_blocks_reads_back() {
    let (dev, fs) = new_fs();
    let c = root();
    let (_, d) = encrypted_dir(&fs, b"d", &c);
    let (f, h) = fs.create(d.ino, b"f", 0o644, rw(), &c).unwrap();
    let mut want = vec![0u8; 8 << 20];
    // 300 blocks three apart, each its own extent, marked with its number; then 2 MiB in one
    // run, and a partial block inside an earlier one.
    for i in 0..300u64 {
        let mut block = marked(4096);
        block[..8].copy_from_slice(&i.to_le_bytes());
        let at = (i * 3 * 4096) as usize;
        fs.write(f.ino, h, at as u64, &block, &c).unwrap();
        want[at..at + 4096].copy_from_slice(&block);
    }
    let run = pattern(2 << 20, 9);
    let at = 6 << 20;
    fs.write(f.ino, h, at as u64, &run, &c).unwrap();
    want[at..at + run.len()].copy_from_slice(&run);
    fs.write(f.ino, h, 4096 * 30 + 100, b"inside", &c).unwrap();
    want[4096 * 30 + 100..4096 * 30 + 106].copy_from_slice(b"inside");
    fs.release(f.ino, h).unwrap();
    fs.sync().unwrap();
    assert_eq!(read_all(&fs, f.ino, &c).unwrap(), want);
    unmount_then_read_back(fs, dev, f.ino, &want);
}

/// Write-behind in an encrypted file: with a buffer of a few blocks and a flush thread that
/// takes its time, writes in unaligned pieces keep meeting their own data in flight (the block
/// a piece completes, the room it needs), and a read, a key removal and a close wait for the
/// landing. Every byte reads back, before and after a remount, and none reaches the device in
/// clear.
#[test]
fn encrypted_writes_meet_their_flights() {
    let dev = new_dev(64 * MIB);
    let fs = Filesystem::open_device(dev.clone(), &write_behind_opts(8, 1)).unwrap();
    let c = root();
    let (id, d) = encrypted_dir(&fs, b"d", &c);
    let (f, h) = fs.create(d.ino, b"f", 0o644, rw(), &c).unwrap();
    let mut want = marked(1 << 20);
    for (i, piece) in want.chunks(5001).enumerate() {
        fs.write(f.ino, h, (i * 5001) as u64, piece, &c).unwrap();
    }
    // Rewrites over what may still be in the air, some inside one block.
    for i in 0..200usize {
        let at = (i * 7919 * 13) % (want.len() - 700);
        let piece = pattern(1 + (i * 31) % 700, i as u8);
        fs.write(f.ino, h, at as u64, &piece, &c).unwrap();
        want[at..at + piece.len()].copy_from_slice(&piece);
    }
    assert_eq!(read_all(&fs, f.ino, &c).unwrap(), want);
    // The open file keeps the key busy; closing it (after its last flight) ends the removal.
    let r = fs.remove_key(&id, false, &c).unwrap();
    assert!(r.files_busy, "{r:?}");
    fs.release(f.ino, h).unwrap();
    assert_eq!(fs.key_status(&id, &c).state, KeyPresence::Absent);
    let stats = fs.keyring_stats();
    assert_eq!((stats.pins, stats.derived_live), (0, 0), "{stats:?}");
    unmount_then_read_back(fs, dev, f.ino, &want);
}

/// 100,000 encrypted extents: no (key, nonce) pair repeats.
#[test]
fn a_hundred_thousand_extents_never_repeat_a_nonce() {
    let dev = new_dev(1024 * MIB);
    let fs = Filesystem::open_device(dev, &opts()).unwrap();
    let c = root();
    let (_, d) = encrypted_dir(&fs, b"d", &c);
    let (f, h) = fs.create(d.ino, b"f", 0o644, rw(), &c).unwrap();
    // Every other block: each written block becomes an extent of its own.
    let block = vec![0x11u8; 4096];
    for i in 0..100_000u64 {
        fs.write(f.ino, h, i * 8192, &block, &c).unwrap();
    }
    fs.release(f.ino, h).unwrap();
    fs.sync().unwrap();
    let ins = fs.inspect().unwrap();
    let contexts: Vec<&String> = ins.subvolumes[0]
        .inodes
        .iter()
        .flat_map(|i| i.extents.iter())
        .filter_map(|e| e.crypt_context.as_ref())
        .collect();
    assert!(contexts.len() >= 100_000, "{} extents", contexts.len());
    // The context holds the key identifier and the nonce: equal contexts would be a repeat.
    let unique: BTreeSet<&&String> = contexts.iter().collect();
    assert_eq!(unique.len(), contexts.len());
}

/// Symlink targets in an encrypted directory are stored encrypted (Linux's blob); readlink gives
/// the target with the key and the no-key form of its ciphertext without it.
#[test]
fn symlink_targets_are_encrypted() {
    let (dev, fs) = new_fs();
    let c = root();
    let (id, d) = encrypted_dir(&fs, b"d", &c);
    let target = b"../LINK-TARGET-MARKER/somewhere/deep";
    let l = fs.symlink(d.ino, b"link", target, &c).unwrap();
    assert_eq!(fs.readlink(l.ino).unwrap(), target);
    let plain = fs.symlink(ROOT_INO, b"plain", b"plain-target", &c).unwrap();
    assert_eq!(fs.readlink(plain.ino).unwrap(), b"plain-target");
    // Too long once padded: refused, nothing made.
    let long = vec![b'x'; 4094];
    assert_eq!(
        errno(fs.symlink(d.ino, b"long", &long, &c)),
        libc::ENAMETOOLONG
    );
    fs.sync().unwrap();
    assert!(!device_has(&dev, b"LINK-TARGET-MARKER"));
    assert_clean(&fs);
    fs.remove_key(&id, true, &c).unwrap();
    let nokey = fs.readlink(l.ino).unwrap();
    assert_ne!(nokey, target);
    assert!(
        !nokey.is_empty() && nokey.iter().all(|b| b.is_ascii_graphic()),
        "{nokey:?}"
    );
    fs.add_key(&KEY, &c).unwrap();
    assert_eq!(fs.readlink(l.ino).unwrap(), target);
    assert_clean(&fs);
}

/// Names in an encrypted directory are stored encrypted; without the key readdir shows no-key
/// names, and lookup, stat, unlink and rmdir by them work, while creating a name is ENOKEY.
#[test]
fn names_are_encrypted_and_reachable_by_no_key_names() {
    let (dev, fs) = new_fs();
    let c = root();
    let (id, d) = encrypted_dir(&fs, b"d", &c);
    let long: Vec<u8> = b"NAME-MARKER-".iter().cycle().take(200).copied().collect();
    put(&fs, d.ino, b"NAME-MARKER-short", b"one", &c);
    put(&fs, d.ino, &long, b"two", &c);
    let sub = fs.mkdir(d.ino, b"NAME-MARKER-dir", 0o755, &c).unwrap();
    put(&fs, sub.ino, b"NAME-MARKER-inner", b"three", &c);
    fs.mkdir(d.ino, b"NAME-MARKER-empty", 0o755, &c).unwrap();
    let mut want: Vec<Vec<u8>> = vec![
        b".".to_vec(),
        b"..".to_vec(),
        b"NAME-MARKER-short".to_vec(),
        long.clone(),
        b"NAME-MARKER-dir".to_vec(),
        b"NAME-MARKER-empty".to_vec(),
    ];
    let mut got = names(&fs, d.ino);
    want.sort();
    got.sort();
    assert_eq!(got, want);
    assert_eq!(names(&fs, sub.ino)[2], b"NAME-MARKER-inner");
    // Renames inside the directory keep working with the key.
    fs.rename(
        d.ino,
        b"NAME-MARKER-short",
        d.ino,
        b"NAME-MARKER-renamed",
        RenameFlags::default(),
        &c,
    )
    .unwrap();
    fs.sync().unwrap();
    assert!(
        !device_has(&dev, b"NAME-MARKER-"),
        "a name in clear on the device"
    );
    assert_clean(&fs);

    fs.remove_key(&id, true, &c).unwrap();
    let nokey: Vec<Vec<u8>> = names(&fs, d.ino)
        .into_iter()
        .filter(|n| n != b"." && n != b"..")
        .collect();
    assert_eq!(nokey.len(), 4);
    assert!(
        nokey.iter().all(|n| !n.windows(5).any(|w| w == b"NAME-")),
        "{nokey:?}"
    );
    // Each no-key name looks up (stat works), including the abbreviated one of the long name.
    for n in &nokey {
        fs.lookup(d.ino, n, &c)
            .unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(n)));
    }
    assert_eq!(
        errno(fs.create(d.ino, b"new", 0o644, rw(), &c)),
        libc::ENOKEY
    );
    assert_eq!(
        errno(fs.lookup(d.ino, b"NAME-MARKER-renamed", &c)),
        libc::ENOENT
    );
    // unlink and rmdir by no-key name.
    let files: Vec<&Vec<u8>> = nokey
        .iter()
        .filter(|n| fs.lookup(d.ino, n, &c).unwrap().kind == cowfs::FileKind::File)
        .collect();
    for n in &files {
        fs.unlink(d.ino, n, &c).unwrap();
    }
    let empty = nokey
        .iter()
        .find(|n| {
            // (the files were unlinked above)
            fs.lookup(d.ino, n, &c)
                .is_ok_and(|a| a.kind == cowfs::FileKind::Dir && names(&fs, a.ino).len() == 2)
        })
        .unwrap();
    fs.rmdir(d.ino, empty, &c).unwrap();
    fs.add_key(&KEY, &c).unwrap();
    assert_eq!(
        names(&fs, d.ino),
        vec![b".".to_vec(), b"..".to_vec(), b"NAME-MARKER-dir".to_vec()]
    );
    assert_clean(&fs);
}

#[test]
fn a_closed_file_keeps_its_buffered_data_and_pin_until_a_flush_or_key_removal() {
    let (dev, fs) = new_fs();
    let c = root();
    let (id, d) = encrypted_dir(&fs, b"secret", &c);
    let body = marked(10_000);
    // Closing does not write: the data waits for the next commit, with the key pinned for it.
    let f = put(&fs, d.ino, b"small", &body, &c);
    assert_eq!(fs.keyring_stats().pins, 1, "{:?}", fs.keyring_stats());
    assert_eq!(read_all(&fs, f, &c).unwrap(), body);
    fs.sync().unwrap();
    assert_eq!(fs.keyring_stats().pins, 0, "the flush drops the pin");
    assert!(!device_has(&dev, b"MARKER-cowcrypt-plaintext-"));
    // Key removal writes closed files' data first, so they do not keep the key busy.
    let g = put(&fs, d.ino, b"other", &body, &c);
    assert_eq!(fs.keyring_stats().pins, 1);
    let r = fs.remove_key(&id, false, &c).unwrap();
    assert!(!r.files_busy && !r.other_users, "{r:?}");
    assert_eq!(fs.key_status(&id, &c).state, KeyPresence::Absent);
    let stats = fs.keyring_stats();
    assert_eq!(
        (stats.keys, stats.pins, stats.derived_live),
        (0, 0, 0),
        "{stats:?}"
    );
    assert!(!device_has(&dev, b"MARKER-cowcrypt-plaintext-"));
    // A file closed while its key is being removed is written at that close, which ends the
    // removal.
    fs.add_key(&KEY, &c).unwrap();
    let h = fs.open(g, rw(), &c).unwrap();
    let r = fs.remove_key(&id, false, &c).unwrap();
    assert!(r.files_busy, "{r:?}");
    fs.write(g, h, 0, b"MARKER-cowcrypt-plaintext-", &c)
        .unwrap();
    fs.release(g, h).unwrap();
    assert_eq!(fs.key_status(&id, &c).state, KeyPresence::Absent);
    assert_eq!(fs.keyring_stats().pins, 0);
    fs.add_key(&KEY, &c).unwrap();
    assert_eq!(read_all(&fs, f, &c).unwrap(), body);
    assert_eq!(read_all(&fs, g, &c).unwrap(), body);
    fs.unmount().unwrap();
    assert!(!device_has(&dev, b"MARKER-cowcrypt-plaintext-"));
}
