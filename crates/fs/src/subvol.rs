//! Subvolumes: each is a directory that is the root of its own tree, linked into a directory of
//! another subvolume by an entry that names it. Create, snapshot (O(1): the store clones the
//! tree's root), delete (the entry goes now; the tree's blocks are released in the background,
//! resuming after a remount or crash), list and show. The index tree records where each
//! subvolume is linked, whether it is read-only and what it is a snapshot of.

use serde::{Deserialize, Serialize};
use store::Key;

use crate::error::{Error, Result};
use crate::items::{
    InodeItem, ROOT_OBJECTID, SUBVOL_INDEX_TREE, SUBVOL_READ_ONLY, SubvolCounter, SubvolInfo,
    SubvolRoot, ty,
};
use crate::perm::sticky_ok;
use crate::state::{MAX_SUBVOL, State, global, local, subvol_of, subvol_tree};
use crate::types::{Attr, Caller, FileKind, Ino, Timespec};

/// One subvolume as `subvolume list` and `show` report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubvolumeEntry {
    /// Its number (the top 16 bits of its inode numbers).
    pub id: u64,
    /// Inode number of its root directory.
    pub ino: Ino,
    /// Path from the mount's root, without a leading slash ("" for subvolume 0).
    pub path: String,
    /// Inode number of the directory holding its entry (none for subvolume 0).
    pub parent: Option<Ino>,
    pub read_only: bool,
    /// The subvolume it was snapshotted from.
    pub snapshot_of: Option<u64>,
    /// Transaction generation that made it.
    pub generation: u64,
    pub otime: Timespec,
}

/// Subvolumes and the space still being freed after deletions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubvolumeList {
    pub subvolumes: Vec<SubvolumeEntry>,
    /// Deleted subvolumes whose blocks are not all released yet (last commit).
    pub deleting: usize,
    /// Estimate of the tree blocks (bytes) those still hold: metadata only; the file data
    /// they alone reference is freed with them but not counted here.
    pub deleting_bytes: u64,
}

/// Tree block references released per background step of a subvolume deletion.
pub(crate) const DROP_BUDGET: u64 = 2048;

impl State {
    /// The index record of subvolume `subvol` (none for subvolume 0 or a deleted one).
    pub(crate) fn subvol_root(&mut self, subvol: u64) -> Result<Option<SubvolRoot>> {
        if subvol == 0 {
            return Ok(None);
        }
        let key = Key::new(subvol, ty::SUBVOL_ROOT, 0);
        match self.txn()?.has_tree(SUBVOL_INDEX_TREE) {
            false => Ok(None),
            true => match self.txn()?.get(SUBVOL_INDEX_TREE, &key)? {
                Some(v) => Ok(Some(SubvolRoot::decode(&key, &v)?)),
                None => Ok(None),
            },
        }
    }

    fn put_subvol_root(&mut self, subvol: u64, r: &SubvolRoot) -> Result<()> {
        self.ensure_index_tree()?;
        self.put_in(
            SUBVOL_INDEX_TREE,
            Key::new(subvol, ty::SUBVOL_ROOT, 0),
            &r.encode(),
        )
    }

    fn ensure_index_tree(&mut self) -> Result<()> {
        if !self.txn()?.has_tree(SUBVOL_INDEX_TREE) {
            self.changes += 1;
            self.txn()?.create_tree(SUBVOL_INDEX_TREE)?;
        }
        Ok(())
    }

    /// Whether writes into subvolume `subvol` are refused.
    pub(crate) fn subvol_read_only(&mut self, subvol: u64) -> Result<bool> {
        Ok(self
            .subvol_root(subvol)?
            .is_some_and(|r| r.flags & SUBVOL_READ_ONLY != 0))
    }

    /// Records that subvolume `subvol` is now linked as `name` in `dir` (after a rename).
    pub(crate) fn set_subvol_link(&mut self, subvol: u64, dir: u64, name: &[u8]) -> Result<()> {
        if let Some(mut r) = self.subvol_root(subvol)? {
            r.parent = dir;
            r.name = name.to_vec();
            self.put_subvol_root(subvol, &r)?;
        }
        Ok(())
    }

    /// A fresh subvolume number (never reused).
    fn next_subvol(&mut self) -> Result<u64> {
        self.ensure_index_tree()?;
        let key = Key::new(0, ty::SUBVOL_COUNTER, 0);
        let next = match self.txn()?.get(SUBVOL_INDEX_TREE, &key)? {
            Some(v) => SubvolCounter::decode(&key, &v)?.next,
            None => 1,
        };
        // Stay clear of trees left by older images.
        let mut n = next.max(1);
        while self.txn()?.has_tree(subvol_tree(n)) {
            n += 1;
        }
        if n > MAX_SUBVOL {
            return Err(Error::NoSpace);
        }
        self.put_in(
            SUBVOL_INDEX_TREE,
            key,
            &SubvolCounter { next: n + 1 }.encode(),
        )?;
        Ok(n)
    }

    /// The checks of mkdir for a new entry `name` in `parent`.
    /// `name` is the stored name (the caller checked and, in an encrypted directory,
    /// encrypted it).
    fn new_link_ok(&mut self, parent: u64, name: &[u8], c: &Caller) -> Result<InodeItem> {
        self.writable(parent)?;
        let d = self.may_change_dir(parent, c)?;
        if d.nlink == 0 {
            return Err(Error::NotFound);
        }
        if name == b"." || name == b".." || self.find_entry(parent, name)?.is_some() {
            return Err(Error::Exists);
        }
        Ok(d)
    }

    /// Links new subvolume `subvol` as `name` in `parent` and records it.
    fn link_subvol(
        &mut self,
        subvol: u64,
        parent: u64,
        name: &[u8],
        flags: u64,
        snapshot_of: Option<u64>,
    ) -> Result<()> {
        let generation = self.txn()?.generation();
        let r = SubvolRoot {
            parent,
            name: name.to_vec(),
            flags,
            snapshot_of,
            generation,
            otime: Timespec::now(),
        };
        self.put_subvol_root(subvol, &r)?;
        self.add_entry(parent, name, global(subvol, ROOT_OBJECTID), FileKind::Dir)?;
        self.adjust_nlink(parent, 1)?;
        Ok(())
    }

    pub(crate) fn subvolume_create(
        &mut self,
        parent: u64,
        name: &[u8],
        mode: u32,
        c: &Caller,
    ) -> Result<Attr> {
        self.new_link_ok(parent, name, c)?;
        let subvol = self.next_subvol()?;
        let tree = subvol_tree(subvol);
        self.changes += 1;
        self.txn()?.create_tree(tree)?;
        self.put_in(
            tree,
            Key::new(0, ty::SUBVOL_INFO, 0),
            &SubvolInfo {
                next_objectid: ROOT_OBJECTID + 1,
            }
            .encode(),
        )?;
        let (perm, _, _) =
            self.new_inode_mode(parent, mode & 0o7777 & !0o6000, FileKind::Dir, c)?;
        let now = Timespec::now();
        let generation = self.txn()?.generation();
        let root = InodeItem {
            kind: FileKind::Dir,
            perm,
            nlink: 2,
            uid: c.uid,
            gid: c.gid,
            rdev: 0,
            size: 0,
            bytes: 0,
            generation,
            next_index: crate::items::FIRST_DIR_INDEX,
            flags: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
        };
        let ino = global(subvol, ROOT_OBJECTID);
        self.put_inode(ino, &root)?;
        self.link_subvol(subvol, parent, name, 0, None)?;
        self.looked_up(ino);
        Ok(self.attr(ino, &root))
    }

    /// Snapshots the subvolume whose root is `source` as `name` in `parent`: O(1), the new
    /// tree shares every block with the source. Nested subvolumes are not included (their
    /// entries show as empty directories in the snapshot).
    pub(crate) fn subvolume_snapshot(
        &mut self,
        source: u64,
        parent: u64,
        name: &[u8],
        read_only: bool,
        c: &Caller,
    ) -> Result<Attr> {
        if local(source) != ROOT_OBJECTID {
            return Err(Error::Invalid("not a subvolume"));
        }
        let src = subvol_of(source);
        let it = self.inode(source)?;
        // Reading the source is what a snapshot needs (btrfs asks the same of the caller).
        self.permit(source, &it, c, crate::perm::MAY_READ)?;
        // And, as btrfs, owning it: the source is named by inode number, not reached by a
        // path, so this is also what keeps a subvolume behind a closed directory out of reach.
        if c.uid != 0 && c.uid != it.uid {
            return Err(Error::Perm);
        }
        self.new_link_ok(parent, name, c)?;
        // Buffered data of the source's files goes into its tree first.
        self.flush_all_data()?;
        let subvol = self.next_subvol()?;
        self.changes += 1;
        self.txn()?
            .snapshot_tree(subvol_tree(src), subvol_tree(subvol))?;
        let flags = if read_only { SUBVOL_READ_ONLY } else { 0 };
        self.link_subvol(subvol, parent, name, flags, Some(src))?;
        let ino = global(subvol, ROOT_OBJECTID);
        let root = self.inode(ino)?;
        self.looked_up(ino);
        Ok(self.attr(ino, &root))
    }

    /// Deletes the subvolume linked as `name` in `parent`: its entry goes now, its space is
    /// released in the background.
    /// `name` is the stored name (see [`State::stored_name`]).
    pub(crate) fn subvolume_delete(&mut self, parent: u64, name: &[u8], c: &Caller) -> Result<()> {
        self.writable_for_delete(parent)?;
        let d = self.may_change_dir(parent, c)?;
        let e = self.find_entry(parent, name)?.ok_or(Error::NotFound)?;
        if !e.subvol || local(e.child) != ROOT_OBJECTID {
            return Err(Error::Invalid("not a subvolume"));
        }
        let subvol = subvol_of(e.child);
        let root = self.inode(e.child)?;
        sticky_ok(&d, &root, c)?;
        // As btrfs: only root, or the owner of the subvolume's root directory.
        if c.uid != 0 && c.uid != root.uid {
            return Err(Error::Perm);
        }
        // Subvolumes linked inside it must go first (btrfs answers ENOTEMPTY too).
        for (n, r) in self.subvol_records()? {
            if n != subvol && subvol_of(r.parent) == subvol {
                return Err(Error::NotEmpty);
            }
        }
        if self
            .handles
            .values()
            .any(|h| subvol_of(h.objectid) == subvol)
        {
            return Err(Error::Busy);
        }
        // Buffered data of its files is dropped with it.
        let gone: Vec<u64> = self
            .dirty
            .keys()
            .copied()
            .filter(|o| subvol_of(*o) == subvol)
            .collect();
        for o in gone {
            self.discard_buffered(o);
        }
        self.remove_entry(parent, name)?;
        self.adjust_nlink(parent, -1)?;
        self.changes += 1;
        self.txn()?
            .delete(SUBVOL_INDEX_TREE, &Key::new(subvol, ty::SUBVOL_ROOT, 0))?;
        self.txn()?.drop_tree_background(subvol_tree(subvol))?;
        self.drops_pending = true;
        Ok(())
    }

    /// Every record of the index tree.
    fn subvol_records(&mut self) -> Result<Vec<(u64, SubvolRoot)>> {
        if !self.txn()?.has_tree(SUBVOL_INDEX_TREE) {
            return Ok(Vec::new());
        }
        let items = self.items_in(
            SUBVOL_INDEX_TREE,
            Key::new(1, ty::SUBVOL_ROOT, 0),
            Key::new(MAX_SUBVOL, ty::SUBVOL_ROOT, 0),
            usize::MAX,
        )?;
        let mut out = Vec::with_capacity(items.len());
        for (k, v) in items {
            if k.item_type == ty::SUBVOL_ROOT {
                out.push((k.objectid, SubvolRoot::decode(&k, &v)?));
            }
        }
        Ok(out)
    }

    /// Path of directory `dir` from the mount's root.
    pub(crate) fn dir_path(&mut self, mut dir: u64) -> Result<String> {
        let mut parts: Vec<Vec<u8>> = Vec::new();
        // Bounded: a corrupt loop of parents ends as an error, not a hang.
        for _ in 0..100_000 {
            let subvol = subvol_of(dir);
            if local(dir) == ROOT_OBJECTID {
                match self.subvol_root(subvol)? {
                    Some(r) => {
                        parts.push(self.path_name(r.parent, r.name.clone()));
                        dir = r.parent;
                        continue;
                    }
                    None if subvol == 0 => {
                        parts.reverse();
                        let names: Vec<String> = parts
                            .iter()
                            .map(|p| String::from_utf8_lossy(p).into_owned())
                            .collect();
                        return Ok(names.join("/"));
                    }
                    None => return Err(Error::NotFound),
                }
            }
            let parent = self.parent_of(dir)?;
            let rkey = Key::new(dir, ty::INODE_REF, local(parent));
            let v = self.get(&rkey)?.ok_or(Error::NotFound)?;
            let refs = crate::items::decode_inode_refs(&rkey, &v)?;
            let first = refs.into_iter().next().ok_or(Error::NotFound)?;
            parts.push(self.path_name(parent, first.name));
            dir = parent;
        }
        Err(Error::Invalid("directory tree too deep"))
    }

    /// A stored name as a path shows it: decrypted with the key, a no-key name without it.
    pub(crate) fn path_name(&mut self, dir: u64, stored: Vec<u8>) -> Vec<u8> {
        match self.shown_name(dir, stored.clone()) {
            Ok(shown) => shown,
            Err(_) => stored,
        }
    }

    fn subvol_entry(&mut self, id: u64, r: Option<SubvolRoot>) -> Result<SubvolumeEntry> {
        let ino = global(id, ROOT_OBJECTID);
        let path = self.dir_path(ino)?;
        Ok(match r {
            Some(r) => SubvolumeEntry {
                id,
                ino,
                path,
                parent: Some(r.parent),
                read_only: r.flags & SUBVOL_READ_ONLY != 0,
                snapshot_of: r.snapshot_of,
                generation: r.generation,
                otime: r.otime,
            },
            None => {
                let root = self.inode(ino)?;
                SubvolumeEntry {
                    id,
                    ino,
                    path,
                    parent: None,
                    read_only: false,
                    snapshot_of: None,
                    generation: root.generation,
                    otime: root.crtime,
                }
            }
        })
    }

    pub(crate) fn subvolume_list(&mut self) -> Result<SubvolumeList> {
        let mut subvolumes = vec![self.subvol_entry(0, None)?];
        for (id, r) in self.subvol_records()? {
            subvolumes.push(self.subvol_entry(id, Some(r))?);
        }
        let p = self.store().pending_deletion()?;
        Ok(SubvolumeList {
            subvolumes,
            deleting: p.trees,
            deleting_bytes: p.bytes_estimate,
        })
    }

    /// The subvolume `ino` is in.
    pub(crate) fn subvolume_show(&mut self, ino: u64) -> Result<SubvolumeEntry> {
        let id = subvol_of(ino);
        self.inode(ino)?;
        let r = self.subvol_root(id)?;
        if id != 0 && r.is_none() {
            return Err(Error::NotFound);
        }
        self.subvol_entry(id, r)
    }

    /// Sets or clears a subvolume's read-only flag (`ino` is its root directory).
    pub(crate) fn subvolume_set_read_only(
        &mut self,
        ino: u64,
        read_only: bool,
        c: &Caller,
    ) -> Result<()> {
        self.check_writable_fs()?;
        if c.uid != 0 {
            return Err(Error::Perm);
        }
        let id = subvol_of(ino);
        let mut r = match self.subvol_root(id)? {
            Some(r) if local(ino) == ROOT_OBJECTID => r,
            _ => return Err(Error::Invalid("not a subvolume (or the top-level one)")),
        };
        r.flags = if read_only {
            r.flags | SUBVOL_READ_ONLY
        } else {
            r.flags & !SUBVOL_READ_ONLY
        };
        self.put_subvol_root(id, &r)
    }

    /// One background step of subvolume deletions; true while more remain.
    pub(crate) fn continue_subvolume_drops(&mut self) -> Result<bool> {
        if !self.drops_pending {
            return Ok(false);
        }
        let p = self.txn()?.continue_tree_drops(DROP_BUDGET)?;
        if p.released > 0 || p.finished > 0 {
            self.changes += 1;
        }
        self.drops_pending = p.pending > 0;
        Ok(self.drops_pending)
    }
}
