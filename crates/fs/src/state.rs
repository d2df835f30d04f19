//! The filesystem's mutable state behind one lock: the open write transaction every operation
//! reads and changes, the handle and lookup tables, and the item-level helpers (inodes,
//! directory entries, back-references to parents) the operations are built from.
//!
//! Every operation validates first and changes items after. If a change fails part way (an I/O
//! error, a full device inside the store) the transaction may hold half an operation, so the
//! filesystem stops taking changes and commits nothing more (like ext4's errors=remount-ro):
//! the last commit stays the truth on disk.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use store::{Key, Store, WriteTxn, tree_id};

use crate::error::{Error, Result};
use crate::items::{
    self, DirEntryItem, EMPTY_DIR_OBJECTID, FIRST_DIR_INDEX, InodeItem, InodeRef, ORPHAN_OBJECTID,
    ROOT_OBJECTID, SubvolInfo, name_hash, ty,
};
use crate::types::{Attr, FileKind, Ino, NAME_MAX, OpenFlags, OpenOptions, Timespec};

/// The tree of subvolume 0, the top-level subvolume made by mkfs.
pub(crate) const TREE: u64 = tree_id::FIRST_SUBVOL_TREE;
/// Bits of an inode number that hold the object id.
const OBJECTID_MASK: u64 = (1 << 48) - 1;
/// Highest subvolume number (the top 16 bits of an inode number).
pub(crate) const MAX_SUBVOL: u64 = (1 << 16) - 1;

// Inside `State` an object is named by its global id, the inode number: subvolume in the top
// 16 bits, object id inside that subvolume's tree in the low 48. Item helpers below take keys
// whose object id is such a global id and route them to the subvolume's tree.

/// The subvolume of a global object id.
pub(crate) fn subvol_of(obj: u64) -> u64 {
    obj >> 48
}

/// The tree holding a subvolume's items.
pub(crate) fn subvol_tree(subvol: u64) -> u64 {
    tree_id::FIRST_SUBVOL_TREE + subvol
}

/// The tree holding a global object's items.
pub(crate) fn tree_of(obj: u64) -> u64 {
    subvol_tree(subvol_of(obj))
}

/// The object id inside its subvolume's tree.
pub(crate) fn local(obj: u64) -> u64 {
    obj & OBJECTID_MASK
}

/// The global id of object `local` of `subvol`.
pub(crate) fn global(subvol: u64, local: u64) -> u64 {
    (subvol << 48) | (local & OBJECTID_MASK)
}

/// Where an item of a global key lives: its tree and its key inside that tree.
fn route(key: &Key) -> (u64, Key) {
    (
        tree_of(key.objectid),
        Key::new(local(key.objectid), key.item_type, key.offset),
    )
}
/// Block size of file data and of `st_blksize`.
pub(crate) const BLOCK: u64 = 4096;

/// An open file or directory.
#[derive(Debug, Clone)]
pub(crate) struct Handle {
    pub objectid: u64,
    pub flags: OpenFlags,
    pub dir: bool,
}

pub(crate) struct State {
    store: Arc<Store>,
    txn: Option<WriteTxn<'static>>,
    pub opts: OpenOptions,
    /// Item changes made since open (never reset: a failed operation is one whose count moved).
    pub changes: u64,
    /// `changes` at the last commit.
    pub committed_changes: u64,
    /// `changes` after the last step that leaves the tree whole on its own (a data flush): an
    /// operation that fails after such a step, with nothing changed since, is not half done.
    pub settled_changes: u64,
    /// Why the filesystem stopped taking changes.
    pub failed: Option<String>,
    /// Next object id per subvolume, loaded on first use.
    next_objectid: HashMap<u64, u64>,
    pub handles: HashMap<u64, Handle>,
    next_fh: u64,
    /// Open handles per object id.
    pub opens: HashMap<u64, u64>,
    /// Kernel lookup counts per object id (only with `OpenOptions::lookup_counts`).
    pub lookups: HashMap<u64, u64>,
    /// Buffered file data: object id -> block index -> one block.
    pub dirty: BTreeMap<u64, BTreeMap<u64, Box<[u8]>>>,
    pub dirty_bytes: u64,
    /// Runs of blocks in the flight up now (write-behind): object id -> first block -> end
    /// block. Their data is neither buffered nor mapped until the flight lands; while any is
    /// up ([`State::flight_active`]) nothing may commit, read file data or change a mapping.
    pub in_flight: HashMap<u64, BTreeMap<u64, u64>>,
    /// Deleted subvolumes whose blocks are still being released in the background.
    pub drops_pending: bool,
    /// The filesystem's master keys (shared with [`crate::Filesystem`]).
    pub keyring: Arc<fscrypt::keyring::Keyring>,
    /// Encrypted inodes that are open, or closed with buffered data, and the key pin each
    /// holds until then.
    pub crypt: HashMap<u64, fscrypt::common::CryptCommon>,
}

/// The global object id `ino` names (the inode number itself, checked for shape).
pub(crate) fn objectid(ino: Ino) -> Result<u64> {
    if local(ino) == 0 {
        return Err(Error::NotFound);
    }
    Ok(ino)
}

pub(crate) fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > NAME_MAX {
        return Err(Error::NameTooLong);
    }
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
        return Err(Error::Invalid("bad name"));
    }
    Ok(())
}

impl State {
    pub fn new(store: Arc<Store>, opts: OpenOptions) -> Result<State> {
        let mut s = State {
            store,
            txn: None,
            opts,
            changes: 0,
            committed_changes: 0,
            settled_changes: 0,
            failed: None,
            next_objectid: HashMap::new(),
            handles: HashMap::new(),
            next_fh: 1,
            opens: HashMap::new(),
            lookups: HashMap::new(),
            dirty: BTreeMap::new(),
            dirty_bytes: 0,
            in_flight: HashMap::new(),
            drops_pending: false,
            keyring: Arc::new(fscrypt::keyring::Keyring::default()),
            crypt: HashMap::new(),
        };
        s.drops_pending = s.store.pending_deletion()?.trees > 0;
        s.subvol_info(0)?;
        Ok(s)
    }

    /// A subvolume's counters item.
    pub fn subvol_info(&mut self, subvol: u64) -> Result<SubvolInfo> {
        let key = Key::new(global(subvol, 0), ty::SUBVOL_INFO, 0);
        match self.get(&key)? {
            Some(v) => SubvolInfo::decode(&key, &v),
            None => Err(Error::corrupt(&key, "no subvolume info")),
        }
    }

    /// Object ids handed out so far in subvolume 0 (an upper bound on its inodes).
    pub fn next_objectid_hint(&self) -> u64 {
        self.next_objectid.get(&0).copied().unwrap_or(0)
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The open transaction, begun on first use.
    pub fn txn(&mut self) -> Result<&mut WriteTxn<'static>> {
        let t = match self.txn.take() {
            Some(t) => t,
            None => self.store.begin_owned()?,
        };
        Ok(self.txn.insert(t))
    }

    /// Reads see the open transaction, so they see every change made so far. The key's object
    /// id is global: a subvolume that does not exist has no items.
    pub fn get(&mut self, key: &Key) -> Result<Option<Vec<u8>>> {
        let (tree, k) = route(key);
        let t = self.txn()?;
        if !t.has_tree(tree) {
            return Ok(None);
        }
        Ok(t.get(tree, &k)?)
    }

    /// Items with global keys in `[lo, hi]` (both in one subvolume), in order, with global keys.
    pub fn items(&mut self, lo: Key, hi: Key) -> Result<Vec<(Key, Vec<u8>)>> {
        let subvol = subvol_of(lo.objectid);
        let (tree, lo) = route(&lo);
        let hi = if subvol_of(hi.objectid) == subvol {
            route(&hi).1
        } else {
            Key::new(OBJECTID_MASK, u8::MAX, u64::MAX)
        };
        if !self.txn()?.has_tree(tree) {
            return Ok(Vec::new());
        }
        let mut out = self.items_in(tree, lo, hi, usize::MAX)?;
        for (k, _) in &mut out {
            k.objectid = global(subvol, k.objectid);
        }
        Ok(out)
    }

    pub fn items_in(
        &mut self,
        tree: u64,
        lo: Key,
        hi: Key,
        max: usize,
    ) -> Result<Vec<(Key, Vec<u8>)>> {
        let t = self.txn()?;
        let mut out = Vec::new();
        if !t.has_tree(tree) {
            return Ok(out);
        }
        for r in t.range(tree, lo..=hi)? {
            out.push(r?);
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    /// The last item with a global key in `[lo, hi]` (both in one subvolume), key global.
    pub fn last_item(&mut self, lo: Key, hi: Key) -> Result<Option<(Key, Vec<u8>)>> {
        let subvol = subvol_of(lo.objectid);
        let (tree, lo) = route(&lo);
        let (_, hi) = route(&hi);
        let t = self.txn()?;
        if !t.has_tree(tree) {
            return Ok(None);
        }
        match t.range(tree, lo..=hi)?.next_back() {
            Some(r) => {
                let (mut k, v) = r?;
                k.objectid = global(subvol, k.objectid);
                Ok(Some((k, v)))
            }
            None => Ok(None),
        }
    }

    /// Inserts or replaces an item under a global key.
    pub fn put(&mut self, key: Key, value: &[u8]) -> Result<()> {
        let (tree, k) = route(&key);
        self.put_in(tree, k, value)
    }

    pub fn put_in(&mut self, tree: u64, key: Key, value: &[u8]) -> Result<()> {
        self.changes += 1;
        self.txn()?.insert(tree, key, value)?;
        Ok(())
    }

    /// Deletes the item under a global key.
    pub fn del(&mut self, key: &Key) -> Result<bool> {
        let (tree, k) = route(key);
        self.del_in(tree, &k)
    }

    pub fn del_in(&mut self, tree: u64, key: &Key) -> Result<bool> {
        self.changes += 1;
        Ok(self.txn()?.delete(tree, key)?)
    }

    /// Commits the open transaction if it changed anything. Durable on return.
    pub fn commit(&mut self) -> Result<()> {
        self.check_not_stopped()?;
        self.check_landed()?;
        self.flush_all_data()?;
        if self.changes == self.committed_changes {
            return Ok(());
        }
        if let Some(t) = self.txn.take() {
            let r = t.commit();
            if let Err(e) = &r {
                self.failed = Some(format!("commit failed: {e}"));
            }
            r?;
        }
        self.committed_changes = self.changes;
        Ok(())
    }

    /// Refuses a change when the filesystem is read-only or has stopped taking changes, or when
    /// metadata space is so low that an operation could run out part way.
    /// `obj` is the object the change lands in: a read-only subvolume refuses it.
    pub fn writable(&mut self, obj: u64) -> Result<()> {
        self.check_not_stopped()?;
        if self.opts.read_only || self.subvol_read_only(subvol_of(obj))? {
            return Err(Error::ReadOnly);
        }
        if self.metadata_short()? && self.txn()?.stats().metadata.pinned > 0 {
            // Blocks freed since the last commit come back once it is durable.
            self.commit_to_reclaim()?;
        }
        if self.metadata_short()? {
            return Err(Error::NoSpace);
        }
        Ok(())
    }

    /// Whether metadata space is too low for a whole operation: one changes a handful of items,
    /// and each may copy a path of a few nodes.
    pub fn metadata_short(&mut self) -> Result<bool> {
        let node = self.txn()?.max_value_size() as u64 * 4;
        let st = self.txn()?.stats();
        Ok(st.metadata.free < st.metadata_reserve + 64 * node)
    }

    /// Whether a flight of buffered data is up (taken, not yet landed).
    pub fn flight_active(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// A commit while a flight is up would write extents allocated for no file, and a flush
    /// could map data older than the flight's after it: the lock's users wait for the landing,
    /// and this refuses what slipped past them.
    fn check_landed(&self) -> Result<()> {
        if self.flight_active() {
            return Err(Error::Invalid("commit with buffered data in flight"));
        }
        Ok(())
    }

    /// Commits the tree as it is (buffered file data stays buffered) so that space freed since
    /// the last commit, pinned until then, can be allocated again: what a full filesystem does
    /// before answering ENOSPC.
    pub fn commit_to_reclaim(&mut self) -> Result<()> {
        self.check_landed()?;
        if let Some(t) = self.txn.take() {
            let r = t.commit();
            if let Err(e) = &r {
                self.failed = Some(format!("commit failed: {e}"));
            }
            r?;
            self.committed_changes = self.changes;
        }
        Ok(())
    }

    /// Refuses a change to the filesystem as a whole when it is read-only or stopped.
    pub fn check_writable_fs(&self) -> Result<()> {
        self.check_not_stopped()?;
        if self.opts.read_only {
            return Err(Error::ReadOnly);
        }
        Ok(())
    }

    fn check_not_stopped(&self) -> Result<()> {
        match &self.failed {
            Some(why) => Err(Error::Stopped(why.clone())),
            None => Ok(()),
        }
    }

    /// Like [`State::writable`] for removals (unlink, rmdir): they may use the store's metadata
    /// reserve, so a full filesystem can still be emptied.
    pub fn writable_for_delete(&mut self, obj: u64) -> Result<()> {
        self.check_not_stopped()?;
        if self.opts.read_only || self.subvol_read_only(subvol_of(obj))? {
            return Err(Error::ReadOnly);
        }
        self.txn()?.allow_reserve();
        Ok(())
    }

    // --- Inodes -------------------------------------------------------------------------------

    pub fn inode(&mut self, obj: u64) -> Result<InodeItem> {
        if local(obj) == EMPTY_DIR_OBJECTID {
            return Ok(InodeItem::empty_subvol_dir());
        }
        let key = Key::new(obj, ty::INODE, 0);
        match self.get(&key)? {
            Some(v) => InodeItem::decode(&key, &v),
            None => Err(Error::NotFound),
        }
    }

    pub fn put_inode(&mut self, obj: u64, it: &InodeItem) -> Result<()> {
        if local(obj) == EMPTY_DIR_OBJECTID {
            // The stand-in for a nested subvolume inside a snapshot has no item to change.
            return Err(Error::Perm);
        }
        self.put(Key::new(obj, ty::INODE, 0), &it.encode())
    }

    pub fn attr(&self, obj: u64, it: &InodeItem) -> Attr {
        Attr {
            ino: obj,
            kind: it.kind,
            perm: (it.perm & 0o7777) as u16,
            nlink: it.nlink,
            uid: it.uid,
            gid: it.gid,
            rdev: it.rdev,
            size: it.size,
            // Buffered data counts as soon as it is written (an estimate until it is flushed:
            // an overwrite counts twice), so a file never looks sparse to cp and friends just
            // because its data is still in memory.
            blocks: it
                .bytes
                .saturating_add(self.dirty.get(&obj).map_or(0, |b| b.len() as u64 * BLOCK))
                .div_ceil(512),
            blksize: BLOCK as u32,
            atime: it.atime,
            mtime: it.mtime,
            ctime: it.ctime,
            crtime: it.crtime,
            generation: it.generation,
        }
    }

    pub fn getattr_obj(&mut self, obj: u64) -> Result<Attr> {
        let it = self.inode(obj)?;
        Ok(self.attr(obj, &it))
    }

    /// A new inode of `subvol` with one link (two for a directory) and a fresh object id.
    pub fn new_inode(
        &mut self,
        subvol: u64,
        kind: FileKind,
        perm: u32,
        uid: u32,
        gid: u32,
        rdev: u32,
    ) -> Result<(u64, InodeItem)> {
        let next = match self.next_objectid.get(&subvol) {
            Some(&n) => n,
            None => self.subvol_info(subvol)?.next_objectid,
        };
        if next >= EMPTY_DIR_OBJECTID {
            return Err(Error::NoSpace);
        }
        let obj = global(subvol, next);
        self.next_objectid.insert(subvol, next + 1);
        let info = SubvolInfo {
            next_objectid: next + 1,
        };
        self.put(
            Key::new(global(subvol, 0), ty::SUBVOL_INFO, 0),
            &info.encode(),
        )?;
        let now = Timespec::now();
        let generation = self.txn()?.generation();
        let it = InodeItem {
            kind,
            perm: perm & 0o7777,
            nlink: if kind == FileKind::Dir { 2 } else { 1 },
            uid,
            gid,
            rdev,
            size: 0,
            bytes: 0,
            generation,
            next_index: FIRST_DIR_INDEX,
            flags: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
        };
        self.put_inode(obj, &it)?;
        Ok((obj, it))
    }

    /// Drops the buffered data of `obj` unwritten (its inode is going), and with it the key
    /// pin the data held.
    pub(crate) fn discard_buffered(&mut self, obj: u64) {
        if let Some(blocks) = self.dirty.remove(&obj) {
            self.dirty_bytes -= blocks.len() as u64 * BLOCK;
        }
        self.release_idle_pin(obj);
    }

    /// Removes an inode and everything it owns: items, data references, buffered data.
    pub fn evict(&mut self, obj: u64) -> Result<()> {
        self.discard_buffered(obj);
        let items = self.items(Key::new(obj, 0, 0), Key::new(obj, u8::MAX, u64::MAX))?;
        for (k, v) in items {
            if k.item_type == ty::FILE_EXTENT {
                let fe = items::FileExtent::decode(&k, &v)?;
                self.drop_extent_ref(obj, k.offset, &fe)?;
            }
            self.del(&k)?;
        }
        self.del_in(
            tree_of(obj),
            &Key::new(ORPHAN_OBJECTID, ty::ORPHAN, local(obj)),
        )?;
        Ok(())
    }

    /// An inode whose last link went: removed now, or kept as an orphan while it is open or
    /// known to the kernel.
    pub fn unlinked(&mut self, obj: u64) -> Result<()> {
        if self.in_use(obj) {
            self.put_in(
                tree_of(obj),
                Key::new(ORPHAN_OBJECTID, ty::ORPHAN, local(obj)),
                &items::encode_orphan(),
            )
        } else {
            self.evict(obj)
        }
    }

    pub fn in_use(&self, obj: u64) -> bool {
        self.opens.get(&obj).is_some_and(|&n| n > 0)
            || self.lookups.get(&obj).is_some_and(|&n| n > 0)
    }

    /// Called when an inode loses an open handle or a lookup: evicts an orphan nobody uses.
    pub fn maybe_evict(&mut self, obj: u64) -> Result<()> {
        if self.in_use(obj) || self.opts.read_only || self.failed.is_some() {
            return Ok(());
        }
        match self.inode(obj) {
            Ok(it) if it.nlink == 0 => self.evict(obj),
            _ => Ok(()),
        }
    }

    /// Removes orphans left by a crash or an unmount with open files, in every subvolume.
    pub fn clean_orphans(&mut self) -> Result<usize> {
        let mut n = 0;
        for subvol in self.subvol_ids()? {
            let orphans = self.items_in(
                subvol_tree(subvol),
                Key::new(ORPHAN_OBJECTID, ty::ORPHAN, 0),
                Key::new(ORPHAN_OBJECTID, ty::ORPHAN, u64::MAX),
                usize::MAX,
            )?;
            n += orphans.len();
            for (k, _) in orphans {
                self.evict(global(subvol, k.offset))?;
            }
        }
        Ok(n)
    }

    /// Numbers of the subvolumes whose trees exist (being dropped ones excluded).
    pub fn subvol_ids(&mut self) -> Result<Vec<u64>> {
        let first = tree_id::FIRST_SUBVOL_TREE;
        let last = first + MAX_SUBVOL;
        Ok(self
            .txn()?
            .tree_ids()
            .into_iter()
            .filter(|t| (first..=last).contains(t))
            .map(|t| t - first)
            .collect())
    }

    // --- Handles ------------------------------------------------------------------------------

    pub fn add_handle(&mut self, obj: u64, flags: OpenFlags, dir: bool) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(
            fh,
            Handle {
                objectid: obj,
                flags,
                dir,
            },
        );
        *self.opens.entry(obj).or_default() += 1;
        fh
    }

    pub fn handle(&self, obj: u64, fh: u64) -> Result<Handle> {
        match self.handles.get(&fh) {
            Some(h) if h.objectid == obj => Ok(h.clone()),
            _ => Err(Error::BadHandle),
        }
    }

    pub fn remove_handle(&mut self, obj: u64, fh: u64) -> Result<()> {
        self.handle(obj, fh)?;
        self.handles.remove(&fh);
        if let Some(n) = self.opens.get_mut(&obj) {
            *n -= 1;
            if *n == 0 {
                self.opens.remove(&obj);
            }
        }
        Ok(())
    }

    /// One more kernel reference from an entry reply.
    pub fn looked_up(&mut self, obj: u64) {
        if self.opts.lookup_counts {
            *self.lookups.entry(obj).or_default() += 1;
        }
    }

    // --- Directory entries --------------------------------------------------------------------

    /// The entry `name` of directory `dir`, its child as a global id.
    pub fn find_entry(&mut self, dir: u64, name: &[u8]) -> Result<Option<DirEntryItem>> {
        let key = Key::new(dir, ty::DIR_ITEM, name_hash(name));
        let Some(v) = self.get(&key)? else {
            return Ok(None);
        };
        let es = items::decode_dir_items(&key, &v)?;
        match es.into_iter().find(|e| e.name == name) {
            Some(e) => Ok(Some(self.entry_global(dir, e)?)),
            None => Ok(None),
        }
    }

    /// An entry as stored (child local to `dir`'s subvolume, or a subvolume number) made global.
    /// A subvolume entry whose subvolume is not linked here (it was copied by a snapshot of the
    /// parent, or the subvolume is gone) shows as an empty directory, as in btrfs.
    fn entry_global(&mut self, dir: u64, mut e: DirEntryItem) -> Result<DirEntryItem> {
        if !e.subvol {
            e.child = global(subvol_of(dir), e.child);
            return Ok(e);
        }
        let linked_here = match self.subvol_root(e.child)? {
            Some(r) => r.parent == dir && r.name == e.name,
            None => false,
        };
        e.child = if linked_here {
            global(e.child, ROOT_OBJECTID)
        } else {
            global(subvol_of(dir), EMPTY_DIR_OBJECTID)
        };
        Ok(e)
    }

    /// Adds entry `name` -> `child` to `dir`, with its index and the child's back-reference.
    /// Updates the directory's size, index counter and times.
    pub fn add_entry(&mut self, dir: u64, name: &[u8], child: u64, kind: FileKind) -> Result<u64> {
        let mut d = self.inode(dir)?;
        let index = d.next_index;
        d.next_index = index.checked_add(1).ok_or(Error::NoSpace)?;
        d.size = d.size.saturating_add(2 * name.len() as u64);
        let now = Timespec::now();
        d.mtime = now;
        d.ctime = now;
        self.put_inode(dir, &d)?;
        // A subvolume's root linked from another subvolume: the entry names the subvolume and
        // its record says where it is linked (the root directory has no INODE_REF).
        let subvol = subvol_of(child) != subvol_of(dir);
        let e = DirEntryItem {
            child: if subvol {
                subvol_of(child)
            } else {
                local(child)
            },
            kind,
            index,
            name: name.to_vec(),
            subvol,
        };
        let key = Key::new(dir, ty::DIR_ITEM, name_hash(name));
        let mut es = match self.get(&key)? {
            Some(v) => items::decode_dir_items(&key, &v)?,
            None => Vec::new(),
        };
        es.push(e.clone());
        self.put(key, &items::encode_dir_items(&es))?;
        self.put(
            Key::new(dir, ty::DIR_INDEX, index),
            &items::encode_dir_index(&e),
        )?;
        if subvol {
            self.set_subvol_link(subvol_of(child), dir, name)?;
            return Ok(index);
        }
        let rkey = Key::new(child, ty::INODE_REF, local(dir));
        let mut refs = match self.get(&rkey)? {
            Some(v) => items::decode_inode_refs(&rkey, &v)?,
            None => Vec::new(),
        };
        refs.push(InodeRef {
            index,
            name: name.to_vec(),
        });
        self.put(rkey, &items::encode_inode_refs(&refs))?;
        Ok(index)
    }

    /// Removes entry `name` from `dir` (which must exist) with its index and back-reference.
    pub fn remove_entry(&mut self, dir: u64, name: &[u8]) -> Result<DirEntryItem> {
        let key = Key::new(dir, ty::DIR_ITEM, name_hash(name));
        let v = self.get(&key)?.ok_or(Error::NotFound)?;
        let mut es = items::decode_dir_items(&key, &v)?;
        let at = es
            .iter()
            .position(|e| e.name == name)
            .ok_or(Error::NotFound)?;
        let e = es.remove(at);
        if es.is_empty() {
            self.del(&key)?;
        } else {
            self.put(key, &items::encode_dir_items(&es))?;
        }
        self.del(&Key::new(dir, ty::DIR_INDEX, e.index))?;
        let e = self.entry_global(dir, e)?;
        let rkey = Key::new(e.child, ty::INODE_REF, local(dir));
        if subvol_of(e.child) != subvol_of(dir) || local(e.child) == EMPTY_DIR_OBJECTID {
            // A subvolume link has no INODE_REF; its record is the caller's to change.
        } else if let Some(v) = self.get(&rkey)? {
            let mut refs = items::decode_inode_refs(&rkey, &v)?;
            refs.retain(|r| r.index != e.index);
            if refs.is_empty() {
                self.del(&rkey)?;
            } else {
                self.put(rkey, &items::encode_inode_refs(&refs))?;
            }
        }
        let mut d = self.inode(dir)?;
        d.size = d.size.saturating_sub(2 * name.len() as u64);
        let now = Timespec::now();
        d.mtime = now;
        d.ctime = now;
        self.put_inode(dir, &d)?;
        Ok(e)
    }

    /// The parent of directory `dir` (the root is its own parent).
    pub fn parent_of(&mut self, dir: u64) -> Result<u64> {
        let subvol = subvol_of(dir);
        if local(dir) == ROOT_OBJECTID || local(dir) == EMPTY_DIR_OBJECTID {
            // A subvolume's root: its parent is where the subvolume is linked.
            return match self.subvol_root(subvol)? {
                Some(r) if subvol != 0 => Ok(r.parent),
                _ => Ok(global(subvol, ROOT_OBJECTID)),
            };
        }
        let r = self.items_in(
            tree_of(dir),
            Key::new(local(dir), ty::INODE_REF, 0),
            Key::new(local(dir), ty::INODE_REF, u64::MAX),
            1,
        )?;
        r.first()
            .map(|(k, _)| global(subvol, k.offset))
            .ok_or(Error::NotFound)
    }

    /// Whether directory `dir` has entries.
    pub fn dir_has_entries(&mut self, dir: u64) -> Result<bool> {
        if local(dir) == EMPTY_DIR_OBJECTID {
            return Ok(false);
        }
        let r = self.items_in(
            tree_of(dir),
            Key::new(local(dir), ty::DIR_INDEX, 0),
            Key::new(local(dir), ty::DIR_INDEX, u64::MAX),
            1,
        )?;
        Ok(!r.is_empty())
    }

    /// Up to `max` entries of `dir` with index above `after`.
    pub fn dir_entries(&mut self, dir: u64, after: u64, max: usize) -> Result<Vec<DirEntryItem>> {
        if after == u64::MAX {
            return Ok(Vec::new());
        }
        if local(dir) == EMPTY_DIR_OBJECTID {
            return Ok(Vec::new());
        }
        let r = self.items_in(
            tree_of(dir),
            Key::new(local(dir), ty::DIR_INDEX, after + 1),
            Key::new(local(dir), ty::DIR_INDEX, u64::MAX),
            max,
        )?;
        let mut out = Vec::with_capacity(r.len());
        for (k, v) in &r {
            let e = items::decode_dir_index(k, v)?;
            out.push(self.entry_global(dir, e)?);
        }
        Ok(out)
    }
}
