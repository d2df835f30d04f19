//! Crash consistency of background tree drops: a workload that fills a tree (items and file
//! extents), snapshots it, drops trees in the background and releases them a small budget per
//! transaction while writing to the surviving snapshots, is recorded; then every prefix of its
//! device operations (and torn and reordered variants) is applied to the starting image. Every
//! image must open at a returned commit and pass the checker (which counts the references a
//! half-released tree still holds and recomputes data back-references from the leaves); a sample
//! of images is then driven to the end of every pending drop, after which the space in use is
//! exactly what it was before the trees were made.
//!
//! `COWCRYPT_DROP_CRASH_RESUME` sets how many images are resumed to the end (default 60).

use std::sync::Arc;

use store::crash::{CrashOptions, RecordingDevice, SplitMix64, crash_images};
use store::{BlockDevice, DataRefOwner, DataRefs, ItemDataRef, Key, MemDevice, MkfsOptions, Store};

/// File extent items: key (inode, 2, file offset), value (extent, length).
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

fn resume_samples() -> usize {
    std::env::var("COWCRYPT_DROP_CRASH_RESUME")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
}

/// Writes `n` random items and file extents into `tree`; a file extent replaced or removed
/// drops its data reference, as the layer above does.
fn scribble(t: &mut store::WriteTxn<'_>, tree: u64, rng: &mut SplitMix64, n: u64) {
    for _ in 0..n {
        if rng.below(4) == 0 {
            let fk = Key::new(rng.below(30), 2, rng.below(8) * 4096);
            let owner = DataRefOwner {
                root: tree,
                inode: fk.objectid,
                offset: fk.offset,
            };
            let old = t.get(tree, &fk).unwrap();
            if rng.below(3) == 0 {
                t.delete(tree, &fk).unwrap();
            } else {
                let e = t.alloc_data_extent(4096, owner).unwrap();
                let v: Vec<u8> = [e, 4096u64].iter().flat_map(|x| x.to_le_bytes()).collect();
                t.insert(tree, fk, &v).unwrap();
            }
            if let Some(v) = old {
                let r = FileExtents.data_ref(&fk, &v).unwrap();
                t.drop_data_ref(r.bytenr, r.len, owner, 1).unwrap();
            }
        } else {
            let mut v = vec![0u8; 20 + rng.below(60) as usize];
            rng.fill(&mut v);
            t.insert(tree, Key::new(1000 + rng.below(20_000), 1, 0), &v)
                .unwrap();
        }
    }
}

fn finish_drops(store: &Store) {
    for _ in 0..10_000 {
        let mut t = store.begin().unwrap();
        let p = t.continue_tree_drops(16).unwrap();
        t.commit().unwrap();
        if p.is_done() {
            // Two more commits release the space the last steps pinned.
            store.begin().unwrap().commit().unwrap();
            store.begin().unwrap().commit().unwrap();
            return;
        }
    }
    panic!("drops never finished");
}

#[test]
fn background_drops_survive_every_crash() {
    let mem = Arc::new(MemDevice::new(12 << 20));
    let opts = MkfsOptions {
        node_size: 4096,
        metadata_percent: 40,
        ..MkfsOptions::default()
    };
    let store = Store::create(mem.clone(), opts).unwrap();
    store.set_data_refs(Arc::new(FileExtents));
    let before = store.stats();
    let base_gen = store.generation();
    drop(store);
    let base = mem.snapshot();

    let rec = Arc::new(RecordingDevice::new(MemDevice::from_bytes(base.clone())));
    let store = Store::open(rec.clone() as Arc<dyn BlockDevice>).unwrap();
    store.set_data_refs(Arc::new(FileExtents));
    let mut rng = SplitMix64::new(0xd20b);
    let mut returned: Vec<(usize, u64)> = vec![(0, base_gen)];
    let commit = |t: store::WriteTxn<'_>, returned: &mut Vec<(usize, u64)>| {
        let g = t.commit().unwrap();
        returned.push((rec.mark(), g));
    };
    // A tree of a few levels, with file extents.
    let mut t = store.begin().unwrap();
    t.create_tree(256).unwrap();
    scribble(&mut t, 256, &mut rng, 8000);
    commit(t, &mut returned);
    let mut t = store.begin().unwrap();
    t.snapshot_tree(256, 257).unwrap();
    scribble(&mut t, 256, &mut rng, 100);
    scribble(&mut t, 257, &mut rng, 100);
    commit(t, &mut returned);
    let mut t = store.begin().unwrap();
    t.drop_tree_background(256).unwrap();
    commit(t, &mut returned);
    // Release in small steps while the snapshot keeps changing; part way, snapshot the snapshot
    // and drop the first snapshot too, so two drops run with blocks shared three ways.
    let mut live = 257;
    let mut steps = 0;
    loop {
        let mut t = store.begin().unwrap();
        let p = t.continue_tree_drops(1 + rng.below(4)).unwrap();
        scribble(&mut t, live, &mut rng, 10);
        if steps == 15 {
            t.snapshot_tree(257, 258).unwrap();
            scribble(&mut t, 258, &mut rng, 20);
        }
        if steps == 25 {
            t.drop_tree_background(257).unwrap();
            live = 258;
        }
        commit(t, &mut returned);
        steps += 1;
        if p.is_done() && steps > 25 {
            break;
        }
    }
    let mut t = store.begin().unwrap();
    t.drop_tree_background(live).unwrap();
    commit(t, &mut returned);
    loop {
        let mut t = store.begin().unwrap();
        let p = t.continue_tree_drops(1 + rng.below(6)).unwrap();
        commit(t, &mut returned);
        if p.is_done() {
            break;
        }
    }
    for _ in 0..2 {
        let t = store.begin().unwrap();
        commit(t, &mut returned);
    }
    store.check().unwrap();
    let after = store.stats();
    assert_eq!(after.metadata.used(), before.metadata.used());
    assert_eq!(after.metadata.free, before.metadata.free);
    assert_eq!(after.data, before.data);
    drop(store);
    let log = rec.log();
    assert!(steps > 30, "only {steps} steps");

    let copts = CrashOptions {
        // Commits write runs of adjacent nodes in one request each: tear each several ways.
        torn_variants: 4,
        reorder_variants: 2,
        atomic_unit: 512,
    };
    let mut images = 0;
    let mut pending_seen = 0;
    let mut gens = std::collections::BTreeSet::new();
    let all: usize = crash_images(&base, &log, 1, copts).count();
    let every = (all / resume_samples().max(1)).max(1);
    for img in crash_images(&base, &log, 1, copts) {
        let what = img.description.clone();
        let need = returned
            .iter()
            .filter(|(mark, _)| *mark <= img.flushed_ops)
            .map(|(_, g)| *g)
            .max()
            .unwrap_or(base_gen);
        let store =
            Store::open(Arc::new(img.image)).unwrap_or_else(|e| panic!("{what}: open: {e}"));
        store.set_data_refs(Arc::new(FileExtents));
        let g = store.generation();
        assert!(
            g >= need,
            "{what}: generation {g} older than returned {need}"
        );
        assert!(
            returned.iter().any(|(_, r)| *r == g),
            "{what}: generation {g} never committed"
        );
        gens.insert(g);
        store
            .check()
            .unwrap_or_else(|e| panic!("{what}: check at generation {g}: {e}"));
        let p = store.pending_deletion().unwrap();
        if p.trees > 0 {
            pending_seen += 1;
        }
        if images % every == 0 {
            // Resume: drop whatever trees are left, release every pending drop; the space in
            // use returns to the figure before any tree was made.
            let ids: Vec<u64> = store.read().tree_ids();
            let mut t = store.begin().unwrap();
            for id in ids.into_iter().filter(|&id| id >= 256) {
                t.drop_tree_background(id).unwrap();
            }
            t.commit().unwrap();
            finish_drops(&store);
            store
                .check()
                .unwrap_or_else(|e| panic!("{what}: check after resuming: {e}"));
            let st = store.stats();
            assert_eq!(st.metadata.used(), before.metadata.used(), "{what}");
            assert_eq!(st.data.used(), before.data.used(), "{what}");
        }
        images += 1;
    }
    eprintln!(
        "{} commits, {} device ops, {images} crash images, {pending_seen} with drops pending",
        returned.len(),
        log.len()
    );
    assert_eq!(gens.len(), returned.len(), "not every commit was seen");
    assert!(pending_seen > images / 2);
}
