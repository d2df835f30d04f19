//! Space accounting: `du` (a file's or a tree's bytes, split into exclusive and shared) and
//! `df` (the filesystem's size, data and metadata in use, free space, pending deletions).
//!
//! A byte is *shared* when the extent it lies in is referenced by another file (a reflink, a
//! hard-linked copy is the same file) or the item that references it sits in a leaf another
//! tree shares (a snapshot not yet written to); otherwise it is *exclusive*: deleting the file
//! would free it. Totals are the bytes file extent items cover, the figure `st_blocks` shows
//! and fsck checks. As `btrfs filesystem du`, a directory also reports its *set shared* bytes:
//! the shared bytes of all its files with each byte of an extent counted once, however many
//! files of the set (or ranges of one file) reference it; `shared` counts them per reference.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use store::Key;

use crate::error::Result;
use crate::items::ty;
use crate::state::{State, local, tree_of};
use crate::types::FileKind;

/// Bytes of one file or of every file under a directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskUsage {
    /// Bytes the files' extents cover.
    pub total: u64,
    /// Of `total`, bytes no other file or snapshot uses.
    pub exclusive: u64,
    /// Of `total`, bytes another file or a snapshot uses too.
    pub shared: u64,
    /// Regular files counted (each inode once, whatever its links).
    pub files: u64,
    /// The bytes of `shared`, each byte of an extent counted once across the whole set.
    #[serde(default)]
    pub set_shared: u64,
}

/// The filesystem's space, as `cowcrypt df` shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceReport {
    /// Bytes of all chunks (data, metadata and system).
    pub size: u64,
    pub data_total: u64,
    pub data_used: u64,
    pub metadata_total: u64,
    pub metadata_used: u64,
    /// Data bytes free for new files (what statfs reports as free).
    pub free: u64,
    /// Deleted subvolumes still releasing space, and an estimate of the bytes they will free
    /// (as of the last commit).
    pub deleting_subvolumes: usize,
    pub pending_deletion: u64,
}

/// Shared byte ranges seen so far, per extent (by its start), as disjoint `start -> end` runs
/// of offsets inside the extent, so a byte referenced twice counts once.
#[derive(Default)]
struct SharedSet(BTreeMap<u64, BTreeMap<u64, u64>>);

impl SharedSet {
    fn add(&mut self, extent: u64, offset: u64, len: u64) {
        let runs = self.0.entry(extent).or_default();
        let (mut start, mut end) = (offset, offset.saturating_add(len));
        // Merge every run that touches [start, end) into one.
        let touching: Vec<(u64, u64)> = runs
            .range(..=end)
            .rev()
            .take_while(|&(_, &e)| e >= start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            runs.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        runs.insert(start, end);
    }

    fn bytes(&self) -> u64 {
        self.0
            .values()
            .flat_map(|runs| runs.iter().map(|(s, e)| e - s))
            .sum()
    }
}

/// Entries read from a directory at a time while walking.
const WALK_PAGE: usize = 512;

impl State {
    /// `du` of inode `obj`: a file, or every file below a directory (into nested subvolumes).
    pub(crate) fn disk_usage(&mut self, obj: u64) -> Result<DiskUsage> {
        self.flush_all_data()?;
        let mut du = DiskUsage::default();
        let mut set = SharedSet::default();
        self.walk_files(obj, &mut |s, o| {
            s.file_usage(o, &mut du, &mut set)?;
            du.files += 1;
            Ok(())
        })?;
        du.set_shared = set.bytes();
        Ok(du)
    }

    /// Calls `f` once for `obj` if it is a regular file, or for every regular file below it
    /// if it is a directory (into nested subvolumes); each inode once, whatever its links.
    pub(crate) fn walk_files(
        &mut self,
        obj: u64,
        f: &mut dyn FnMut(&mut State, u64) -> Result<()>,
    ) -> Result<()> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![obj];
        while let Some(o) = stack.pop() {
            if !seen.insert(o) {
                continue;
            }
            match self.inode(o)?.kind {
                FileKind::File => f(self, o)?,
                FileKind::Dir => {
                    let mut after = 0;
                    loop {
                        let page = self.dir_entries(o, after, WALK_PAGE)?;
                        let Some(last) = page.last() else { break };
                        after = last.index;
                        stack.extend(
                            page.iter()
                                .filter(|e| matches!(e.kind, FileKind::File | FileKind::Dir))
                                .map(|e| e.child),
                        );
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn file_usage(&mut self, obj: u64, du: &mut DiskUsage, set: &mut SharedSet) -> Result<()> {
        let tree = tree_of(obj);
        for (at, fe) in self.extents(obj, 0, u64::MAX)? {
            du.total += fe.len;
            let t = self.txn()?;
            let leaf_shared = t.path_shared(tree, &Key::new(local(obj), ty::FILE_EXTENT, at))?;
            let other_owner = t
                .data_backrefs(fe.bytenr)?
                .iter()
                .any(|(o, _)| o.root != tree || o.inode != local(obj));
            if leaf_shared || other_owner {
                du.shared += fe.len;
                set.add(fe.bytenr, fe.offset, fe.len);
            } else {
                du.exclusive += fe.len;
            }
        }
        Ok(())
    }

    /// `df`: the space figures of the running transaction, pending deletions as committed.
    pub(crate) fn space(&mut self) -> Result<SpaceReport> {
        self.flush_all_data()?;
        let st = self.txn()?.stats();
        let pending = self.store().pending_deletion()?;
        Ok(SpaceReport {
            size: st.system.total + st.metadata.total + st.data.total,
            data_total: st.data.total,
            data_used: st.data.used(),
            metadata_total: st.metadata.total + st.system.total,
            metadata_used: st.metadata.used() + st.system.used(),
            free: st.data.free,
            deleting_subvolumes: pending.trees,
            pending_deletion: pending.bytes_estimate,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::SharedSet;

    #[test]
    fn shared_set_counts_each_byte_once() {
        let mut s = SharedSet::default();
        s.add(1, 0, 100);
        s.add(1, 50, 100); // overlaps: 0..150
        s.add(1, 300, 10);
        s.add(1, 150, 150); // joins both: 0..310
        s.add(2, 0, 4096);
        s.add(2, 0, 4096);
        assert_eq!(s.bytes(), 310 + 4096);
        s.add(1, 400, 1);
        assert_eq!(s.bytes(), 310 + 4096 + 1);
    }
}
