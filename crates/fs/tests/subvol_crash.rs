//! Crash safety of subvolume operations: create, snapshot, writes to origin and snapshot, a
//! reflink across subvolumes, delete (with the background release in several committed steps) run on a recording device.
//! Every image a crash could leave (prefixes, torn writes, reordered writes since the last
//! flush) must open, pass check(), show the state of the last sync that returned or of the one
//! in flight, and then finish any pending deletion with check() still clean.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::*;
use cowfs::{Filesystem, OpenFlags, ROOT_INO};
use store::crash::{CrashOptions, RecordingDevice, crash_images};
use store::{BlockDevice, MemDevice};

/// (subvolume name, file name) -> contents, for every subvolume linked in the root.
type Files = BTreeMap<(Vec<u8>, Vec<u8>), Vec<u8>>;

fn state(fs: &Filesystem) -> Files {
    let c = root();
    let mut out = Files::new();
    for sv in names(fs, ROOT_INO) {
        if sv == b"." || sv == b".." {
            continue;
        }
        let d = fs.lookup(ROOT_INO, &sv, &c).unwrap();
        for name in names(fs, d.ino) {
            if name == b"." || name == b".." {
                continue;
            }
            let a = fs.lookup(d.ino, &name, &c).unwrap();
            out.insert((sv.clone(), name), content(fs, a.ino));
        }
    }
    out
}

fn write(fs: &Filesystem, dir: u64, name: &[u8], at: u64, data: &[u8]) {
    let c = root();
    let a = match fs.lookup(dir, name, &c) {
        Ok(a) => a,
        Err(_) => fs
            .create(dir, name, 0o644, rw(), &c)
            .map(|(a, h)| {
                fs.release(a.ino, h).unwrap();
                a
            })
            .unwrap(),
    };
    let h = fs.open(a.ino, rw(), &c).unwrap();
    fs.write(a.ino, h, at, data, &c).unwrap();
    fs.release(a.ino, h).unwrap();
}

fn set(model: &mut Files, sv: &[u8], name: &[u8], at: usize, data: &[u8]) {
    let v = model.entry((sv.to_vec(), name.to_vec())).or_default();
    if v.len() < at + data.len() {
        v.resize(at + data.len(), 0);
    }
    v[at..at + data.len()].copy_from_slice(data);
}

#[test]
fn subvolume_operations_survive_every_crash() {
    let size = 16 * MIB;
    let base_dev = new_dev(size);
    let mut base = vec![0u8; size];
    base_dev.read_at(&mut base, 0).unwrap();
    let rec = Arc::new(RecordingDevice::new(MemDevice::from_bytes(base.clone())));
    let fs = Filesystem::open_device(rec.clone(), &opts()).unwrap();
    let c = root();
    let mut model = Files::new();
    let mut marks: Vec<(usize, Files)> = vec![(rec.mark(), model.clone())];
    let mut mark = |fs: &Filesystem, model: &Files| {
        fs.sync().unwrap();
        marks.push((rec.mark(), model.clone()));
    };

    let a = fs.subvolume_create(ROOT_INO, b"a", 0o755, &c).unwrap();
    for i in 0..4u8 {
        let data = pattern(5000 + usize::from(i) * 20_000, i);
        write(&fs, a.ino, &[b'f', b'0' + i], 0, &data);
        set(&mut model, b"a", &[b'f', b'0' + i], 0, &data);
    }
    mark(&fs, &model);
    let s1 = fs
        .subvolume_snapshot(a.ino, ROOT_INO, b"s1", false, &c)
        .unwrap();
    for ((sv, n), v) in model.clone() {
        if sv == b"a" {
            model.insert((b"s1".to_vec(), n), v);
        }
    }
    mark(&fs, &model);
    write(&fs, a.ino, b"f1", 100, b"origin");
    set(&mut model, b"a", b"f1", 100, b"origin");
    write(&fs, s1.ino, b"f2", 200, b"snapshot");
    set(&mut model, b"s1", b"f2", 200, b"snapshot");
    fs.unlink(s1.ino, b"f0", &c).unwrap();
    model.remove(&(b"s1".to_vec(), b"f0".to_vec()));
    mark(&fs, &model);
    // A reflink across subvolumes: a's f3 shared into s1 as "r".
    let src = fs.lookup(a.ino, b"f3", &c).unwrap();
    let sh = fs.open(src.ino, OpenFlags(libc::O_RDONLY), &c).unwrap();
    let (dst, dh) = fs.create(s1.ino, b"r", 0o644, rw(), &c).unwrap();
    let n = fs
        .copy_file_range(src.ino, sh, 0, dst.ino, dh, 0, 1 << 20, &c)
        .unwrap();
    fs.release(src.ino, sh).unwrap();
    fs.release(dst.ino, dh).unwrap();
    let f3 = model[&(b"a".to_vec(), b"f3".to_vec())].clone();
    assert_eq!(n, f3.len() as u64);
    model.insert((b"s1".to_vec(), b"r".to_vec()), f3);
    mark(&fs, &model);
    let _s2 = fs
        .subvolume_snapshot(s1.ino, ROOT_INO, b"s2", true, &c)
        .unwrap();
    for ((sv, n), v) in model.clone() {
        if sv == b"s1" {
            model.insert((b"s2".to_vec(), n), v);
        }
    }
    mark(&fs, &model);
    fs.subvolume_delete(ROOT_INO, b"a", &c).unwrap();
    model.retain(|(sv, _), _| sv != b"a");
    mark(&fs, &model);
    fs.finish_subvolume_deletions().unwrap();
    mark(&fs, &model);
    fs.subvolume_delete(ROOT_INO, b"s1", &c).unwrap();
    model.retain(|(sv, _), _| sv != b"s1");
    mark(&fs, &model);
    drop(fs);

    let log = rec.log();
    let crash = CrashOptions {
        torn_variants: 1,
        reorder_variants: 1,
        ..CrashOptions::default()
    };
    let mut images = 0;
    for img in crash_images(&base, &log, 11, crash) {
        images += 1;
        let k = marks
            .iter()
            .rposition(|(m, _)| *m <= img.ops_applied)
            .unwrap();
        let dev: Arc<dyn BlockDevice> = Arc::new(img.image);
        let fs = Filesystem::open_device(dev, &opts())
            .unwrap_or_else(|e| panic!("{}: open: {e}", img.description));
        let r = fs.check().unwrap();
        assert!(r.is_clean(), "{}: {r}", img.description);
        let got = state(&fs);
        let ok = got == marks[k].1 || marks.get(k + 1).is_some_and(|(_, s)| *s == got);
        assert!(
            ok,
            "{}: state is not that of sync {k} or the next",
            img.description
        );
        // A deletion the crash interrupted resumes and finishes cleanly.
        fs.finish_subvolume_deletions()
            .unwrap_or_else(|e| panic!("{}: finish deletions: {e}", img.description));
        assert_eq!(fs.subvolume_list().unwrap().deleting, 0);
        let r = fs.check().unwrap();
        assert!(r.is_clean(), "{} after deletions: {r}", img.description);
        assert_eq!(state(&fs), got, "{}", img.description);
    }
    eprintln!("{images} crash images of {} operations checked", log.len());
    assert!(images > 10 * marks.len());
}
