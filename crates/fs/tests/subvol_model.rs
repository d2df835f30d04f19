//! Subvolumes against a model, in seeded random orders: files written into origins and
//! snapshots interleaved (overwrites, appends, new files, unlinks), snapshots of snapshots (read-only or
//! not), deletions in random order, some while earlier deletions are still releasing space,
//! remounts; every subvolume compared with the model and fsck clean after each step. At the end
//! everything is deleted and the free space must come back to what the empty filesystem had.

mod common;

use std::collections::BTreeMap;

use common::*;
use cowfs::{Filesystem, Ino, ROOT_INO};

/// xorshift64*: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One subvolume as the model sees it: its name in the root directory, read-only flag, files.
struct Sub {
    name: Vec<u8>,
    read_only: bool,
    files: BTreeMap<Vec<u8>, Vec<u8>>,
}

fn ino_of(fs: &Filesystem, name: &[u8]) -> Ino {
    fs.lookup(ROOT_INO, name, &root()).unwrap().ino
}

/// Every subvolume holds exactly the model's files.
fn compare(fs: &Filesystem, subs: &[Sub], step: usize) {
    for s in subs {
        let dir = ino_of(fs, &s.name);
        let mut got: Vec<Vec<u8>> = names(fs, dir)
            .into_iter()
            .filter(|n| n != b"." && n != b"..")
            .collect();
        got.sort();
        let want: Vec<Vec<u8>> = s.files.keys().cloned().collect();
        assert_eq!(got, want, "step {step}: names in {:?}", s.name);
        for (n, data) in &s.files {
            let f = fs.lookup(dir, n, &root()).unwrap().ino;
            assert!(
                content(fs, f) == *data,
                "step {step}: {:?}/{:?} differs",
                String::from_utf8_lossy(&s.name),
                String::from_utf8_lossy(n)
            );
        }
    }
}

fn write_at(fs: &Filesystem, dir: Ino, name: &[u8], off: usize, data: &[u8]) {
    let c = root();
    let f = fs.lookup(dir, name, &c).unwrap().ino;
    let h = fs.open(f, rw(), &c).unwrap();
    assert_eq!(
        fs.write(f, h, off as u64, data, &c).unwrap() as usize,
        data.len()
    );
    fs.release(f, h).unwrap();
}

fn run(seed: u64, steps: usize) {
    let dev = new_dev(128 * MIB);
    let mut fs = Filesystem::open_device(dev.clone(), &opts()).unwrap();
    let c = root();
    fs.sync().unwrap();
    let empty_free = fs.statfs().unwrap().bfree;
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut subs: Vec<Sub> = Vec::new();
    let mut next_name = 0u32;
    let mut new_name = |prefix: &str| {
        next_name += 1;
        format!("{prefix}{next_name}").into_bytes()
    };

    // Operations done, by kind: create, snapshot, delete, remount, write.
    let mut done = [0usize; 5];
    for step in 0..steps {
        let writable: Vec<usize> = (0..subs.len()).filter(|&i| !subs[i].read_only).collect();
        match rng.below(10) {
            // A new subvolume.
            0 if subs.len() < 12 => {
                let name = new_name("sv");
                fs.subvolume_create(ROOT_INO, &name, 0o755, &c).unwrap();
                subs.push(Sub {
                    name,
                    read_only: false,
                    files: BTreeMap::new(),
                });
                done[0] += 1;
            }
            // A snapshot of any subvolume, read-only a third of the time.
            1 | 2 if !subs.is_empty() && subs.len() < 12 => {
                let src = rng.below(subs.len());
                let read_only = rng.below(3) == 0;
                let name = new_name("snap");
                let from = ino_of(&fs, &subs[src].name);
                fs.subvolume_snapshot(from, ROOT_INO, &name, read_only, &c)
                    .unwrap();
                let files = subs[src].files.clone();
                subs.push(Sub {
                    name,
                    read_only,
                    files,
                });
                done[1] += 1;
            }
            // Delete one, chosen at random.
            3 if !subs.is_empty() => {
                let i = rng.below(subs.len());
                let s = subs.remove(i);
                fs.subvolume_delete(ROOT_INO, &s.name, &c).unwrap();
                // Half the time, let the release finish now; else it overlaps what follows.
                if rng.below(2) == 0 {
                    fs.finish_subvolume_deletions().unwrap();
                }
                done[2] += 1;
            }
            // Remount: pending deletions resume.
            4 if rng.below(4) == 0 => {
                fs.unmount().unwrap();
                fs = Filesystem::open_device(dev.clone(), &opts()).unwrap();
                done[3] += 1;
            }
            // Writes into a writable subvolume: a new file, an overwrite, an append, an unlink.
            _ if !writable.is_empty() => {
                let s = &mut subs[writable[rng.below(writable.len())]];
                let dir = ino_of(&fs, &s.name);
                let names: Vec<Vec<u8>> = s.files.keys().cloned().collect();
                let seed = rng.next() as u8;
                done[4] += 1;
                match (names.is_empty(), rng.below(4)) {
                    (true, _) | (false, 0) => {
                        let name = format!("f{}", rng.below(1000)).into_bytes();
                        if s.files.contains_key(&name) {
                            continue;
                        }
                        let data = pattern(rng.below(200_000), seed);
                        put(&fs, dir, &name, &data, &c);
                        s.files.insert(name, data);
                    }
                    (false, 1) => {
                        let name = &names[rng.below(names.len())];
                        let data = s.files.get_mut(name).unwrap();
                        let off = rng.below(data.len() + 1);
                        let chunk = pattern(rng.below(50_000) + 1, seed);
                        write_at(&fs, dir, name, off, &chunk);
                        if data.len() < off + chunk.len() {
                            data.resize(off + chunk.len(), 0);
                        }
                        data[off..off + chunk.len()].copy_from_slice(&chunk);
                    }
                    (false, 2) => {
                        let name = &names[rng.below(names.len())];
                        let data = s.files.get_mut(name).unwrap();
                        let chunk = pattern(rng.below(20_000) + 1, seed);
                        write_at(&fs, dir, name, data.len(), &chunk);
                        data.extend_from_slice(&chunk);
                    }
                    _ => {
                        let name = names[rng.below(names.len())].clone();
                        fs.unlink(dir, &name, &c).unwrap();
                        s.files.remove(&name);
                    }
                }
            }
            _ => continue,
        }
        compare(&fs, &subs, step);
        assert_clean(&fs);
    }

    // The mix must have exercised every kind of step.
    assert!(
        done.iter().all(|&n| n > 0),
        "seed {seed}: steps done {done:?}"
    );
    eprintln!("seed {seed}: create, snapshot, delete, remount, write: {done:?}");

    // Everything goes, in random order; the space comes back.
    while !subs.is_empty() {
        let s = subs.remove(rng.below(subs.len()));
        fs.subvolume_delete(ROOT_INO, &s.name, &c).unwrap();
        assert_clean(&fs);
    }
    fs.unmount().unwrap();
    let fs = Filesystem::open_device(dev, &opts()).unwrap();
    fs.finish_subvolume_deletions().unwrap();
    assert_eq!(fs.subvolume_list().unwrap().subvolumes.len(), 1);
    assert_clean(&fs);
    let free = fs.statfs().unwrap().bfree;
    assert!(
        free + 64 >= empty_free,
        "seed {seed}: {free} blocks free after deleting everything, {empty_free} when empty"
    );
}

#[test]
fn interleaved_writes_snapshots_and_deletions_match_the_model() {
    for seed in 1..=6 {
        run(seed, 250);
    }
}
