//! copy_file_range as reflink through the library: ranges inside one file share extents,
//! Linux's errors for the edge cases (overlap, O_APPEND, handles of the wrong mode), ranges
//! past either end, and a random model of writes, truncates and copies over several files
//! that must always read back byte for byte and leave the filesystem checking clean.

mod common;

use common::*;
use cowfs::{Filesystem, Ino, OpenFlags, ROOT_INO, SetAttr};
use proptest::prelude::*;

const B: u64 = 4096;

fn ro() -> OpenFlags {
    OpenFlags(libc::O_RDONLY)
}

#[test]
fn ranges_inside_one_file_share_and_stay_independent() {
    let (_dev, fs) = new_fs();
    let c = root();
    let data = pattern(64 * B as usize, 5);
    let f = put(&fs, ROOT_INO, b"f", &data, &c);
    fs.sync().unwrap();
    let free = fs.statfs().unwrap().bfree;
    let fh = fs.open(f, rw(), &c).unwrap();
    // An unaligned range of the first half copied to the second half, same phase.
    let (off_in, off_out, len) = (B + 10, 33 * B + 10, 20 * B + 500);
    assert_eq!(
        fs.copy_file_range(f, fh, off_in, f, fh, off_out, len, &c)
            .unwrap(),
        len
    );
    fs.sync().unwrap();
    let used = free - fs.statfs().unwrap().bfree;
    assert!(used <= 3, "{used} blocks used: the middle is shared");
    let mut want = data.clone();
    want.copy_within(off_in as usize..(off_in + len) as usize, off_out as usize);
    assert_eq!(content(&fs, f), want);
    // Sharing inside one file is still exclusive to it: deleting the file frees it all.
    let du = fs.disk_usage(f).unwrap();
    assert_eq!((du.exclusive, du.shared), (du.total, 0), "{du:?}");

    // A write to the copy leaves the original range alone, and the other way round.
    fs.write(f, fh, off_out + 2 * B, b"copy side", &c).unwrap();
    fs.write(f, fh, off_in + 3 * B, b"origin side", &c).unwrap();
    let at = (off_out + 2 * B) as usize;
    want[at..at + 9].copy_from_slice(b"copy side");
    let at = (off_in + 3 * B) as usize;
    want[at..at + 11].copy_from_slice(b"origin side");
    assert_eq!(content(&fs, f), want);
    fs.release(f, fh).unwrap();
    assert_clean(&fs);
}

#[test]
fn edge_cases_answer_as_linux() {
    let (_dev, fs) = new_fs();
    let c = root();
    let data = pattern(10 * B as usize, 9);
    let src = put(&fs, ROOT_INO, b"src", &data, &c);
    let (dst, dh) = fs.create(ROOT_INO, b"dst", 0o644, rw(), &c).unwrap();
    let sh = fs.open(src, rw(), &c).unwrap();

    // Overlapping ranges inside one file: EINVAL.
    assert_eq!(
        errno(fs.copy_file_range(src, sh, 0, src, sh, B, 2 * B, &c)),
        libc::EINVAL
    );
    assert_eq!(
        errno(fs.copy_file_range(src, sh, 100, src, sh, 50, 100, &c)),
        libc::EINVAL
    );
    // The range is shortened to the source's end before the overlap check, as in Linux.
    assert_eq!(
        fs.copy_file_range(src, sh, 9 * B, src, sh, 10 * B, 4 * B, &c)
            .unwrap(),
        B
    );
    fs.setattr(
        src,
        &SetAttr {
            size: Some(10 * B),
            ..Default::default()
        },
        Some(sh),
        &c,
    )
    .unwrap();
    // An O_APPEND destination: EBADF.
    let ah = fs
        .open(dst.ino, OpenFlags(libc::O_WRONLY | libc::O_APPEND), &c)
        .unwrap();
    assert_eq!(
        errno(fs.copy_file_range(src, sh, 0, dst.ino, ah, 0, B, &c)),
        libc::EBADF
    );
    fs.release(dst.ino, ah).unwrap();
    // A read-only destination or a write-only source: EBADF.
    let rh = fs.open(dst.ino, ro(), &c).unwrap();
    assert_eq!(
        errno(fs.copy_file_range(src, sh, 0, dst.ino, rh, 0, B, &c)),
        libc::EBADF
    );
    fs.release(dst.ino, rh).unwrap();
    let wh = fs.open(src, OpenFlags(libc::O_WRONLY), &c).unwrap();
    assert_eq!(
        errno(fs.copy_file_range(src, wh, 0, dst.ino, dh, 0, B, &c)),
        libc::EBADF
    );
    fs.release(src, wh).unwrap();
    assert_eq!(fs.getattr(dst.ino).unwrap().size, 0, "no error changed dst");

    // Past the source's end: nothing copied, the destination keeps its size.
    assert_eq!(
        fs.copy_file_range(src, sh, 10 * B, dst.ino, dh, 0, B, &c)
            .unwrap(),
        0
    );
    assert_eq!(
        fs.copy_file_range(src, sh, 20 * B + 7, dst.ino, dh, 0, B, &c)
            .unwrap(),
        0
    );
    assert_eq!(fs.getattr(dst.ino).unwrap().size, 0);
    // A range running past the source's end copies up to it.
    assert_eq!(
        fs.copy_file_range(src, sh, 8 * B + 3, dst.ino, dh, 3, 5 * B, &c)
            .unwrap(),
        2 * B - 3
    );
    // Far beyond the destination's end: a hole in between reads as zeros.
    let far = 100 * B;
    assert_eq!(
        fs.copy_file_range(src, sh, 0, dst.ino, dh, far, 10 * B, &c)
            .unwrap(),
        10 * B
    );
    let got = content(&fs, dst.ino);
    assert_eq!(got.len() as u64, far + 10 * B);
    assert!(got[..3].iter().all(|&b| b == 0));
    assert_eq!(&got[3..2 * B as usize], &data[8 * B as usize + 3..]);
    assert!(got[2 * B as usize..far as usize].iter().all(|&b| b == 0));
    assert_eq!(&got[far as usize..], &data[..]);
    fs.release(src, sh).unwrap();
    fs.release(dst.ino, dh).unwrap();
    assert_clean(&fs);
}

#[derive(Debug, Clone)]
enum Op {
    Write {
        f: usize,
        off: u64,
        len: u64,
        seed: u8,
    },
    Truncate {
        f: usize,
        size: u64,
    },
    Copy {
        from: usize,
        to: usize,
        off_in: u64,
        off_out: u64,
        len: u64,
    },
    Sync,
}

fn op() -> impl Strategy<Value = Op> {
    // Offsets mostly in the same phase (those reflink), some not (those copy).
    let off = prop_oneof![
        (0u64..24).prop_map(|b| b * B),
        (0u64..24, 0u64..B).prop_map(|(b, r)| b * B + r),
        (0u64..24, 0u64..4).prop_map(|(b, r)| b * B + r * 1000 + 7),
    ];
    prop_oneof![
        3 => (0usize..3, off.clone(), 1u64..6 * B, any::<u8>())
            .prop_map(|(f, off, len, seed)| Op::Write { f, off, len, seed }),
        1 => (0usize..3, 0u64..30 * B).prop_map(|(f, size)| Op::Truncate { f, size }),
        4 => (0usize..3, 0usize..3, off.clone(), off, 1u64..12 * B).prop_map(
            |(from, to, off_in, off_out, len)| Op::Copy { from, to, off_in, off_out, len }
        ),
        1 => Just(Op::Sync),
    ]
}

fn run(ops: &[Op]) {
    let (_dev, fs) = new_fs();
    let c = root();
    let mut files: Vec<(Ino, u64)> = Vec::new();
    let mut model: Vec<Vec<u8>> = Vec::new();
    for i in 0..3u8 {
        let init = pattern((5 + 3 * i as usize) * B as usize + 77, i);
        let (a, fh) = fs
            .create(ROOT_INO, &[b'f', b'0' + i], 0o644, rw(), &c)
            .unwrap();
        fs.write(a.ino, fh, 0, &init, &c).unwrap();
        files.push((a.ino, fh));
        model.push(init);
    }
    for op in ops {
        match *op {
            Op::Write { f, off, len, seed } => {
                let d = pattern(len as usize, seed);
                fs.write(files[f].0, files[f].1, off, &d, &c).unwrap();
                let m = &mut model[f];
                let end = (off + len) as usize;
                if m.len() < end {
                    m.resize(end, 0);
                }
                m[off as usize..end].copy_from_slice(&d);
            }
            Op::Truncate { f, size } => {
                let set = SetAttr {
                    size: Some(size),
                    ..Default::default()
                };
                fs.setattr(files[f].0, &set, Some(files[f].1), &c).unwrap();
                model[f].resize(size as usize, 0);
            }
            Op::Copy {
                from,
                to,
                off_in,
                off_out,
                len,
            } => {
                let (si, sh) = files[from];
                let (di, dh) = files[to];
                let r = fs.copy_file_range(si, sh, off_in, di, dh, off_out, len, &c);
                let src_len = model[from].len() as u64;
                let want = len.min(src_len.saturating_sub(off_in));
                let overlap = off_in < off_out + want && off_out < off_in + want;
                if from == to && overlap {
                    assert_eq!(errno(r), libc::EINVAL);
                    continue;
                }
                let n = r.unwrap();
                assert_eq!(n, want, "{op:?}");
                if n > 0 {
                    let piece = model[from][off_in as usize..(off_in + n) as usize].to_vec();
                    let m = &mut model[to];
                    let end = (off_out + n) as usize;
                    if m.len() < end {
                        m.resize(end, 0);
                    }
                    m[off_out as usize..end].copy_from_slice(&piece);
                }
            }
            Op::Sync => fs.sync().unwrap(),
        }
    }
    for (i, &(ino, _)) in files.iter().enumerate() {
        assert_eq!(
            fs.getattr(ino).unwrap().size,
            model[i].len() as u64,
            "file {i}"
        );
        assert!(
            content(&fs, ino) == model[i],
            "file {i} differs from the model"
        );
    }
    for &(ino, fh) in &files {
        fs.release(ino, fh).unwrap();
    }
    check_usage(&fs, &files);
    assert_clean(&fs);
}

/// du's totals are the files' allocated bytes, and exclusive plus shared never exceeds them
/// by more than the partially referenced extents can explain.
fn check_usage(fs: &Filesystem, files: &[(Ino, u64)]) {
    let mut sum = 0;
    for &(ino, _) in files {
        let du = fs.disk_usage(ino).unwrap();
        assert_eq!(du.total, fs.getattr(ino).unwrap().blocks * 512);
        sum += du.total;
    }
    assert_eq!(fs.disk_usage(ROOT_INO).unwrap().total, sum);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn random_copies_match_a_model(ops in proptest::collection::vec(op(), 1..40)) {
        run(&ops);
    }
}

/// Reflinks across subvolumes share extents; a read-only snapshot can be a source but never a
/// destination (EROFS, nothing changed).
#[test]
fn reflinks_cross_subvolumes_and_respect_read_only_snapshots() {
    let (_dev, fs) = new_fs();
    let c = root();
    let sv = fs.subvolume_create(ROOT_INO, b"sv", 0o755, &c).unwrap();
    let data = pattern(32 * B as usize, 3);
    put(&fs, sv.ino, b"a", &data, &c);
    let snap = fs
        .subvolume_snapshot(sv.ino, ROOT_INO, b"ro", true, &c)
        .unwrap();
    let ra = fs.lookup(snap.ino, b"a", &c).unwrap().ino;
    let top = put(&fs, ROOT_INO, b"top", &pattern(8 * B as usize, 4), &c);
    fs.sync().unwrap();
    let free = fs.statfs().unwrap().bfree;

    // From the read-only snapshot into the top subvolume: shared, no new data.
    let (dst, dh) = fs.create(ROOT_INO, b"copy", 0o644, rw(), &c).unwrap();
    fs.release(dst.ino, dh).unwrap();
    assert_eq!(fs.reflink(ra, 0, dst.ino, 0, None, &c).unwrap(), 32 * B);
    fs.sync().unwrap();
    assert_eq!(fs.statfs().unwrap().bfree, free);
    assert_eq!(content(&fs, dst.ino), data);
    let du = fs.disk_usage(dst.ino).unwrap();
    assert_eq!(
        (du.exclusive, du.shared, du.set_shared),
        (0, 32 * B, 32 * B)
    );

    // Into the read-only snapshot: EROFS, nothing changed.
    assert_eq!(
        errno(fs.reflink(top, 0, ra, 0, Some(8 * B), &c)),
        libc::EROFS
    );
    assert_eq!(content(&fs, ra), data);
    assert_clean(&fs);
}
