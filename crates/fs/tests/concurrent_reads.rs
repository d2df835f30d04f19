//! Reads are planned under the filesystem lock and done outside it. Readers racing with
//! writers that overwrite whole files, flush and commit (freeing the extents being read) must
//! still see one whole version each time, never a mix or garbage, and never need the locked
//! retry (the read view keeps freed extents pinned until the read is done; the store's own
//! tests show a live reader keeps freed space out of allocation). Plain and encrypted
//! (authenticated) files alike.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use cowfs::{Filesystem, OpenFlags, ROOT_INO};
use fscrypt::policy::{ContentsMode, FLAG_AUTHENTICATED, FilenamesMode, PolicyV2};

const LEN: usize = 512 * 1024;

fn version_of(data: &[u8]) -> Option<u8> {
    let v = *data.first()?;
    (data == pattern(LEN, v).as_slice()).then_some(v)
}

#[test]
fn readers_racing_overwrites_and_commits_see_whole_versions() {
    // A small device, so that freed space is soon allocated again.
    let dev = new_dev(16 * MIB);
    let fs = Arc::new(Filesystem::open_device(dev, &opts()).unwrap());
    let c = root();
    let id = fs.add_key(&[0x77; 64], &c).unwrap();
    let enc = fs.mkdir(ROOT_INO, b"enc", 0o755, &c).unwrap();
    let policy = PolicyV2::new(
        ContentsMode::Aes256Xts,
        FilenamesMode::Aes256Cts,
        0x02 | FLAG_AUTHENTICATED,
        0,
        id,
    )
    .unwrap()
    .encode();
    fs.set_policy(enc.ino, &policy, &c).unwrap();
    let files = [
        put(&fs, ROOT_INO, b"plain", &pattern(LEN, 0), &c),
        put(&fs, enc.ino, b"secret", &pattern(LEN, 0), &c),
    ];
    fs.sync().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|r| {
            let (fs, stop) = (fs.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) || reads < 50 {
                    let ino = files[(reads as usize + r) % 2];
                    let fh = fs.open(ino, OpenFlags(libc::O_RDONLY), &root()).unwrap();
                    let got = fs.read(ino, fh, 0, LEN as u32).unwrap();
                    fs.release(ino, fh).unwrap();
                    assert!(
                        version_of(&got).is_some(),
                        "reader {r}: read {reads} is no whole version"
                    );
                    // A read in the middle, unaligned, agrees with some version too.
                    let fh = fs.open(ino, OpenFlags(libc::O_RDONLY), &root()).unwrap();
                    let part = fs.read(ino, fh, 4097, 200_000).unwrap();
                    fs.release(ino, fh).unwrap();
                    let v = part[0].wrapping_sub((4097 * 31 % 256) as u8);
                    assert_eq!(part, &pattern(LEN, v)[4097..204_097], "reader {r}");
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    for v in 1..=200u8 {
        for &ino in &files {
            let fh = fs.open(ino, rw(), &c).unwrap();
            fs.write(ino, fh, 0, &pattern(LEN, v), &c).unwrap();
            if v % 3 == 0 {
                // Flushed and committed: the old extents are freed while readers read them.
                fs.fsync(ino, fh, false).unwrap();
            }
            fs.release(ino, fh).unwrap();
        }
        if v % 7 == 0 {
            fs.sync().unwrap();
        }
    }
    stop.store(true, Ordering::Relaxed);
    let total: u64 = readers.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(total >= 150);
    assert_eq!(
        fs.read_retries(),
        0,
        "a read outside the lock met reused space"
    );
    for &ino in &files {
        assert_eq!(version_of(&content(&fs, ino)), Some(200));
    }
    assert!(fs.check().unwrap().faults.is_empty());
}
