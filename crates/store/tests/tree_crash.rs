//! Crash consistency of the tree store: a long randomized workload (inserts, replaces, deletes,
//! snapshots and drops, a commit every few dozen operations) is recorded, then every prefix of
//! its device operations, with the last write torn and with the writes after the last flush
//! reordered, is applied to the starting image. Every image must open, pass the checker (which
//! also recomputes data back-references from the file extent items), and
//! hold exactly a committed generation no older than the last commit that had returned.
//!
//! `COWCRYPT_CRASH_OPS` scales the workload (default 2000 operations, about twenty seconds in a debug
//! build).

use std::collections::BTreeMap;
use std::sync::Arc;

use store::crash::{CrashOptions, RecordingDevice, SplitMix64, crash_images};
use store::{BlockDevice, DataRefOwner, DataRefs, ItemDataRef, Key, MemDevice, MkfsOptions, Store};

/// File extent items of the workload: key (inode, 2, file offset), value (extent, length).
struct FileExtents;

impl DataRefs for FileExtents {
    fn data_ref(&self, key: &Key, value: &[u8]) -> Option<ItemDataRef> {
        if key.item_type != 2 || value.len() != 16 {
            return None;
        }
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&value[i..i + 8]);
            u64::from_le_bytes(b)
        };
        Some(ItemDataRef {
            bytenr: word(0),
            len: word(8),
            inode: key.objectid,
            offset: key.offset,
        })
    }
}

fn extent_of(value: &[u8]) -> (u64, u64) {
    let r = FileExtents
        .data_ref(&Key::new(0, 2, 0), value)
        .expect("a file extent value");
    (r.bytenr, r.len)
}

const TREE: u64 = 256;
type Model = BTreeMap<Key, Vec<u8>>;

fn ops_from_env() -> u64 {
    std::env::var("COWCRYPT_CRASH_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

#[test]
fn every_crash_image_opens_at_a_returned_commit() {
    let total_ops = ops_from_env();
    let seed = 0x5eed;
    let mut rng = SplitMix64::new(seed);
    // The starting image: a fresh filesystem with one empty tree.
    let mem = Arc::new(MemDevice::new(6 << 20));
    let opts = MkfsOptions {
        node_size: 4096,
        metadata_percent: 40,
        ..MkfsOptions::default()
    };
    let store = Store::create(mem.clone(), opts).unwrap();
    store.set_data_refs(Arc::new(FileExtents));
    let mut t = store.begin().unwrap();
    t.create_tree(TREE).unwrap();
    let base_gen = t.commit().unwrap();
    drop(store);
    let base = mem.snapshot();

    // Record the workload.
    let rec = Arc::new(RecordingDevice::new(MemDevice::from_bytes(base.clone())));
    let store = Store::open(rec.clone() as Arc<dyn BlockDevice>).unwrap();
    store.set_data_refs(Arc::new(FileExtents));
    let mut models: BTreeMap<u64, Model> = BTreeMap::new();
    models.insert(base_gen, Model::new());
    let mut returned: Vec<(usize, u64)> = vec![(0, base_gen)];
    let mut model = Model::new();
    let mut snapshots: Vec<u64> = Vec::new();
    let mut next_snapshot = 1000;
    let mut done = 0;
    while done < total_ops {
        let mut t = store.begin().unwrap();
        let batch = 1 + rng.below(40);
        for _ in 0..batch {
            let k = Key::new(rng.below(300), 1, rng.below(4));
            // File extents: written or removed with their data references kept in step (the
            // tree first, then the references).
            if rng.below(5) == 0 {
                let fk = Key::new(rng.below(20), 2, rng.below(8) * 4096);
                let owner = DataRefOwner {
                    root: TREE,
                    inode: fk.objectid,
                    offset: fk.offset,
                };
                let old = model.get(&fk).cloned();
                if rng.below(3) == 0 {
                    t.delete(TREE, &fk).unwrap();
                    model.remove(&fk);
                } else {
                    let len = 4096 * (1 + rng.below(3));
                    let e = t.alloc_data_extent(len, owner).unwrap();
                    let v: Vec<u8> = [e, len].iter().flat_map(|x| x.to_le_bytes()).collect();
                    t.insert(TREE, fk, &v).unwrap();
                    model.insert(fk, v);
                }
                if let Some(v) = old {
                    let (e, len) = extent_of(&v);
                    t.drop_data_ref(e, len, owner, 1).unwrap();
                }
                done += 1;
                continue;
            }
            match rng.below(10) {
                0..=5 => {
                    let len = rng.below(400) as usize;
                    let mut v = vec![0u8; len];
                    rng.fill(&mut v);
                    t.insert(TREE, k, &v).unwrap();
                    model.insert(k, v);
                }
                6..=8 => {
                    assert_eq!(t.delete(TREE, &k).unwrap(), model.remove(&k).is_some());
                }
                _ => {
                    if snapshots.len() > 2 || (rng.below(2) == 0 && !snapshots.is_empty()) {
                        let i = rng.below(snapshots.len() as u64) as usize;
                        t.drop_tree(snapshots.remove(i)).unwrap();
                    } else {
                        t.snapshot_tree(TREE, next_snapshot).unwrap();
                        snapshots.push(next_snapshot);
                        next_snapshot += 1;
                    }
                }
            }
            done += 1;
        }
        models.insert(t.generation(), model.clone());
        let g = t.commit().unwrap();
        returned.push((rec.mark(), g));
    }
    drop(store);
    let log = rec.log();
    assert!(returned.len() > 5, "too few commits");

    let copts = CrashOptions {
        // Commits write runs of adjacent nodes in one request each: tear each several ways.
        torn_variants: 4,
        reorder_variants: 2,
        atomic_unit: 512,
    };
    let mut images = 0;
    let mut seen_gens = std::collections::BTreeSet::new();
    for img in crash_images(&base, &log, seed, copts) {
        images += 1;
        let need = returned
            .iter()
            .filter(|(mark, _)| *mark <= img.flushed_ops)
            .map(|(_, g)| *g)
            .max()
            .unwrap_or(base_gen);
        let what = &img.description;
        let store =
            Store::open(Arc::new(img.image)).unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
        store.set_data_refs(Arc::new(FileExtents));
        let g = store.generation();
        assert!(
            g >= need,
            "{what}: generation {g} older than returned commit {need}"
        );
        let want = models
            .get(&g)
            .unwrap_or_else(|| panic!("{what}: generation {g} was never committed"));
        store
            .check()
            .unwrap_or_else(|e| panic!("{what}: check failed at generation {g}: {e}"));
        let r = store.read();
        let got: Vec<(Key, Vec<u8>)> = r.range(TREE, ..).unwrap().map(|x| x.unwrap()).collect();
        let want: Vec<(Key, Vec<u8>)> = want.iter().map(|(k, v)| (*k, v.clone())).collect();
        assert!(got == want, "{what}: generation {g} content differs");
        seen_gens.insert(g);
    }
    eprintln!(
        "{} commits, {} device ops, {images} crash images",
        returned.len(),
        log.len()
    );
    // The images covered every commit, so the test saw each generation survive.
    assert_eq!(seen_gens.len(), returned.len(), "{images} images");
}

/// A device that fails part way through a commit: the commit returns an error, the store refuses
/// further writes, readers keep their view, and the image reopens at the old generation (or at
/// the new one whole, when only the last flush failed) and passes the checker.
#[test]
fn failed_commit_changes_nothing_visible() {
    use store::crash::FaultyDevice;
    let mem = Arc::new(MemDevice::new(6 << 20));
    let opts = MkfsOptions {
        node_size: 4096,
        metadata_percent: 40,
        ..MkfsOptions::default()
    };
    let store = Store::create(mem.clone(), opts).unwrap();
    let mut t = store.begin().unwrap();
    t.create_tree(TREE).unwrap();
    for i in 0..500 {
        t.insert(TREE, Key::new(i, 1, 0), b"old").unwrap();
    }
    let old_gen = t.commit().unwrap();
    drop(store);
    let base = mem.snapshot();
    let mut failures = 0;
    for n in 0..80 {
        let dev = Arc::new(FaultyDevice::new(MemDevice::from_bytes(base.clone())));
        let store = Store::open(dev.clone() as Arc<dyn BlockDevice>).unwrap();
        let mut t = store.begin().unwrap();
        for i in 0..500 {
            t.insert(TREE, Key::new(i, 1, 0), b"new").unwrap();
        }
        dev.fail_after(n);
        if t.commit().is_ok() {
            continue;
        }
        failures += 1;
        assert!(
            store.begin().is_err(),
            "n={n}: writes after a failed commit"
        );
        let r = store.read();
        assert_eq!(r.generation(), old_gen);
        assert_eq!(
            r.get(TREE, &Key::new(7, 1, 0)).unwrap().as_deref(),
            Some(&b"old"[..])
        );
        drop((r, store));
        let image = Arc::new(MemDevice::from_bytes(dev.inner().snapshot()));
        let store = Store::open(image).unwrap_or_else(|e| panic!("n={n}: {e}"));
        store.check().unwrap_or_else(|e| panic!("n={n}: {e}"));
        let want: &[u8] = if store.generation() == old_gen {
            b"old"
        } else {
            b"new"
        };
        assert!(store.generation() <= old_gen + 1);
        let r = store.read();
        assert!(
            r.range(TREE, ..).unwrap().all(|x| x.unwrap().1 == want),
            "n={n}"
        );
    }
    assert!(
        failures >= 5,
        "only {failures} injected failures hit the commit"
    );
}
