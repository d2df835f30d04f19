//! Space accounting: `du` (a file's or a tree's bytes, split into exclusive and shared) and
//! `df` (the filesystem's size, data and metadata in use, free space, pending deletions).
//!
//! A byte is *shared* when the extent it lies in is referenced by another file (a reflink, a
//! hard-linked copy is the same file) or the item that references it sits in a leaf another
//! tree shares (a snapshot not yet written to); otherwise it is *exclusive*: deleting the file
//! would free it. Totals are the bytes file extent items cover, the figure `st_blocks` shows
//! and fsck checks.

use std::collections::BTreeSet;

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

/// Entries read from a directory at a time while walking.
const WALK_PAGE: usize = 512;

impl State {
    /// `du` of inode `obj`: a file, or every file below a directory (into nested subvolumes).
    pub(crate) fn disk_usage(&mut self, obj: u64) -> Result<DiskUsage> {
        self.flush_all_data()?;
        let mut du = DiskUsage::default();
        let mut seen = BTreeSet::new();
        let mut stack = vec![obj];
        while let Some(o) = stack.pop() {
            if !seen.insert(o) {
                continue;
            }
            let it = self.inode(o)?;
            match it.kind {
                FileKind::File => {
                    self.file_usage(o, &mut du)?;
                    du.files += 1;
                }
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
        Ok(du)
    }

    fn file_usage(&mut self, obj: u64, du: &mut DiskUsage) -> Result<()> {
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
