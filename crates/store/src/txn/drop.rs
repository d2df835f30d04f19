//! Background tree deletion: dropping a big tree returns at once, and its blocks are released a
//! budget at a time by later transactions, resumable after a crash or a remount.
//!
//! [`WriteTxn::drop_tree_background`] takes the tree out of the namespace (its root item goes) and
//! records a *drop item* in the root tree holding the tree's root and a progress key. The drop
//! item now holds the reference the root item held, so nothing is freed yet and every count
//! stays exact. [`WriteTxn::continue_tree_drops`] then walks the tree left to right the way
//! btrfs drops a snapshot (`walk_down_tree`/`walk_up_tree` with `drop_progress`): a child that is
//! a leaf, or that is shared with another tree, loses the dropped tree's reference through the
//! same delayed-ref path [`WriteTxn::drop_tree`] uses (so a leaf whose last reference goes drops
//! its data extent references through the registered [`super::DataRefs`] parser); an internal
//! child held only by the dropped tree is entered instead, so one step never frees more than its
//! budget. A node is freed once every child of it is released. The progress key advances with
//! the work in the same transaction, so a crash or remount resumes exactly where the last commit
//! left off.
//!
//! Progress key `K`: every child whose key range lies wholly below `K` has been released; the
//! child whose range holds `K` is either untouched or entered (then held only by the dropped tree,
//! since nothing can add a reference to a block of a tree that left the namespace); everything
//! above is untouched. The checker ([`ReadTxn::check`]) counts references of a pending drop with
//! that rule, so every committed state between steps passes it. The item layout is in
//! docs/FORMAT-trees.md.

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::Arc;

use super::{ReadTxn, Store, WriteTxn, le64, shareable};
use crate::btree::{self, NodeRead};
use crate::error::{Error, Result};
use crate::key::{Key, item_type, objectid};
use crate::node::Node;
use crate::superblock::{MAX_TREE_LEVEL, TreeRoot};

/// What one call of [`WriteTxn::continue_tree_drops`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DropProgress {
    /// Tree block references released: blocks freed, or shared blocks whose count went down.
    pub released: u64,
    /// Dropped trees whose last block was released by this call.
    pub finished: usize,
    /// Dropped trees still holding blocks after this call.
    pub pending: usize,
}

impl DropProgress {
    /// Whether no dropped tree holds blocks any more.
    pub fn is_done(&self) -> bool {
        self.pending == 0
    }
}

/// What is still waiting to be freed in the background.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PendingDeletion {
    /// Dropped trees not yet fully released.
    pub trees: usize,
    /// Tree block bytes they still hold, estimated from the fan-out along each drop's current
    /// position; blocks shared with other trees below that position count as if they were not,
    /// so this is an upper estimate of what will be freed.
    pub bytes_estimate: u64,
}

/// Version of the drop item's layout.
pub const DROP_ITEM_VERSION: u8 = 1;
/// Bytes of an encoded drop item.
pub const DROP_ITEM_SIZE: usize = 72;

/// One pending drop, as its item in the root tree records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DropItem {
    /// The id the tree had (for reports; the id may be reused at once).
    pub tree: u64,
    /// The dropped tree's root, as its root item had it.
    pub root: TreeRoot,
    /// Every child whose key range lies wholly below this key has been released.
    pub progress: Key,
    /// Block references released so far.
    pub released: u64,
}

impl DropItem {
    /// version (u8), 7 zero bytes, tree id (u64), root bytenr (u64), root generation (u64), root
    /// level (u8), 7 zero bytes, progress key (17), 7 zero bytes, released (u64); little-endian.
    pub fn encode(&self) -> [u8; DROP_ITEM_SIZE] {
        let mut b = [0u8; DROP_ITEM_SIZE];
        b[0] = DROP_ITEM_VERSION;
        b[8..16].copy_from_slice(&self.tree.to_le_bytes());
        b[16..24].copy_from_slice(&self.root.bytenr.to_le_bytes());
        b[24..32].copy_from_slice(&self.root.generation.to_le_bytes());
        b[32] = self.root.level;
        b[40..57].copy_from_slice(&self.progress.encode());
        b[64..72].copy_from_slice(&self.released.to_le_bytes());
        b
    }

    /// Decodes and checks the item stored under `key`.
    pub fn decode(key: &Key, b: &[u8]) -> Result<DropItem> {
        let bad = |why: &str| Error::Corrupt(format!("drop item {key:?}: {why}"));
        if key.objectid != objectid::DROP_QUEUE || key.item_type != item_type::DROP_ITEM {
            return Err(bad("not a drop item key"));
        }
        if b.len() != DROP_ITEM_SIZE {
            return Err(bad(&format!("{} bytes", b.len())));
        }
        if b[0] != DROP_ITEM_VERSION {
            return Err(bad(&format!("version {}", b[0])));
        }
        if [&b[1..8], &b[33..40], &b[57..64]]
            .iter()
            .any(|r| r.iter().any(|&x| x != 0))
        {
            return Err(bad("non-zero reserved bytes"));
        }
        let d = DropItem {
            tree: le64(&b[8..16]),
            root: TreeRoot {
                bytenr: le64(&b[16..24]),
                generation: le64(&b[24..32]),
                level: b[32],
            },
            progress: Key::decode(&b[40..57]).ok_or_else(|| bad("short progress key"))?,
            released: le64(&b[64..72]),
        };
        if !shareable(d.tree) {
            return Err(bad(&format!("tree {} cannot be dropped", d.tree)));
        }
        if d.root.bytenr == 0 || !d.root.bytenr.is_multiple_of(4096) {
            return Err(bad(&format!("root at {}", d.root.bytenr)));
        }
        if d.root.level >= MAX_TREE_LEVEL {
            return Err(bad(&format!("root level {}", d.root.level)));
        }
        Ok(d)
    }
}

fn drop_key(seq: u64) -> Key {
    Key::new(objectid::DROP_QUEUE, item_type::DROP_ITEM, seq)
}

/// Whether a root-tree key is a drop item's (the root tree holds root items and these).
pub(crate) fn is_drop_key(key: &Key) -> bool {
    key.objectid == objectid::DROP_QUEUE && key.item_type == item_type::DROP_ITEM
}

/// The pending drops in a root tree, oldest first.
pub(crate) fn pending<S: NodeRead + ?Sized>(
    s: &S,
    root_tree: &TreeRoot,
) -> Result<Vec<(Key, DropItem)>> {
    let lo = drop_key(0);
    let hi = drop_key(u64::MAX);
    let mut out = Vec::new();
    for item in btree::range(s, root_tree, Bound::Included(lo), Bound::Included(hi))? {
        let (key, value) = item?;
        out.push((key, DropItem::decode(&key, &value)?));
    }
    Ok(out)
}

/// One node on the way from a drop's root to its position.
struct PathNode {
    node: Arc<Node>,
    /// The first key of the next subtree to the right (`None`: the tree's end).
    bound: Option<Key>,
}

impl WriteTxn<'_> {
    /// Deletes a subvolume tree in the background: the tree leaves the namespace now (its id may
    /// be reused at once), and its blocks are released by later
    /// [`WriteTxn::continue_tree_drops`] calls, in this or later transactions, resuming after a
    /// crash or remount. Blocks shared with other trees keep their counts right.
    pub fn drop_tree_background(&mut self, tree: u64) -> Result<()> {
        if !shareable(tree) {
            return Err(Error::InvalidRequest(format!(
                "tree {tree} cannot be dropped"
            )));
        }
        let item = *self.roots.get(&tree).ok_or(Error::NoSuchTree(tree))?;
        if item.root.bytenr != 0 {
            // The drop item takes over the reference the root item held.
            let seq = match pending(self, &self.root_tree)?.last() {
                Some((k, _)) => k
                    .offset
                    .checked_add(1)
                    .ok_or_else(|| Error::Corrupt("drop queue sequence exhausted".into()))?,
                None => 0,
            };
            let d = DropItem {
                tree,
                root: item.root,
                progress: Key::MIN,
                released: 0,
            };
            self.put_drop(seq, Some(&d))?;
        }
        self.roots.remove(&tree);
        Ok(())
    }

    /// Releases up to about `budget` tree block references of dropped trees, oldest drop first
    /// (a step may go over by the height of a tree: the nodes whose last child it released).
    /// The work becomes durable with this transaction's commit.
    pub fn continue_tree_drops(&mut self, budget: u64) -> Result<DropProgress> {
        // Freeing copies paths of the root and extent trees before it frees anything: like any
        // delete it may use the metadata reserve.
        let was = self.use_reserve;
        self.use_reserve = true;
        let r = self.continue_drops_inner(budget);
        self.use_reserve = was;
        r
    }

    fn continue_drops_inner(&mut self, budget: u64) -> Result<DropProgress> {
        let items = pending(self, &self.root_tree)?;
        let mut progress = DropProgress {
            pending: items.len(),
            ..DropProgress::default()
        };
        for (key, mut d) in items {
            if progress.released >= budget {
                break;
            }
            // Settle pending count changes first, so the stored counts this walk reads are the
            // counts (a block is visited once per drop, so its own changes need no settling).
            self.run_delayed_refs()?;
            let before = d.released;
            let done = self.drop_some(&mut d, budget - progress.released)?;
            progress.released += d.released - before;
            if done {
                self.put_drop(key.offset, None)?;
                progress.finished += 1;
                progress.pending -= 1;
            } else {
                self.put_drop(key.offset, Some(&d))?;
            }
        }
        Ok(progress)
    }

    fn put_drop(&mut self, seq: u64, d: Option<&DropItem>) -> Result<()> {
        let key = drop_key(seq);
        match d {
            Some(d) => {
                let v = d.encode();
                self.tree_op(crate::key::tree_id::ROOT_TREE, |t, r| {
                    btree::insert(t, r, crate::key::tree_id::ROOT_TREE, key, &v)
                })
            }
            None => self
                .tree_op(crate::key::tree_id::ROOT_TREE, |t, r| {
                    btree::delete(t, r, crate::key::tree_id::ROOT_TREE, &key)
                })
                .map(|_| ()),
        }
    }

    /// Releases references of one drop until `budget` is spent or the tree is gone; returns
    /// whether it is gone.
    fn drop_some(&mut self, d: &mut DropItem, budget: u64) -> Result<bool> {
        let start = d.released;
        let root = d.root;
        let shared = self.refcount(root.bytenr)?;
        if shared < 1 {
            return Err(Error::Corrupt(format!(
                "dropped tree {} has root {} with count {shared}",
                d.tree, root.bytenr
            )));
        }
        if root.level == 0 || shared > 1 {
            // A leaf root, or a root another tree shares: one reference to let go.
            self.add_delayed(root.bytenr, root.generation, root.level, -1);
            d.released += 1;
            return Ok(true);
        }
        while d.released - start < budget {
            // Down from the root to the child that holds the progress key.
            let mut path = vec![PathNode {
                node: self.read(root.bytenr, root.generation, root.level)?,
                bound: None,
            }];
            loop {
                let Some(here) = path.last() else {
                    return Err(Error::Corrupt("drop path emptied".into()));
                };
                let n = &here.node;
                let ptrs = n.ptrs();
                let i = n.child_index(&d.progress);
                let child = ptrs[i];
                let bound = match ptrs.get(i + 1) {
                    Some(next) => {
                        if here.bound.is_some_and(|b| next.key >= b) || next.key <= d.progress {
                            return Err(Error::Corrupt(format!(
                                "node {} of dropped tree {}: keys out of their parent's range",
                                n.bytenr, d.tree
                            )));
                        }
                        Some(next.key)
                    }
                    None => here.bound,
                };
                let level = n.level - 1;
                let count = if level == 0 {
                    1
                } else {
                    self.refcount(child.bytenr)?
                };
                if count < 1 {
                    return Err(Error::Corrupt(format!(
                        "block {} of dropped tree {} has count {count}",
                        child.bytenr, d.tree
                    )));
                }
                if level > 0 && count == 1 {
                    // Held by this tree alone: enter it, so its children go one by one.
                    let node = self.read(child.bytenr, child.generation, level)?;
                    path.push(PathNode { node, bound });
                    continue;
                }
                // A leaf (freed with its data references when this was its last reference) or
                // a shared subtree (its count goes down by one).
                self.add_delayed(child.bytenr, child.generation, level, -1);
                d.released += 1;
                // Nodes whose last child that was are released too: the progress key passes
                // their end in the same commit.
                while let Some(p) = path.last()
                    && p.bound == bound
                {
                    self.free_block(p.node.bytenr, p.node.generation)?;
                    d.released += 1;
                    path.pop();
                }
                match bound {
                    Some(k) => d.progress = k,
                    None => return Ok(true),
                }
                break;
            }
        }
        Ok(false)
    }
}

impl Store {
    /// Dropped trees whose blocks are not all released yet, in the last committed generation.
    pub fn pending_deletion(&self) -> Result<PendingDeletion> {
        let r = self.read();
        let items = pending(&r, &r.state.root_tree)?;
        let mut out = PendingDeletion {
            trees: items.len(),
            bytes_estimate: 0,
        };
        let ns = self.shared.node_size as u64;
        for (_, d) in items {
            out.bytes_estimate = out
                .bytes_estimate
                .saturating_add(estimate_blocks(&r, &d)?.saturating_mul(ns));
        }
        Ok(out)
    }
}

/// Blocks a drop still holds, estimated from the nodes on the way to its position: each level's
/// untouched subtrees are taken to be as wide as the path's nodes below them.
fn estimate_blocks(r: &ReadTxn, d: &DropItem) -> Result<u64> {
    let mut widths = Vec::new();
    let mut node = r.read(d.root.bytenr, d.root.generation, d.root.level)?;
    loop {
        if node.level == 0 {
            break;
        }
        let i = node.child_index(&d.progress);
        // (children to the right of the position, fan-out)
        widths.push(((node.len() - i - 1) as u64, node.len() as u64));
        let p = node.ptrs()[i];
        node = r.read(p.bytenr, p.generation, node.level - 1)?;
    }
    // Bottom up: the leaf at the position, then each level's node, its right siblings' subtrees
    // and the part below it.
    let mut below: u64 = 1;
    let mut subtree: u64 = 1;
    for &(right, fanout) in widths.iter().rev() {
        below = below
            .saturating_add(right.saturating_mul(subtree))
            .saturating_add(1);
        subtree = subtree.saturating_mul(fanout).saturating_add(1);
    }
    Ok(below)
}

impl ReadTxn {
    /// For the checker: the references pending drops still hold, with the leaves they hold
    /// (their items still carry data references).
    pub(super) fn count_drop_refs(
        &self,
        refs: &mut HashMap<u64, u64>,
        leaves: &mut Vec<Arc<Node>>,
    ) -> Result<()> {
        for (_, d) in pending(self, &self.state.root_tree)? {
            self.count_partial(d.root, &d.progress, refs, leaves)?;
        }
        Ok(())
    }

    /// Counts the references of a subtree whose children below `progress` were released.
    fn count_partial(
        &self,
        at: TreeRoot,
        progress: &Key,
        refs: &mut HashMap<u64, u64>,
        leaves: &mut Vec<Arc<Node>>,
    ) -> Result<()> {
        if at.level == 0 {
            return self.count_refs(&at, true, refs, leaves);
        }
        let n = refs.entry(at.bytenr).or_insert(0);
        *n += 1;
        if *n > 1 {
            // Shared, so never entered: another tree counted what lies below.
            return Ok(());
        }
        let node = self.read(at.bytenr, at.generation, at.level)?;
        let i = node.child_index(progress);
        for (j, p) in node.ptrs().iter().enumerate().skip(i) {
            let child = TreeRoot {
                bytenr: p.bytenr,
                generation: p.generation,
                level: at.level - 1,
            };
            if j == i {
                self.count_partial(child, progress, refs, leaves)?;
            } else {
                self.count_refs(&child, true, refs, leaves)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crash::SplitMix64;
    use crate::device::MemDevice;
    use crate::txn::MkfsOptions;
    use proptest::prelude::*;

    const MIB: usize = 1 << 20;

    fn opts() -> MkfsOptions {
        MkfsOptions {
            node_size: 4096,
            metadata_percent: 40,
            ..MkfsOptions::default()
        }
    }

    fn k(i: u64) -> Key {
        Key::new(i, 1, i * 7)
    }

    proptest! {
        #[test]
        fn drop_item_round_trips(tree in 256u64.., b in 1u64..1 << 40, g: u64, l in 0u8..MAX_TREE_LEVEL,
                                 p: (u64, u8, u64), rel: u64, seq: u64) {
            let d = DropItem {
                tree,
                root: TreeRoot { bytenr: b * 4096, generation: g, level: l },
                progress: Key::new(p.0, p.1, p.2),
                released: rel,
            };
            prop_assert_eq!(DropItem::decode(&drop_key(seq), &d.encode()).unwrap(), d);
        }

        #[test]
        fn random_drop_items_never_panic(v in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = DropItem::decode(&drop_key(1), &v);
        }
    }

    #[test]
    fn bad_drop_items_are_refused() {
        let d = DropItem {
            tree: 300,
            root: TreeRoot {
                bytenr: 1 << 20,
                generation: 4,
                level: 2,
            },
            progress: Key::new(5, 1, 2),
            released: 9,
        };
        let good = d.encode();
        assert!(DropItem::decode(&drop_key(0), &good).is_ok());
        assert!(DropItem::decode(&Key::new(300, item_type::ROOT_ITEM, 0), &good).is_err());
        assert!(DropItem::decode(&drop_key(0), &good[..71]).is_err());
        for (at, v) in [(0, 2u8), (3, 1), (16, 1), (32, MAX_TREE_LEVEL), (60, 1)] {
            let mut b = good;
            b[at] = v;
            assert!(DropItem::decode(&drop_key(0), &b).is_err(), "byte {at}");
        }
        let mut b = good;
        b[8..16].copy_from_slice(&5u64.to_le_bytes());
        assert!(DropItem::decode(&drop_key(0), &b).is_err(), "store tree");
    }

    /// A background drop releases exactly what `drop_tree` would: both stores end with the same
    /// space figures, every commit between steps passes the checker, steps keep to their budget,
    /// and a snapshot sharing the tree keeps its contents.
    #[test]
    fn background_drop_frees_what_drop_tree_frees() {
        let build = || {
            let store = Store::create(Arc::new(MemDevice::new(32 * MIB)), opts()).unwrap();
            let before = store.stats();
            let mut t = store.begin().unwrap();
            t.create_tree(256).unwrap();
            for i in 0..6000 {
                t.insert(256, k(i), &[i as u8; 60]).unwrap();
            }
            t.commit().unwrap();
            let mut t = store.begin().unwrap();
            t.snapshot_tree(256, 257).unwrap();
            for i in (0..6000).step_by(17) {
                t.insert(256, k(i), b"changed in 256").unwrap();
            }
            t.commit().unwrap();
            (store, before)
        };
        let (sync, before) = build();
        let mut t = sync.begin().unwrap();
        t.drop_tree(256).unwrap();
        t.commit().unwrap();
        let (bg, _) = build();
        let mut t = bg.begin().unwrap();
        t.drop_tree_background(256).unwrap();
        assert!(!t.has_tree(256));
        t.commit().unwrap();
        let p = bg.pending_deletion().unwrap();
        assert_eq!(p.trees, 1);
        assert!(p.bytes_estimate >= 4096 * 20, "{p:?}");
        bg.check().unwrap();
        let mut steps = 0;
        loop {
            let mut t = bg.begin().unwrap();
            let got = t.continue_tree_drops(5).unwrap();
            // Over the budget by at most the nodes whose last child went.
            assert!(got.released <= 5 + 3, "{got:?}");
            t.commit().unwrap();
            bg.check().unwrap();
            steps += 1;
            if got.is_done() {
                break;
            }
            assert_eq!(got.pending, 1);
        }
        assert!(steps > 5, "only {steps} steps");
        assert_eq!(bg.pending_deletion().unwrap(), PendingDeletion::default());
        // Let pinned space go, in both.
        for s in [&sync, &bg] {
            s.begin().unwrap().commit().unwrap();
            s.begin().unwrap().commit().unwrap();
        }
        assert_eq!(bg.stats().metadata.used(), sync.stats().metadata.used());
        let r = bg.read();
        assert_eq!(r.range(257, ..).unwrap().count(), 6000);
        assert_eq!(
            r.get(257, &k(17)).unwrap().as_deref(),
            Some(&[17u8; 60][..])
        );
        drop(r);
        let mut t = bg.begin().unwrap();
        t.drop_tree(257).unwrap();
        t.commit().unwrap();
        bg.begin().unwrap().commit().unwrap();
        bg.begin().unwrap().commit().unwrap();
        assert_eq!(bg.stats().metadata.used(), before.metadata.used());
        bg.check().unwrap();
    }

    /// A tree made, filled, dropped and released within one transaction, an empty tree, and an
    /// id reused at once: nothing leaks, nothing is freed twice, and the estimate shrinks as the
    /// work goes on.
    #[test]
    fn drop_in_the_same_transaction_and_id_reuse() {
        let store = Store::create(Arc::new(MemDevice::new(32 * MIB)), opts()).unwrap();
        let before = store.stats();
        let mut t = store.begin().unwrap();
        t.create_tree(256).unwrap();
        t.create_tree(257).unwrap();
        for i in 0..3000 {
            t.insert(256, k(i), &[3; 50]).unwrap();
        }
        t.drop_tree_background(256).unwrap();
        t.drop_tree_background(257).unwrap();
        assert!(matches!(
            t.drop_tree_background(256),
            Err(Error::NoSuchTree(256))
        ));
        // The id is free again at once.
        t.create_tree(256).unwrap();
        t.insert(256, k(1), b"new tree").unwrap();
        let p = t.continue_tree_drops(10).unwrap();
        assert_eq!((p.pending, p.finished), (1, 0), "{p:?}");
        t.commit().unwrap();
        store.check().unwrap();
        let mut last = store.pending_deletion().unwrap();
        assert_eq!(last.trees, 1);
        loop {
            let mut t = store.begin().unwrap();
            let p = t.continue_tree_drops(8).unwrap();
            t.commit().unwrap();
            store.check().unwrap();
            let now = store.pending_deletion().unwrap();
            assert!(
                now.bytes_estimate <= last.bytes_estimate,
                "{now:?} {last:?}"
            );
            last = now;
            if p.is_done() {
                break;
            }
        }
        assert_eq!(last, PendingDeletion::default());
        assert_eq!(
            store.read().get(256, &k(1)).unwrap().as_deref(),
            Some(&b"new tree"[..])
        );
        let mut t = store.begin().unwrap();
        t.drop_tree(256).unwrap();
        t.commit().unwrap();
        store.begin().unwrap().commit().unwrap();
        store.begin().unwrap().commit().unwrap();
        assert_eq!(store.stats().metadata.used(), before.metadata.used());
        // Store trees are not dropped.
        let mut t = store.begin().unwrap();
        assert!(
            t.drop_tree_background(crate::key::tree_id::EXTENT_TREE)
                .is_err()
        );
    }

    /// Drops interleaved with writes, snapshots and other drops, with a remount between steps:
    /// every state passes the checker, and the end state is the starting one.
    #[test]
    fn drops_resume_after_remount_and_interleave() {
        let dev = Arc::new(MemDevice::new(48 * MIB));
        let mut store = Store::create(dev.clone(), opts()).unwrap();
        let before = store.stats();
        let mut rng = SplitMix64::new(3);
        let mut t = store.begin().unwrap();
        t.create_tree(256).unwrap();
        for i in 0..4000 {
            t.insert(256, k(i), &[1; 40]).unwrap();
        }
        t.commit().unwrap();
        let mut live = vec![256u64];
        for round in 0..30u64 {
            let mut t = store.begin().unwrap();
            if round % 4 == 0 && round < 24 {
                let src = live[rng.below(live.len() as u64) as usize];
                t.snapshot_tree(src, 300 + round).unwrap();
                live.push(300 + round);
            }
            for &tree in &live {
                for _ in 0..20 {
                    t.insert(tree, k(rng.below(5000)), &[round as u8; 50])
                        .unwrap();
                }
            }
            if round % 5 == 4 && live.len() > 1 {
                let at = rng.below(live.len() as u64) as usize;
                t.drop_tree_background(live.remove(at)).unwrap();
            }
            t.continue_tree_drops(1 + rng.below(6)).unwrap();
            t.commit().unwrap();
            store.check().unwrap();
            if round % 7 == 0 {
                drop(store);
                store = Store::open(dev.clone()).unwrap();
            }
        }
        for tree in live {
            let mut t = store.begin().unwrap();
            t.drop_tree_background(tree).unwrap();
            t.commit().unwrap();
        }
        assert!(store.pending_deletion().unwrap().trees > 0);
        loop {
            let mut t = store.begin().unwrap();
            let p = t.continue_tree_drops(7).unwrap();
            t.commit().unwrap();
            store.check().unwrap();
            if p.is_done() {
                break;
            }
        }
        store.begin().unwrap().commit().unwrap();
        store.begin().unwrap().commit().unwrap();
        let after = store.stats();
        assert_eq!(after.metadata.used(), before.metadata.used());
        assert_eq!(after.metadata.free, before.metadata.free);
    }
}
