//! Model-based test: random operations on the filesystem and on an in-memory model of it, with
//! remounts in between; every result (success or errno) and the final tree must agree, and the
//! filesystem must check clean after every remount.

mod common;

use std::collections::BTreeMap;

use common::*;
use cowfs::{FallocMode, FileKind, Filesystem, OpenFlags, ROOT_INO, RenameFlags, SetAttr};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Create(u8),
    Mkdir(u8),
    Write(u8, u32, u16, u8),
    Truncate(u8, u32),
    Punch(u8, u32, u16),
    Unlink(u8),
    Rmdir(u8),
    Link(u8, u8),
    Rename(u8, u8, u8),
    Remount,
    Sync,
}

fn op() -> impl Strategy<Value = Op> {
    let n = 0u8..6;
    prop_oneof![
        3 => n.clone().prop_map(Op::Create),
        1 => n.clone().prop_map(Op::Mkdir),
        5 => (n.clone(), 0u32..70_000, 1u16..20_000, any::<u8>()).prop_map(|(a, b, c, d)| Op::Write(a, b, c, d)),
        1 => (n.clone(), 0u32..80_000).prop_map(|(a, b)| Op::Truncate(a, b)),
        1 => (n.clone(), 0u32..70_000, 1u16..20_000).prop_map(|(a, b, c)| Op::Punch(a, b, c)),
        2 => n.clone().prop_map(Op::Unlink),
        1 => n.clone().prop_map(Op::Rmdir),
        1 => (n.clone(), n.clone()).prop_map(|(a, b)| Op::Link(a, b)),
        2 => (n.clone(), n.clone(), 0u8..3).prop_map(|(a, b, f)| Op::Rename(a, b, f)),
        1 => Just(Op::Remount),
        1 => Just(Op::Sync),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    File(u32),
    Dir,
}

#[derive(Default)]
struct Model {
    names: BTreeMap<Vec<u8>, Entry>,
    files: BTreeMap<u32, Vec<u8>>,
    next: u32,
}

fn name(i: u8) -> Vec<u8> {
    format!("n{i}").into_bytes()
}

fn res<T>(r: cowfs::Result<T>) -> Result<(), i32> {
    r.map(drop).map_err(|e| e.errno())
}

fn apply(fs: &Filesystem, m: &mut Model, op: &Op) -> (Result<(), i32>, Result<(), i32>) {
    let c = root();
    match *op {
        Op::Create(a) => {
            let want = if m.names.contains_key(&name(a)) {
                Err(libc::EEXIST)
            } else {
                m.next += 1;
                m.names.insert(name(a), Entry::File(m.next));
                m.files.insert(m.next, Vec::new());
                Ok(())
            };
            let flags = OpenFlags(libc::O_RDWR | libc::O_CREAT | libc::O_EXCL);
            let got = fs
                .create(ROOT_INO, &name(a), 0o644, flags, &c)
                .map(|(a, fh)| {
                    fs.release(a.ino, fh).unwrap();
                });
            (want, res(got))
        }
        Op::Mkdir(a) => {
            let want = match m.names.entry(name(a)) {
                std::collections::btree_map::Entry::Occupied(_) => Err(libc::EEXIST),
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(Entry::Dir);
                    Ok(())
                }
            };
            (want, res(fs.mkdir(ROOT_INO, &name(a), 0o755, &c)))
        }
        Op::Write(a, off, len, _) | Op::Punch(a, off, len) => {
            let Some(Entry::File(id)) = m.names.get(&name(a)).copied() else {
                return (Ok(()), Ok(()));
            };
            let ino = fs.lookup(ROOT_INO, &name(a), &c).unwrap().ino;
            let fh = fs.open(ino, OpenFlags(libc::O_RDWR), &c).unwrap();
            let (off, len) = (off as usize, len as usize);
            let f = m.files.get_mut(&id).unwrap();
            let got = if let Op::Write(.., seed) = *op {
                let data = pattern(len, seed);
                if f.len() < off + len {
                    f.resize(off + len, 0);
                }
                f[off..off + len].copy_from_slice(&data);
                // In pieces through one handle, each ending inside a block: with write-behind,
                // the next piece often finds the block it completes in flight.
                let mut r = Ok(());
                for (i, piece) in data.chunks(5001).enumerate() {
                    r = res(fs.write(ino, fh, (off + i * 5001) as u64, piece, &c));
                    if r.is_err() {
                        break;
                    }
                }
                r
            } else {
                let end = (off + len).min(f.len());
                if off < end {
                    f[off..end].fill(0);
                }
                let mode = FallocMode {
                    punch_hole: true,
                    keep_size: true,
                    zero_range: false,
                };
                res(fs.fallocate(ino, fh, off as u64, len as u64, mode, &c))
            };
            fs.release(ino, fh).unwrap();
            (Ok(()), got)
        }
        Op::Truncate(a, size) => {
            let Some(Entry::File(id)) = m.names.get(&name(a)).copied() else {
                return (Ok(()), Ok(()));
            };
            m.files.get_mut(&id).unwrap().resize(size as usize, 0);
            let ino = fs.lookup(ROOT_INO, &name(a), &c).unwrap().ino;
            let set = SetAttr {
                size: Some(u64::from(size)),
                ..SetAttr::default()
            };
            (Ok(()), res(fs.setattr(ino, &set, None, &c)))
        }
        Op::Unlink(a) => {
            let want = match m.names.get(&name(a)).copied() {
                None => Err(libc::ENOENT),
                Some(Entry::Dir) => Err(libc::EISDIR),
                Some(Entry::File(_)) => {
                    m.names.remove(&name(a));
                    Ok(())
                }
            };
            (want, res(fs.unlink(ROOT_INO, &name(a), &c)))
        }
        Op::Rmdir(a) => {
            let want = match m.names.get(&name(a)).copied() {
                None => Err(libc::ENOENT),
                Some(Entry::File(_)) => Err(libc::ENOTDIR),
                Some(Entry::Dir) => {
                    m.names.remove(&name(a));
                    Ok(())
                }
            };
            (want, res(fs.rmdir(ROOT_INO, &name(a), &c)))
        }
        Op::Link(a, b) => {
            let want = match (
                m.names.get(&name(a)).copied(),
                m.names.contains_key(&name(b)),
            ) {
                (None, _) => Err(libc::ENOENT),
                (Some(Entry::Dir), _) => Err(libc::EPERM),
                (Some(_), true) => Err(libc::EEXIST),
                (Some(e), false) => {
                    m.names.insert(name(b), e);
                    Ok(())
                }
            };
            let got = match fs.lookup(ROOT_INO, &name(a), &c) {
                Ok(at) => res(fs.link(at.ino, ROOT_INO, &name(b), &c)),
                Err(e) => Err(e.errno()),
            };
            (want, got)
        }
        Op::Rename(a, b, f) => {
            let flags = RenameFlags {
                noreplace: f == 1,
                exchange: f == 2,
            };
            let src = m.names.get(&name(a)).copied();
            let dst = m.names.get(&name(b)).copied();
            let want = match (src, dst) {
                (None, _) => Err(libc::ENOENT),
                (Some(_), None) if flags.exchange => Err(libc::ENOENT),
                (Some(_), Some(_)) if flags.noreplace => Err(libc::EEXIST),
                (Some(s), Some(d)) if a == b || (s == d && s != Entry::Dir) => Ok(()),
                (Some(s), Some(d)) if flags.exchange => {
                    m.names.insert(name(a), d);
                    m.names.insert(name(b), s);
                    Ok(())
                }
                (Some(Entry::Dir), Some(Entry::File(_))) => Err(libc::ENOTDIR),
                (Some(Entry::File(_)), Some(Entry::Dir)) => Err(libc::EISDIR),
                (Some(s), _) => {
                    m.names.remove(&name(a));
                    m.names.insert(name(b), s);
                    Ok(())
                }
            };
            (
                want,
                res(fs.rename(ROOT_INO, &name(a), ROOT_INO, &name(b), flags, &c)),
            )
        }
        Op::Remount | Op::Sync => (Ok(()), Ok(())),
    }
}

fn compare(fs: &Filesystem, m: &Model) {
    let mut got: Vec<Vec<u8>> = names(fs, ROOT_INO);
    got.retain(|n| n != b"." && n != b"..");
    got.sort();
    let want: Vec<Vec<u8>> = m.names.keys().cloned().collect();
    assert_eq!(got, want);
    for (n, e) in &m.names {
        let a = fs.lookup(ROOT_INO, n, &root()).unwrap();
        match e {
            Entry::Dir => assert_eq!(a.kind, FileKind::Dir),
            Entry::File(id) => {
                assert_eq!(a.kind, FileKind::File);
                let links = m.names.values().filter(|x| *x == e).count() as u32;
                assert_eq!(a.nlink, links, "{}", String::from_utf8_lossy(n));
                assert!(
                    content(fs, a.ino) == m.files[id],
                    "content of {}",
                    String::from_utf8_lossy(n)
                );
            }
        }
    }
}

/// Runs `ops` on a new filesystem opened with `o` and on the model.
fn run(ops: &[Op], o: &cowfs::OpenOptions) -> Result<(), TestCaseError> {
    let dev = new_dev(64 * MIB);
    let mut fs = Filesystem::open_device(dev.clone(), o).unwrap();
    let mut m = Model::default();
    for op in ops {
        match op {
            Op::Remount => {
                fs.unmount().unwrap();
                fs = Filesystem::open_device(dev.clone(), o).unwrap();
                let r = fs.check().unwrap();
                prop_assert!(r.is_clean(), "{}", r);
                compare(&fs, &m);
            }
            Op::Sync => fs.sync().unwrap(),
            _ => {
                let (want, got) = apply(&fs, &mut m, op);
                prop_assert_eq!(want, got, "{:?}", op);
            }
        }
    }
    compare(&fs, &m);
    let r = fs.check().unwrap();
    prop_assert!(r.is_clean(), "{}", r);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn filesystem_matches_model(ops in proptest::collection::vec(op(), 1..80)) {
        run(&ops, &opts())?;
    }

    /// The same with a buffer of a few blocks: nearly every write sends a flight to the flush
    /// thread, and the next operations meet it in the air (partial blocks in flight, reads,
    /// truncates, punches and renames that wait for the landing).
    #[test]
    fn filesystem_matches_model_with_write_behind(ops in proptest::collection::vec(op(), 1..80)) {
        run(&ops, &write_behind_opts(4, 2))?;
    }
}
