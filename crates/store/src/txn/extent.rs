//! Data extents: reference counts and back-references that name every owner of an extent.
//!
//! An extent item `(bytenr, EXTENT_ITEM, length)` holds the total count; back-reference items
//! `(bytenr, EXTENT_DATA_REF, hash of the owner)` hold (tree, inode, file offset of the extent's
//! start, count) entries, so relocation, scrub and inspection find every file that uses an
//! extent. The store never reads file extent items itself; the layer above keeps refs in step
//! with the items it writes ([`WriteTxn::add_data_ref`], [`WriteTxn::drop_data_ref`]).
//!
//! Snapshots share leaves, so one leaf item may stand for several files. If the layer above
//! registers a [`DataRefs`] parser, the store keeps back-references exact across sharing the way
//! btrfs does: each leaf's data references are recorded under the leaf's owner tree; copying a
//! shared leaf adds references for the copying tree; copying an unshared leaf owned by another
//! tree moves them; freeing a leaf drops them.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{WriteTxn, le64};
use crate::btree::{self, NodeRead};
use crate::chunk::ChunkKind;
use crate::error::{Error, Result};
use crate::key::{Key, item_type, tree_id};
use crate::node::Node;

/// Who holds a reference to a data extent: a file in a tree, at the file offset where the
/// extent's start would be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DataRefOwner {
    pub root: u64,
    pub inode: u64,
    pub offset: u64,
}

/// A data reference a leaf item carries, as the layer above's parser reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemDataRef {
    pub bytenr: u64,
    pub len: u64,
    pub inode: u64,
    pub offset: u64,
}

/// Tells the store which leaf items reference data extents (the layer above's file extent items).
pub trait DataRefs: Send + Sync {
    fn data_ref(&self, key: &Key, value: &[u8]) -> Option<ItemDataRef>;
}

/// A data extent's item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataExtent {
    pub bytenr: u64,
    pub len: u64,
    pub refs: u64,
}

/// Flag of an extent item holding file data.
pub const EXTENT_FLAG_DATA: u64 = 1;
const ENTRY_SIZE: usize = 32;

/// The key offset of an owner's back-reference item: a fixed 64-bit mix of the owner, stable
/// across versions (documented in docs/FORMAT-trees.md).
pub fn owner_hash(o: &DataRefOwner) -> u64 {
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    mix(o.root ^ mix(o.inode ^ mix(o.offset)))
}

fn decode_entries(key: &Key, v: &[u8]) -> Result<Vec<(DataRefOwner, u64)>> {
    if v.is_empty() || !v.len().is_multiple_of(ENTRY_SIZE) {
        return Err(Error::Corrupt(format!(
            "back-reference {key:?} of {} bytes",
            v.len()
        )));
    }
    let mut out: Vec<(DataRefOwner, u64)> = Vec::with_capacity(v.len() / ENTRY_SIZE);
    for e in v.chunks_exact(ENTRY_SIZE) {
        let o = DataRefOwner {
            root: le64(&e[0..8]),
            inode: le64(&e[8..16]),
            offset: le64(&e[16..24]),
        };
        let n = le64(&e[24..32]);
        if n == 0 || owner_hash(&o) != key.offset || out.last().is_some_and(|(p, _)| *p >= o) {
            return Err(Error::Corrupt(format!(
                "back-reference {key:?} holds a bad entry"
            )));
        }
        out.push((o, n));
    }
    Ok(out)
}

fn encode_entries(es: &[(DataRefOwner, u64)]) -> Vec<u8> {
    let mut v = Vec::with_capacity(es.len() * ENTRY_SIZE);
    for (o, n) in es {
        for x in [o.root, o.inode, o.offset, *n] {
            v.extend_from_slice(&x.to_le_bytes());
        }
    }
    v
}

fn decode_extent(key: &Key, v: &[u8]) -> Result<DataExtent> {
    if v.len() != 16 || le64(&v[8..16]) != EXTENT_FLAG_DATA || le64(&v[0..8]) == 0 {
        return Err(Error::Corrupt(format!("bad extent item {key:?}")));
    }
    Ok(DataExtent {
        bytenr: key.objectid,
        len: key.offset,
        refs: le64(&v[0..8]),
    })
}

fn encode_extent(refs: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[0..8].copy_from_slice(&refs.to_le_bytes());
    v[8..16].copy_from_slice(&EXTENT_FLAG_DATA.to_le_bytes());
    v
}

/// The extent item at `bytenr`, found through any reader of the extent tree.
pub(crate) fn find_extent<S: NodeRead + ?Sized>(
    s: &S,
    extent_root: &crate::superblock::TreeRoot,
    bytenr: u64,
) -> Result<Option<DataExtent>> {
    let lo = Key::new(bytenr, item_type::EXTENT_ITEM, 0);
    let hi = Key::new(bytenr, item_type::EXTENT_ITEM, u64::MAX);
    let mut it = btree::range(
        s,
        extent_root,
        std::ops::Bound::Included(lo),
        std::ops::Bound::Included(hi),
    )?;
    match it.next() {
        None => Ok(None),
        Some(r) => {
            let (k, v) = r?;
            decode_extent(&k, &v).map(Some)
        }
    }
}

/// Every owner of the extent at `bytenr` with its count.
pub(crate) fn backrefs<S: NodeRead + ?Sized>(
    s: &S,
    extent_root: &crate::superblock::TreeRoot,
    bytenr: u64,
) -> Result<Vec<(DataRefOwner, u64)>> {
    let lo = Key::new(bytenr, item_type::EXTENT_DATA_REF, 0);
    let hi = Key::new(bytenr, item_type::EXTENT_DATA_REF, u64::MAX);
    let mut out = Vec::new();
    for r in btree::range(
        s,
        extent_root,
        std::ops::Bound::Included(lo),
        std::ops::Bound::Included(hi),
    )? {
        let (k, v) = r?;
        out.extend(decode_entries(&k, &v)?);
    }
    out.sort();
    Ok(out)
}

impl WriteTxn<'_> {
    /// Allocates a data extent of `len` bytes (a multiple of the sector size) with one reference
    /// held by `owner`. Its space may be written at once: it was free in the committed state.
    pub fn alloc_data_extent(&mut self, len: u64, owner: DataRefOwner) -> Result<u64> {
        let sector = u64::from(self.w.sb.sector_size);
        if len == 0 || !len.is_multiple_of(sector) {
            return Err(Error::InvalidRequest(format!(
                "data extent of {len} bytes is not a positive multiple of {sector}"
            )));
        }
        let bytenr = self.alloc.alloc(ChunkKind::Data, len, false)?;
        self.new_data.insert(bytenr);
        let key = Key::new(bytenr, item_type::EXTENT_ITEM, len);
        let v = encode_extent(1);
        self.tree_op(tree_id::EXTENT_TREE, |t, r| {
            btree::insert(t, r, tree_id::EXTENT_TREE, key, &v)
        })?;
        self.change_backref(bytenr, owner, 1)?;
        Ok(bytenr)
    }

    /// The extent item at `bytenr`.
    pub fn data_extent(&self, bytenr: u64) -> Result<Option<DataExtent>> {
        find_extent(self, &self.root_of(tree_id::EXTENT_TREE)?, bytenr)
    }

    /// Every owner of the extent at `bytenr`, with its count.
    pub fn data_backrefs(&self, bytenr: u64) -> Result<Vec<(DataRefOwner, u64)>> {
        backrefs(self, &self.root_of(tree_id::EXTENT_TREE)?, bytenr)
    }

    fn extent_checked(&self, bytenr: u64, len: u64) -> Result<DataExtent> {
        match self.data_extent(bytenr)? {
            Some(e) if e.len == len => Ok(e),
            Some(e) => Err(Error::InvalidRequest(format!(
                "extent at {bytenr} is {} bytes, not {len}",
                e.len
            ))),
            None => Err(Error::InvalidRequest(format!("no data extent at {bytenr}"))),
        }
    }

    /// Adds `n` references held by `owner` to the extent at `bytenr` of `len` bytes.
    pub fn add_data_ref(
        &mut self,
        bytenr: u64,
        len: u64,
        owner: DataRefOwner,
        n: u64,
    ) -> Result<()> {
        let e = self.extent_checked(bytenr, len)?;
        if n == 0 {
            return Ok(());
        }
        self.set_extent_refs(&e, e.refs + n)?;
        self.change_backref(bytenr, owner, n as i64)
    }

    /// Deletes every checksum-tree item of the extent at `bytenr` (keyed by the extent's start:
    /// checksums, MACs). They belong to the extent and go with it, whoever drops the last
    /// reference: a file's own change or a background tree drop (which knows no files).
    fn delete_extent_sums(&mut self, bytenr: u64) -> Result<()> {
        if !self.has_tree(tree_id::CSUM_TREE) {
            return Ok(());
        }
        let keys: Vec<Key> = self
            .range(
                tree_id::CSUM_TREE,
                Key::new(bytenr, 0, 0)..=Key::new(bytenr, u8::MAX, u64::MAX),
            )?
            .map(|item| item.map(|(k, _)| k))
            .collect::<Result<_>>()?;
        for k in keys {
            self.tree_op(tree_id::CSUM_TREE, |t, r| {
                btree::delete(t, r, tree_id::CSUM_TREE, &k)
            })?;
        }
        Ok(())
    }

    /// Drops `n` references held by `owner`; the extent is freed when its count reaches zero,
    /// and its checksum-tree items with it.
    pub fn drop_data_ref(
        &mut self,
        bytenr: u64,
        len: u64,
        owner: DataRefOwner,
        n: u64,
    ) -> Result<()> {
        let e = self.extent_checked(bytenr, len)?;
        if n == 0 {
            return Ok(());
        }
        self.change_backref(bytenr, owner, -(n as i64))?;
        if e.refs < n {
            return Err(Error::Corrupt(format!(
                "extent {bytenr} has {} references, dropping {n}",
                e.refs
            )));
        }
        if e.refs == n {
            let key = Key::new(bytenr, item_type::EXTENT_ITEM, len);
            self.tree_op(tree_id::EXTENT_TREE, |t, r| {
                btree::delete(t, r, tree_id::EXTENT_TREE, &key)
            })?;
            self.delete_extent_sums(bytenr)?;
            if self.new_data.remove(&bytenr) {
                self.alloc.free_now(bytenr, len)
            } else {
                // The generation that wrote the extent is not recorded: any reader holds it.
                self.alloc.pin(bytenr, len, self.generation, 0)
            }
        } else {
            self.set_extent_refs(&e, e.refs - n)
        }
    }

    fn set_extent_refs(&mut self, e: &DataExtent, refs: u64) -> Result<()> {
        let key = Key::new(e.bytenr, item_type::EXTENT_ITEM, e.len);
        let v = encode_extent(refs);
        self.tree_op(tree_id::EXTENT_TREE, |t, r| {
            btree::insert(t, r, tree_id::EXTENT_TREE, key, &v)
        })
    }

    /// Changes one owner's back-reference count; refuses to take it below zero.
    fn change_backref(&mut self, bytenr: u64, owner: DataRefOwner, delta: i64) -> Result<()> {
        let key = Key::new(bytenr, item_type::EXTENT_DATA_REF, owner_hash(&owner));
        let mut entries = match self.get(tree_id::EXTENT_TREE, &key)? {
            Some(v) => decode_entries(&key, &v)?,
            None => Vec::new(),
        };
        let at = entries.binary_search_by(|(o, _)| o.cmp(&owner));
        let have = at.map_or(0, |i| entries[i].1);
        let now = have as i64 + delta;
        if now < 0 {
            return Err(Error::InvalidRequest(format!(
                "{owner:?} holds {have} references to extent {bytenr}, cannot drop {}",
                -delta
            )));
        }
        match (at, now) {
            (Ok(i), 0) => {
                entries.remove(i);
            }
            (Ok(i), n) => entries[i].1 = n as u64,
            (Err(i), n) => entries.insert(i, (owner, n as u64)),
        }
        if entries.is_empty() {
            self.tree_op(tree_id::EXTENT_TREE, |t, r| {
                btree::delete(t, r, tree_id::EXTENT_TREE, &key)
            })?;
            Ok(())
        } else {
            let v = encode_entries(&entries);
            self.tree_op(tree_id::EXTENT_TREE, |t, r| {
                btree::insert(t, r, tree_id::EXTENT_TREE, key, &v)
            })
        }
    }

    /// The data references a leaf's items carry, by the registered parser.
    fn leaf_data_refs(&self, leaf: &Node) -> Vec<ItemDataRef> {
        match &self.data_refs {
            Some(p) => leaf.leaf().map_or_else(Vec::new, |l| {
                l.iter().filter_map(|(k, v)| p.data_ref(&k, v)).collect()
            }),
            _ => Vec::new(),
        }
    }

    /// A shared leaf is copied into `tree`: the copy's items hold references of their own.
    pub(super) fn data_refs_for_shared_copy(&mut self, old: &Node, tree: u64) -> Result<()> {
        for r in self.leaf_data_refs(old) {
            let owner = DataRefOwner {
                root: tree,
                inode: r.inode,
                offset: r.offset,
            };
            self.add_data_ref(r.bytenr, r.len, owner, 1)?;
        }
        Ok(())
    }

    /// An unshared leaf owned by another tree is copied into `tree`: its references move.
    pub(super) fn data_refs_move(&mut self, old: &Node, tree: u64) -> Result<()> {
        if old.owner == tree {
            return Ok(());
        }
        for r in self.leaf_data_refs(old) {
            let from = DataRefOwner {
                root: old.owner,
                inode: r.inode,
                offset: r.offset,
            };
            let to = DataRefOwner { root: tree, ..from };
            self.change_backref(r.bytenr, from, -1)?;
            self.change_backref(r.bytenr, to, 1)?;
        }
        Ok(())
    }

    /// A leaf's last reference went: its items' references go with it.
    pub(super) fn data_refs_for_freed_leaf(&mut self, old: &Node) -> Result<()> {
        for r in self.leaf_data_refs(old) {
            let owner = DataRefOwner {
                root: old.owner,
                inode: r.inode,
                offset: r.offset,
            };
            self.drop_data_ref(r.bytenr, r.len, owner, 1)?;
        }
        Ok(())
    }
}

/// Recomputed data references of a set of leaves, for the checker: (extent, owner) -> count.
pub(crate) fn expected_backrefs(
    parser: &dyn DataRefs,
    leaves: &[Arc<Node>],
) -> BTreeMap<(u64, DataRefOwner), (u64, u64)> {
    let mut out: BTreeMap<(u64, DataRefOwner), (u64, u64)> = BTreeMap::new();
    for leaf in leaves {
        for (k, v) in leaf.leaf().into_iter().flat_map(|l| l.iter()) {
            if let Some(r) = parser.data_ref(&k, v) {
                let o = DataRefOwner {
                    root: leaf.owner,
                    inode: r.inode,
                    offset: r.offset,
                };
                out.entry((r.bytenr, o)).or_insert((r.len, 0)).1 += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn entries_round_trip(mut owners in proptest::collection::btree_map((any::<u64>(), any::<u64>(), any::<u64>()), 1u64..9, 1..5)) {
            // One bucket holds owners of one hash: give them all the first owner's hash by
            // checking decode against each owner's own key.
            let (first, n) = owners.pop_first().unwrap();
            let o = DataRefOwner { root: first.0, inode: first.1, offset: first.2 };
            let key = Key::new(1 << 20, item_type::EXTENT_DATA_REF, owner_hash(&o));
            let v = encode_entries(&[(o, n)]);
            prop_assert_eq!(decode_entries(&key, &v).unwrap(), vec![(o, n)]);
            // Under any other owner's hash the entry is refused.
            for (x, _) in owners {
                let other = DataRefOwner { root: x.0, inode: x.1, offset: x.2 };
                let k2 = Key::new(1 << 20, item_type::EXTENT_DATA_REF, owner_hash(&other));
                prop_assert!(decode_entries(&k2, &v).is_err());
            }
        }

        #[test]
        fn random_values_never_panic(v in proptest::collection::vec(any::<u8>(), 0..200), off in any::<u64>()) {
            let key = Key::new(1, item_type::EXTENT_DATA_REF, off);
            let _ = decode_entries(&key, &v);
            let _ = decode_extent(&key, &v);
        }
    }

    #[test]
    fn owner_hash_is_stable() {
        // Fixed value: changing the function would orphan every back-reference on disk.
        let o = DataRefOwner {
            root: 256,
            inode: 257,
            offset: 4096,
        };
        assert_eq!(owner_hash(&o), 0xa9edcb0fa8019cd2);
        assert_ne!(owner_hash(&o), owner_hash(&DataRefOwner { offset: 0, ..o }));
        assert_ne!(
            owner_hash(&o),
            owner_hash(&DataRefOwner {
                root: 257,
                inode: 256,
                ..o
            })
        );
    }

    use crate::crash::SplitMix64;
    use crate::device::MemDevice;
    use crate::txn::{MkfsOptions, Store};

    /// A file extent item as a filesystem would keep it: key (inode, 1, file offset), value
    /// (extent bytenr, extent length, offset inside the extent).
    struct FileExtents;

    impl DataRefs for FileExtents {
        fn data_ref(&self, key: &Key, value: &[u8]) -> Option<ItemDataRef> {
            (key.item_type == 1 && value.len() == 24).then(|| ItemDataRef {
                bytenr: le64(&value[0..8]),
                len: le64(&value[8..16]),
                inode: key.objectid,
                offset: key.offset.wrapping_sub(le64(&value[16..24])),
            })
        }
    }

    fn item(bytenr: u64, len: u64, inner: u64) -> Vec<u8> {
        [bytenr, len, inner]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect()
    }

    fn opts() -> MkfsOptions {
        MkfsOptions {
            node_size: 4096,
            metadata_percent: 30,
            ..MkfsOptions::default()
        }
    }

    #[test]
    fn refs_and_backrefs_count_and_free() {
        let store = Store::create(Arc::new(MemDevice::new(32 << 20)), opts()).unwrap();
        let data_before = store.stats().data;
        let a = DataRefOwner {
            root: 256,
            inode: 257,
            offset: 0,
        };
        let b = DataRefOwner {
            root: 256,
            inode: 300,
            offset: 8192,
        };
        let mut t = store.begin().unwrap();
        let e = t.alloc_data_extent(16384, a).unwrap();
        t.add_data_ref(e, 16384, b, 2).unwrap();
        assert!(
            t.add_data_ref(e, 4096, b, 1).is_err(),
            "wrong length refused"
        );
        t.commit().unwrap();
        let r = store.read();
        assert_eq!(
            r.data_extent(e).unwrap(),
            Some(DataExtent {
                bytenr: e,
                len: 16384,
                refs: 3
            })
        );
        assert_eq!(r.data_backrefs(e).unwrap(), vec![(a, 1), (b, 2)]);
        drop(r);
        assert_eq!(store.stats().data.used(), data_before.used() + 16384);
        store.check().unwrap();
        let mut t = store.begin().unwrap();
        assert!(
            t.drop_data_ref(e, 16384, a, 2).is_err(),
            "more than held refused"
        );
        drop(t);
        let mut t = store.begin().unwrap();
        t.drop_data_ref(e, 16384, b, 2).unwrap();
        t.drop_data_ref(e, 16384, a, 1).unwrap();
        assert_eq!(t.data_extent(e).unwrap(), None);
        t.commit().unwrap();
        store.check().unwrap();
        assert_eq!(store.stats().data, data_before);
    }

    /// Files in a tree, snapshots of it, writes and deletes in all of them, trees dropped in
    /// random order: after every commit the back-references equal what the leaf items say (the
    /// checker recomputes them), and at the end every extent is freed.
    #[test]
    fn backrefs_stay_exact_across_snapshots() {
        for seed in 0..2 {
            let mut rng = SplitMix64::new(seed + 100);
            let store = Store::create(Arc::new(MemDevice::new(64 << 20)), opts()).unwrap();
            store.set_data_refs(Arc::new(FileExtents));
            let before = store.stats();
            let mut trees = vec![256u64];
            let mut t = store.begin().unwrap();
            t.create_tree(256).unwrap();
            t.commit().unwrap();
            for round in 0..10u64 {
                let mut t = store.begin().unwrap();
                if round % 3 == 2 {
                    let src = trees[rng.below(trees.len() as u64) as usize];
                    let dst = 257 + round;
                    t.snapshot_tree(src, dst).unwrap();
                    trees.push(dst);
                }
                for &tree in &trees {
                    for _ in 0..60 {
                        let inode = 257 + rng.below(5);
                        let off = rng.below(40) * 4096;
                        let key = Key::new(inode, 1, off);
                        let old = t.get(tree, &key).unwrap();
                        let replace = rng.below(3) != 0;
                        if replace {
                            // Point part of a new two-block extent at this offset.
                            let inner = if off >= 4096 { rng.below(2) * 4096 } else { 0 };
                            let owner = DataRefOwner {
                                root: tree,
                                inode,
                                offset: off - inner,
                            };
                            let e = t.alloc_data_extent(8192, owner).unwrap();
                            t.insert(tree, key, &item(e, 8192, inner)).unwrap();
                        } else {
                            t.delete(tree, &key).unwrap();
                        }
                        if let Some(v) = old {
                            let r = FileExtents.data_ref(&key, &v).unwrap();
                            let owner = DataRefOwner {
                                root: tree,
                                inode,
                                offset: r.offset,
                            };
                            t.drop_data_ref(r.bytenr, r.len, owner, 1).unwrap();
                        }
                    }
                }
                t.commit().unwrap();
                store.check().unwrap();
            }
            // Every extent lists its owners.
            let r = store.read();
            let some_tree = trees[0];
            if let Some(x) = r.range(some_tree, ..).unwrap().next() {
                let (k, v) = x.unwrap();
                let d = FileExtents.data_ref(&k, &v).unwrap();
                let owners = r.data_backrefs(d.bytenr).unwrap();
                assert!(
                    owners.iter().any(|(o, _)| o.inode == k.objectid),
                    "{owners:?}"
                );
            }
            drop(r);
            while !trees.is_empty() {
                let id = trees.remove(rng.below(trees.len() as u64) as usize);
                let mut t = store.begin().unwrap();
                t.drop_tree(id).unwrap();
                t.commit().unwrap();
                store.check().unwrap();
            }
            let after = store.stats();
            assert_eq!(after.data, before.data, "seed {seed}");
            assert_eq!(after.metadata.used(), before.metadata.used(), "seed {seed}");
        }
    }
}
