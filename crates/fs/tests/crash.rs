//! Crash safety: a workload runs on a recording device, noting where each fsync returned; every
//! image a crash could leave (prefixes, torn writes, reordered writes since the last flush) must
//! open, pass check(), and show exactly the state of the last fsync that returned before the
//! crash or of the one in flight.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::*;
use cowfs::{Filesystem, OpenFlags, ROOT_INO};
use store::crash::{CrashOptions, RecordingDevice, crash_images};
use store::{BlockDevice, MemDevice};

type Files = BTreeMap<Vec<u8>, Vec<u8>>;

fn state(fs: &Filesystem) -> Files {
    let mut out = Files::new();
    for name in names(fs, ROOT_INO) {
        if name == b"." || name == b".." {
            continue;
        }
        let a = fs.lookup(ROOT_INO, &name, &root()).unwrap();
        out.insert(name, content(fs, a.ino));
    }
    out
}

#[test]
fn fsynced_data_survives_every_crash() {
    let size = 16 * MIB;
    let base_dev = new_dev(size);
    let mut base = vec![0u8; size];
    base_dev.read_at(&mut base, 0).unwrap();
    let rec = Arc::new(RecordingDevice::new(MemDevice::from_bytes(base.clone())));
    let fs = Filesystem::open_device(rec.clone(), &opts()).unwrap();
    let c = root();
    let mut model = Files::new();
    // (mark, state at that fsync)
    let mut marks: Vec<(usize, Files)> = vec![(rec.mark(), model.clone())];
    let rounds: usize = std::env::var("COWCRYPT_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    for i in 0..rounds {
        let name = format!("f{i}").into_bytes();
        let data = pattern(3000 + i * 37_000, i as u8);
        let (a, fh) = fs.create(ROOT_INO, &name, 0o644, rw(), &c).unwrap();
        fs.write(a.ino, fh, 0, &data, &c).unwrap();
        model.insert(name.clone(), data);
        let old = format!("f{}", i.saturating_sub(2)).into_bytes();
        if i >= 2 && model.contains_key(&old) {
            // Overwrite the middle of an older file and remove another.
            let o = fs.lookup(ROOT_INO, &old, &c).unwrap();
            let oh = fs.open(o.ino, OpenFlags(libc::O_RDWR), &c).unwrap();
            fs.write(o.ino, oh, 100, b"overwritten", &c).unwrap();
            fs.release(o.ino, oh).unwrap();
            model.get_mut(&old).unwrap()[100..111].copy_from_slice(b"overwritten");
            let gone = format!("f{}", i - 1).into_bytes();
            if i % 2 == 1 && model.contains_key(&gone) {
                fs.unlink(ROOT_INO, &gone, &c).unwrap();
                model.remove(&gone);
            }
        }
        if i % 3 == 2 {
            // Rename over an existing file, and shrink another.
            let from = format!("f{i}").into_bytes();
            let to = format!("r{}", i % 2).into_bytes();
            fs.rename(
                ROOT_INO,
                &from,
                ROOT_INO,
                &to,
                cowfs::RenameFlags::default(),
                &c,
            )
            .unwrap();
            let v = model.remove(&from).unwrap();
            model.insert(to, v);
            if let Some((n, v)) = model
                .iter_mut()
                .find(|(n, v)| n.starts_with(b"f") && v.len() > 5000)
            {
                let t = fs.lookup(ROOT_INO, n, &c).unwrap();
                let set = cowfs::SetAttr {
                    size: Some(4999),
                    ..cowfs::SetAttr::default()
                };
                fs.setattr(t.ino, &set, None, &c).unwrap();
                v.truncate(4999);
            }
        }
        fs.fsync(a.ino, fh, false).unwrap();
        marks.push((rec.mark(), model.clone()));
        fs.release(a.ino, fh).unwrap();
    }
    drop(fs);
    let log = rec.log();
    let opts_crash = CrashOptions {
        torn_variants: 1,
        reorder_variants: 1,
        ..CrashOptions::default()
    };
    let mut images = 0;
    for img in crash_images(&base, &log, 7, opts_crash) {
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
            "{}: state is not that of fsync {k} or the next",
            img.description
        );
    }
    eprintln!("{images} crash images of {} operations checked", log.len());
    assert!(images > 10 * marks.len());
}
