//! Helpers shared by the fs integration tests.
#![allow(dead_code)]

use std::sync::Arc;

use cowfs::{Caller, Filesystem, Ino, MkfsOptions, OpenFlags, OpenOptions};
use store::{BlockDevice, MemDevice};

pub const MIB: usize = 1 << 20;

pub fn opts() -> OpenOptions {
    OpenOptions {
        commit_interval: std::time::Duration::from_secs(3600),
        ..OpenOptions::default()
    }
}

/// [`opts`] with a buffer of `blocks` 4 KiB blocks and every flight held back `delay_ms`: the
/// operations after a write meet its write-behind flight in the air.
pub fn write_behind_opts(blocks: u64, delay_ms: u64) -> OpenOptions {
    OpenOptions {
        max_dirty_bytes: blocks * 4096,
        flight_delay: std::time::Duration::from_millis(delay_ms),
        ..opts()
    }
}

pub fn new_dev(size: usize) -> Arc<dyn BlockDevice> {
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(size));
    Filesystem::mkfs(dev.clone(), &MkfsOptions::default()).unwrap();
    dev
}

pub fn new_fs() -> (Arc<dyn BlockDevice>, Filesystem) {
    let dev = new_dev(64 * MIB);
    let fs = Filesystem::open_device(dev.clone(), &opts()).unwrap();
    (dev, fs)
}

pub fn root() -> Caller {
    Caller::root()
}

pub fn user(uid: u32, gid: u32, groups: &[u32]) -> Caller {
    Caller {
        uid,
        gid,
        groups: groups.to_vec(),
        pid: 1,
        umask: 0,
    }
}

pub fn rw() -> OpenFlags {
    OpenFlags(libc::O_RDWR)
}

/// Creates `name` in `dir` with `data`, closes it, returns its inode.
pub fn put(fs: &Filesystem, dir: Ino, name: &[u8], data: &[u8], c: &Caller) -> Ino {
    let (a, fh) = fs.create(dir, name, 0o644, rw(), c).unwrap();
    if !data.is_empty() {
        assert_eq!(
            fs.write(a.ino, fh, 0, data, c).unwrap() as usize,
            data.len()
        );
    }
    fs.release(a.ino, fh).unwrap();
    a.ino
}

/// The whole content of `ino`.
pub fn content(fs: &Filesystem, ino: Ino) -> Vec<u8> {
    let fh = fs.open(ino, OpenFlags(libc::O_RDONLY), &root()).unwrap();
    let size = fs.getattr(ino).unwrap().size;
    let d = fs.read(ino, fh, 0, size as u32 + 10).unwrap();
    fs.release(ino, fh).unwrap();
    d
}

pub fn names(fs: &Filesystem, dir: Ino) -> Vec<Vec<u8>> {
    let fh = fs.opendir(dir, &root()).unwrap();
    let mut out = Vec::new();
    let mut cookie = 0;
    loop {
        let es = fs.readdir(dir, fh, cookie, 7).unwrap();
        if es.is_empty() {
            break;
        }
        cookie = es.last().unwrap().cookie;
        out.extend(es.into_iter().map(|e| e.name));
    }
    fs.releasedir(dir, fh).unwrap();
    out
}

pub fn assert_clean(fs: &Filesystem) {
    let r = fs.check().unwrap();
    assert!(r.is_clean(), "{r}");
}

pub fn errno<T: std::fmt::Debug>(r: cowfs::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.errno(),
    }
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}
