//! Hostile images: a filesystem with trees, snapshots and data extents gets random bit flips in
//! its metadata. Opening, checking and reading every tree must give errors or data, never a
//! panic or a hang (invariant 6). `COWCRYPT_HOSTILE_CASES` scales the number of damaged images.

use std::sync::Arc;

use store::crash::{SplitMix64, flip_random_bits};
use store::{DataRefOwner, Key, MemDevice, MkfsOptions, Store};

fn cases() -> u64 {
    std::env::var("COWCRYPT_HOSTILE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

#[test]
fn damaged_metadata_gives_errors_never_panics() {
    let mem = Arc::new(MemDevice::new(8 << 20));
    let opts = MkfsOptions {
        node_size: 4096,
        metadata_percent: 25,
        ..MkfsOptions::default()
    };
    let store = Store::create(mem.clone(), opts).unwrap();
    let mut rng = SplitMix64::new(9);
    let mut t = store.begin().unwrap();
    t.create_tree(256).unwrap();
    for i in 0..1500u64 {
        let mut v = vec![0u8; rng.below(200) as usize];
        rng.fill(&mut v);
        t.insert(256, Key::new(i, 1, i), &v).unwrap();
    }
    let owner = DataRefOwner {
        root: 256,
        inode: 1,
        offset: 0,
    };
    t.alloc_data_extent(8192, owner).unwrap();
    t.commit().unwrap();
    let mut t = store.begin().unwrap();
    t.snapshot_tree(256, 257).unwrap();
    t.insert(257, Key::new(3, 1, 3), b"snap").unwrap();
    t.commit().unwrap();
    // A tree half released in the background, sharing blocks with 257.
    let mut t = store.begin().unwrap();
    t.snapshot_tree(257, 258).unwrap();
    t.insert(258, Key::new(9, 1, 9), b"doomed").unwrap();
    t.drop_tree_background(258).unwrap();
    t.commit().unwrap();
    let mut t = store.begin().unwrap();
    t.continue_tree_drops(3).unwrap();
    t.commit().unwrap();
    assert_eq!(store.pending_deletion().unwrap().trees, 1);
    store.check().unwrap();
    drop(store);
    let good = mem.snapshot();

    let (mut opened, mut detected) = (0, 0);
    for seed in 0..cases() {
        let mut image = good.clone();
        // Flip bits where the system chunk and the used start of the metadata space live
        // (physical 1 MiB to 2.5 MiB), so most flips hit live nodes.
        let flipped = flip_random_bits(&mut image[1 << 20..5 << 19], 1 + (seed % 8) as usize, seed);
        let Ok(store) = Store::open(Arc::new(MemDevice::from_bytes(image))) else {
            detected += 1;
            continue;
        };
        opened += 1;
        // Whatever happens, it is an error or a value.
        if store.check().is_err() {
            detected += 1;
        }
        // Releasing the pending drop reads damaged nodes too: errors, never panics.
        let _ = store.pending_deletion();
        if let Ok(mut t) = store.begin() {
            let _ = t.continue_tree_drops(1000);
        }
        let r = store.read();
        for tree in r.tree_ids() {
            if let Ok(it) = r.range(tree, ..) {
                for item in it.take(5000) {
                    if item.is_err() {
                        break;
                    }
                }
            }
        }
        assert!(!flipped.is_empty());
    }
    // Damage was found in many images, and flips in unused space left others usable.
    assert!(
        detected > cases() / 4,
        "{detected} of {} damaged images detected",
        cases()
    );
    assert!(opened > 0);
}
