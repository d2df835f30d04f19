//! Relocation never needs a key: data written encrypted through the data path (a crypt context
//! the store only ever sees on that path) is moved by a shrink that has no context at all, and
//! reads back through the context byte for byte; its stored bytes are still ciphertext. The same
//! holds for balance's move of one extent: a raw copy, written with no context.

mod common;

use common::ToyCrypt;

use std::sync::Arc;

use store::{BlockDevice, DataRefOwner, MemDevice, MkfsOptions, Store, tree_id};

const MIB: u64 = 1 << 20;

#[test]
fn a_shrink_moves_encrypted_extents_without_their_key() {
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(128 * MIB as usize));
    let store = Store::create(dev.clone(), MkfsOptions::default()).unwrap();
    let tree = tree_id::FIRST_SUBVOL_TREE;
    let mut t = store.begin().unwrap();
    t.create_tree(tree).unwrap();
    // Allocate 4 MiB extents until they sit past 96 MiB on the device; keep the far ones.
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    for i in 0.. {
        let owner = DataRefOwner {
            root: tree,
            inode: 1000 + i,
            offset: 0,
        };
        let Ok(bytenr) = t.alloc_data_extent(4 * MIB, owner) else {
            break;
        };
        let physical = store.chunk_map().to_physical(bytenr, 4 * MIB).unwrap();
        if physical >= 96 * MIB {
            let plain: Vec<u8> = (0..4 * MIB).map(|b| (b * 7 + i) as u8).collect();
            t.data_io()
                .unwrap()
                .write(bytenr, 0, &plain, Some(&ToyCrypt))
                .unwrap();
            kept.push((bytenr, plain));
        } else {
            dropped.push((bytenr, owner));
        }
    }
    assert!(!kept.is_empty());
    for (bytenr, owner) in dropped {
        t.drop_data_ref(bytenr, 4 * MIB, owner, 1).unwrap();
    }
    t.commit().unwrap();
    store.check().unwrap();

    let r = store.resize(64 * MIB, &mut |_, _| {}).unwrap();
    assert!(r.chunks_moved > 0, "{r:?}");
    // Cut to the new size: everything needed lies below it.
    let mut b = vec![0u8; 64 * MIB as usize];
    dev.read_at(&mut b, 0).unwrap();
    let small: Arc<dyn BlockDevice> = Arc::new(MemDevice::from_bytes(b));
    let store = Store::open(small).unwrap();
    store.check().unwrap();
    let io = store.data_io().unwrap();
    for (bytenr, plain) in &kept {
        let got = io
            .read(*bytenr, 0, plain.len(), Some(&ToyCrypt), None, None)
            .unwrap();
        assert!(got == *plain, "extent {bytenr} reads back");
        let raw = io.read(*bytenr, 0, plain.len(), None, None, None).unwrap();
        assert!(raw != *plain, "extent {bytenr} is stored encrypted");
    }
}

/// Balance's move of one extent: its stored bytes read raw and written to a new extent with no
/// context at all. The copy reads back through the context as the original did, since a data
/// unit's IV depends only on its place inside the extent.
#[test]
fn an_extent_copied_raw_without_its_key_decrypts_at_its_new_address() {
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(64 * MIB as usize));
    let store = Store::create(dev, MkfsOptions::default()).unwrap();
    let tree = tree_id::FIRST_SUBVOL_TREE;
    let mut t = store.begin().unwrap();
    t.create_tree(tree).unwrap();
    let owner = |inode| DataRefOwner {
        root: tree,
        inode,
        offset: 0,
    };
    let len = 256 * 1024;
    let plain: Vec<u8> = (0..len).map(|b| (b * 13 + 5) as u8).collect();
    let old = t.alloc_data_extent(len, owner(1)).unwrap();
    t.data_io()
        .unwrap()
        .write(old, 0, &plain, Some(&ToyCrypt))
        .unwrap();
    t.commit().unwrap();

    let mut t = store.begin().unwrap();
    let new = t.alloc_data_extent(len, owner(1)).unwrap();
    assert_ne!(new, old);
    let raw = t.data_io().unwrap().read_raw(old, 0, len as usize).unwrap();
    assert!(raw != plain, "stored encrypted");
    t.data_io().unwrap().write(new, 0, &raw, None).unwrap();
    t.drop_data_ref(old, len, owner(1), 1).unwrap();
    t.commit().unwrap();
    store.check().unwrap();

    let io = store.data_io().unwrap();
    let got = io
        .read(new, 0, plain.len(), Some(&ToyCrypt), None, None)
        .unwrap();
    assert!(got == plain, "the copy decrypts");
    assert!(io.read_raw(new, 0, len as usize).unwrap() == raw);
}
