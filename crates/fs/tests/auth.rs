//! Authenticated encryption through the library: every data unit of an extent written under an
//! authenticated policy has a MAC, and tampering that the keyless checksums cannot see (the
//! attacker rewrites them too, since CRC-32C is no secret) is refused with EIO: a flipped bit,
//! two data units swapped inside an extent, two extents of the same key swapped between files,
//! and an older version of a block put back. The same tampering under an unauthenticated policy
//! goes unnoticed, as with Linux fscrypt. Scrub with the key finds every tampered unit; without
//! it, it counts what it could not check.

mod common;

use std::sync::Arc;

use common::*;
use cowfs::items::{self, ty};
use cowfs::{Caller, Filesystem, OpenFlags, ROOT_INO};
use fscrypt::KeyIdentifier;
use fscrypt::policy::{ContentsMode, FLAG_AUTHENTICATED, FilenamesMode, PolicyV2};
use store::{BlockDevice, Key, MemDevice, Store, tree_id};

const KEY: [u8; 64] = [0x61; 64];
const UNIT: usize = 4096;

fn policy(id: &KeyIdentifier, authenticated: bool) -> Vec<u8> {
    let flags = 0x02 | if authenticated { FLAG_AUTHENTICATED } else { 0 };
    PolicyV2::new(
        ContentsMode::Aes256Xts,
        FilenamesMode::Aes256Cts,
        flags,
        0,
        *id,
    )
    .unwrap()
    .encode()
    .to_vec()
}

fn body(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13) ^ seed)
        .collect()
}

fn read_file(fs: &Filesystem, ino: u64) -> cowfs::Result<Vec<u8>> {
    let c = Caller::root();
    let h = fs.open(ino, OpenFlags(libc::O_RDONLY), &c)?;
    let size = fs.getattr(ino)?.size;
    let r = fs.read(ino, h, 0, size as u32);
    fs.release(ino, h)?;
    r
}

/// The logical start of each extent of `ino`, in file order.
fn extents_of(fs: &Filesystem, ino: u64) -> Vec<(u64, Option<String>)> {
    let ins = fs.inspect().unwrap();
    let inode = ins.subvolumes[0]
        .inodes
        .iter()
        .find(|i| i.ino == ino)
        .unwrap();
    inode
        .extents
        .iter()
        .map(|e| (e.extent, e.crypt_context.clone()))
        .collect()
}

fn copy_of(dev: &Arc<dyn BlockDevice>) -> Arc<dyn BlockDevice> {
    let mut all = vec![0u8; dev.size() as usize];
    dev.read_at(&mut all, 0).unwrap();
    let copy = MemDevice::new(all.len());
    copy.write_at(&all, 0).unwrap();
    Arc::new(copy)
}

/// One data unit as an attacker with the raw image sees it: ciphertext, its checksum and its
/// MAC (absent for unauthenticated extents).
#[derive(Clone)]
struct RawUnit {
    bytes: Vec<u8>,
    crc: u32,
    mac: Option<Vec<u8>>,
}

fn csum_key(bytenr: u64, unit: usize) -> (Key, usize) {
    let per = items::CSUMS_PER_ITEM as usize;
    (
        Key::new(bytenr, ty::DATA_CSUM, ((unit / per) * per * UNIT) as u64),
        unit % per,
    )
}

fn mac_key(bytenr: u64, unit: usize) -> (Key, usize) {
    let per = items::MACS_PER_ITEM as usize;
    (
        Key::new(bytenr, ty::DATA_MAC, ((unit / per) * per * UNIT) as u64),
        unit % per,
    )
}

fn get_unit(store: &Store, bytenr: u64, unit: usize) -> RawUnit {
    let bytes = store
        .data_io()
        .unwrap()
        .read_raw(bytenr, (unit * UNIT) as u64, UNIT)
        .unwrap()
        .into_vec();
    let r = store.read();
    let (k, i) = csum_key(bytenr, unit);
    let crc = items::decode_csums(&k, &r.get(tree_id::CSUM_TREE, &k).unwrap().unwrap()).unwrap()[i];
    let (k, i) = mac_key(bytenr, unit);
    let mac = r
        .get(tree_id::CSUM_TREE, &k)
        .unwrap()
        .map(|v| items::decode_macs(&k, &v).unwrap()[i * 16..(i + 1) * 16].to_vec());
    RawUnit { bytes, crc, mac }
}

/// Writes `u` as data unit `unit` of the extent at `bytenr`: its bytes, its checksum and (when
/// given) its MAC, so the keyless checksums match what is now there.
fn put_unit(store: &Store, bytenr: u64, unit: usize, u: &RawUnit) {
    store
        .data_io()
        .unwrap()
        .write(bytenr, (unit * UNIT) as u64, &u.bytes, None)
        .unwrap();
    let mut t = store.begin().unwrap();
    let (k, i) = csum_key(bytenr, unit);
    let mut c = items::decode_csums(&k, &t.get(tree_id::CSUM_TREE, &k).unwrap().unwrap()).unwrap();
    c[i] = u.crc;
    t.insert(tree_id::CSUM_TREE, k, &items::encode_csums(&c))
        .unwrap();
    if let Some(mac) = &u.mac {
        let (k, i) = mac_key(bytenr, unit);
        let mut m =
            items::decode_macs(&k, &t.get(tree_id::CSUM_TREE, &k).unwrap().unwrap()).unwrap();
        m[i * 16..(i + 1) * 16].copy_from_slice(mac);
        t.insert(tree_id::CSUM_TREE, k, &items::encode_macs(&m))
            .unwrap();
    }
    t.commit().unwrap();
}

/// A filesystem with files `a` and `b` (16 KiB each, one extent each) in an authenticated
/// directory and `p` in an unauthenticated one, all under one key; returns the device after
/// unmounting, and the inode numbers.
struct Setup {
    dev: Arc<dyn BlockDevice>,
    a: u64,
    b: u64,
    p: u64,
}

fn setup() -> Setup {
    let (dev, fs) = new_fs();
    let c = root();
    let id = fs.add_key(&KEY, &c).unwrap();
    let auth = fs.mkdir(ROOT_INO, b"auth", 0o755, &c).unwrap();
    fs.set_policy(auth.ino, &policy(&id, true), &c).unwrap();
    let plain = fs.mkdir(ROOT_INO, b"plain", 0o755, &c).unwrap();
    fs.set_policy(plain.ino, &policy(&id, false), &c).unwrap();
    let a = put(&fs, auth.ino, b"a", &body(1, 4 * UNIT), &c);
    let b = put(&fs, auth.ino, b"b", &body(2, 4 * UNIT), &c);
    let p = put(&fs, plain.ino, b"p", &body(3, 4 * UNIT), &c);
    fs.sync().unwrap();
    // Authenticated extents carry a version-2 context; the others keep btrfs's version 1.
    let (_, ctx_a) = &extents_of(&fs, a)[0];
    assert!(ctx_a.as_ref().unwrap().starts_with("020101"));
    let (_, ctx_p) = &extents_of(&fs, p)[0];
    assert!(ctx_p.as_ref().unwrap().starts_with("0101"));
    assert!(fs.check().unwrap().faults.is_empty());
    fs.unmount().unwrap();
    Setup { dev, a, b, p }
}

fn mount(dev: &Arc<dyn BlockDevice>) -> Filesystem {
    let fs = Filesystem::open_device(dev.clone(), &opts()).unwrap();
    fs.add_key(&KEY, &root()).unwrap();
    fs
}

fn bytenr_of(dev: &Arc<dyn BlockDevice>, ino: u64) -> u64 {
    let fs = Filesystem::open_device(dev.clone(), &opts()).unwrap();
    let e = extents_of(&fs, ino);
    assert_eq!(e.len(), 1, "one extent");
    fs.unmount().unwrap();
    e[0].0
}

/// Reading `ino` fails with EIO; scrub with the key names it; scrub without the key is clean
/// (the checksums were fixed up) but says what it could not check.
fn assert_detected(dev: &Arc<dyn BlockDevice>, ino: u64, path: &str) {
    let fs = mount(dev);
    let e = read_file(&fs, ino).unwrap_err();
    assert_eq!(e.errno(), libc::EIO, "{e}");
    let r = fs.scrub(&mut |_, _| {}).unwrap();
    assert_eq!(
        r.bad_sectors, 0,
        "the checksums match: only the MAC can tell"
    );
    assert!(r.bad_macs > 0);
    assert!(!r.is_clean());
    assert!(
        r.bad
            .iter()
            .any(|b| b.reason == "mac" && b.files.iter().any(|f| f.path == path)),
        "{r:?}"
    );
    fs.unmount().unwrap();
    let fs = Filesystem::open_device(dev.clone(), &opts()).unwrap();
    let r = fs.scrub(&mut |_, _| {}).unwrap();
    assert!(r.is_clean(), "{r:?}");
    assert!(r.mac_extents_without_key > 0);
    assert_eq!(r.mac_extents, 0);
    fs.unmount().unwrap();
}

#[test]
fn untampered_data_reads_back_and_scrubs_clean_with_the_key() {
    let s = setup();
    let fs = mount(&s.dev);
    assert_eq!(read_file(&fs, s.a).unwrap(), body(1, 4 * UNIT));
    assert_eq!(read_file(&fs, s.b).unwrap(), body(2, 4 * UNIT));
    assert_eq!(read_file(&fs, s.p).unwrap(), body(3, 4 * UNIT));
    let r = fs.scrub(&mut |_, _| {}).unwrap();
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(r.mac_extents, 2);
    // A partial read in the middle of an extent checks only the units it reads.
    let h = fs.open(s.a, OpenFlags(libc::O_RDONLY), &root()).unwrap();
    assert_eq!(
        fs.read(s.a, h, UNIT as u64 + 100, 5000).unwrap(),
        &body(1, 4 * UNIT)[UNIT + 100..UNIT + 5100]
    );
    fs.release(s.a, h).unwrap();
    fs.unmount().unwrap();
}

#[test]
fn a_flipped_bit_is_detected_and_unauthenticated_data_is_not() {
    let s = setup();
    let (ea, ep) = (bytenr_of(&s.dev, s.a), bytenr_of(&s.dev, s.p));
    {
        let store = Store::open(s.dev.clone()).unwrap();
        for e in [ea, ep] {
            let mut u = get_unit(&store, e, 1);
            u.bytes[100] ^= 0x04;
            u.crc = store::checksum(&u.bytes);
            put_unit(&store, e, 1, &u);
        }
    }
    // Linux fscrypt's behaviour for the unauthenticated file: garbage, no error.
    let fs = mount(&s.dev);
    let got = read_file(&fs, s.p).unwrap();
    assert_ne!(got, body(3, 4 * UNIT));
    assert_eq!(&got[..UNIT], &body(3, 4 * UNIT)[..UNIT]);
    // The authenticated file refuses the damaged unit, and only it.
    let h = fs.open(s.a, OpenFlags(libc::O_RDONLY), &root()).unwrap();
    assert_eq!(fs.read(s.a, h, 0, UNIT as u32).unwrap(), body(1, UNIT));
    assert_eq!(
        fs.read(s.a, h, UNIT as u64, 10).unwrap_err().errno(),
        libc::EIO
    );
    fs.release(s.a, h).unwrap();
    fs.unmount().unwrap();
    assert_detected(&s.dev, s.a, "auth/a");
}

#[test]
fn two_data_units_swapped_inside_an_extent_are_detected() {
    let s = setup();
    let ea = bytenr_of(&s.dev, s.a);
    {
        let store = Store::open(s.dev.clone()).unwrap();
        let (u0, u2) = (get_unit(&store, ea, 0), get_unit(&store, ea, 2));
        put_unit(&store, ea, 0, &u2);
        put_unit(&store, ea, 2, &u0);
    }
    assert_detected(&s.dev, s.a, "auth/a");
}

#[test]
fn extents_of_the_same_key_swapped_between_files_are_detected() {
    let s = setup();
    let (ea, eb) = (bytenr_of(&s.dev, s.a), bytenr_of(&s.dev, s.b));
    {
        let store = Store::open(s.dev.clone()).unwrap();
        for unit in 0..4 {
            let (ua, ub) = (get_unit(&store, ea, unit), get_unit(&store, eb, unit));
            put_unit(&store, ea, unit, &ub);
            put_unit(&store, eb, unit, &ua);
        }
    }
    let copy = copy_of(&s.dev);
    assert_detected(&s.dev, s.a, "auth/a");
    assert_detected(&copy, s.b, "auth/b");
}

#[test]
fn an_older_version_of_a_block_put_back_is_detected() {
    let s = setup();
    let ea = bytenr_of(&s.dev, s.a);
    let old = {
        let store = Store::open(s.dev.clone()).unwrap();
        get_unit(&store, ea, 3)
    };
    // The file's last block is rewritten: a new extent with a new nonce.
    {
        let fs = mount(&s.dev);
        let h = fs.open(s.a, rw(), &root()).unwrap();
        fs.write(s.a, h, 3 * UNIT as u64, &body(9, UNIT), &root())
            .unwrap();
        fs.release(s.a, h).unwrap();
        fs.unmount().unwrap();
    }
    let fs = Filesystem::open_device(s.dev.clone(), &opts()).unwrap();
    let ex = extents_of(&fs, s.a);
    fs.unmount().unwrap();
    let new_extent = ex.last().unwrap().0;
    assert_ne!(new_extent, ea);
    {
        let store = Store::open(s.dev.clone()).unwrap();
        put_unit(&store, new_extent, 0, &old);
    }
    assert_detected(&s.dev, s.a, "auth/a");
}

/// The errno of a reflink (copy_file_range) of `len` bytes of `src` into a new file of `dir`.
fn reflink_errno(fs: &Filesystem, src: u64, dir: u64, len: u64) -> i32 {
    let c = root();
    let (dst, fh) = fs.create(dir, b"copy", 0o644, rw(), &c).unwrap();
    let sh = fs.open(src, OpenFlags(libc::O_RDONLY), &c).unwrap();
    let e = errno(fs.copy_file_range(src, sh, 0, dst.ino, fh, 0, len, &c));
    fs.release(dst.ino, fh).unwrap();
    fs.release(src, sh).unwrap();
    e
}

#[test]
fn authentication_is_part_of_the_modes() {
    let (_dev, fs) = new_fs();
    let c = root();
    let id = fs.add_key(&KEY, &c).unwrap();
    let auth = fs.mkdir(ROOT_INO, b"auth", 0o755, &c).unwrap();
    fs.set_policy(auth.ino, &policy(&id, true), &c).unwrap();
    let plain = fs.mkdir(ROOT_INO, b"plain", 0o755, &c).unwrap();
    fs.set_policy(plain.ino, &policy(&id, false), &c).unwrap();
    // Inherited.
    let sub = fs.mkdir(auth.ino, b"sub", 0o755, &c).unwrap();
    assert_eq!(fs.get_policy(sub.ino).unwrap(), policy(&id, true));
    // Same key, other modes: links, renames and reflinks between them are EXDEV.
    let a = put(&fs, sub.ino, b"a", &body(1, 2 * UNIT), &c);
    let p = put(&fs, plain.ino, b"p", &body(2, 2 * UNIT), &c);
    assert_eq!(errno(fs.link(a, plain.ino, b"a", &c)), libc::EXDEV);
    assert_eq!(
        reflink_errno(&fs, a, plain.ino, 2 * UNIT as u64),
        libc::EXDEV
    );
    assert_eq!(reflink_errno(&fs, p, sub.ino, 2 * UNIT as u64), libc::EXDEV);
    // Data units smaller than a block cannot be authenticated.
    let small = fs.mkdir(ROOT_INO, b"small", 0o755, &c).unwrap();
    let sub_block = PolicyV2::new(
        ContentsMode::Aes256Xts,
        FilenamesMode::Aes256Cts,
        0x02 | FLAG_AUTHENTICATED,
        9,
        id,
    )
    .unwrap()
    .encode();
    assert_eq!(
        errno(fs.set_policy(small.ino, &sub_block, &c)),
        libc::EINVAL
    );
}

#[test]
fn balance_moves_macs_without_the_key() {
    let dev = new_dev(256 * MIB);
    let c = root();
    let mut kept = Vec::new();
    {
        let fs = Filesystem::open_device(dev.clone(), &opts()).unwrap();
        let id = fs.add_key(&KEY, &c).unwrap();
        let d = fs.mkdir(ROOT_INO, b"auth", 0o755, &c).unwrap();
        fs.set_policy(d.ino, &policy(&id, true), &c).unwrap();
        for i in 0..16u8 {
            let ino = put(
                &fs,
                d.ino,
                format!("f{i}").as_bytes(),
                &body(i, 6 * MIB),
                &c,
            );
            fs.sync().unwrap();
            if i % 2 == 1 {
                kept.push((ino, i));
            }
        }
        for i in (0..16u8).step_by(2) {
            fs.unlink(d.ino, format!("f{i}").as_bytes(), &c).unwrap();
        }
        fs.unmount().unwrap();
    }
    // No key: the ciphertext, its checksums and its MACs move as they are.
    let fs = Filesystem::open_device(dev.clone(), &opts()).unwrap();
    let r = fs.balance(100, &mut |_, _| {}).unwrap();
    assert!(r.extents_moved > 0, "{r:?}");
    assert!(fs.check().unwrap().faults.is_empty());
    fs.unmount().unwrap();
    let fs = mount(&dev);
    for (ino, i) in kept {
        assert!(read_file(&fs, ino).unwrap() == body(i, 6 * MIB));
    }
    let r = fs.scrub(&mut |_, _| {}).unwrap();
    assert!(r.is_clean(), "{r:?}");
    assert!(r.mac_extents >= 8);
    fs.unmount().unwrap();
}
