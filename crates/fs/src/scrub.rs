//! Scrub: reads everything back and verifies it against its checksums, with no key (checksums
//! cover the bytes as stored, ciphertext when encrypted). Metadata through the store's check of
//! every tree node; data extent by extent, a bounded piece at a time, sector by sector where a
//! piece fails. Each bad sector is reported with every file that uses it: its path and the file
//! offset the sector holds.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use store::{Key, item_type, tree_id};

use crate::error::Result;
use crate::items::{self, ExtentKind, FileExtent, ROOT_OBJECTID, ty};
use crate::state::{BLOCK, State, global, local, subvol_of, subvol_tree};

/// Bad sectors listed in full in a report (the count is always exact).
pub const MAX_LISTED: usize = 100;

/// Bytes read and verified at a time.
const PIECE: u64 = 1 << 20;

/// What a scrub found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubReport {
    /// Tree nodes verified.
    pub metadata_nodes: u64,
    /// Metadata faults (the store's check stops at the first).
    pub metadata_errors: Vec<String>,
    /// Data extents and bytes verified.
    pub data_extents: u64,
    pub data_bytes: u64,
    /// Sectors whose bytes do not match their checksum.
    pub bad_sectors: u64,
    /// The first [`MAX_LISTED`] of them.
    pub bad: Vec<BadSector>,
}

impl ScrubReport {
    pub fn is_clean(&self) -> bool {
        self.metadata_errors.is_empty() && self.bad_sectors == 0
    }
}

/// One bad sector of a data extent and the files that hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadSector {
    /// The extent's logical address and the sector's offset inside it.
    pub extent: u64,
    pub offset_in_extent: u64,
    pub len: u64,
    pub files: Vec<FileSpot>,
}

/// Where a bad sector shows in a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSpot {
    /// Path from the mount's root ("" when the inode has no name: unlinked, still open).
    pub path: String,
    pub ino: u64,
    pub offset: u64,
}

impl State {
    pub(crate) fn scrub(&mut self, progress: &mut dyn FnMut(u64, u64)) -> Result<ScrubReport> {
        if !self.opts.read_only && self.failed.is_none() {
            self.commit()?;
        }
        let mut r = ScrubReport::default();
        match self.store().check() {
            Ok(c) => r.metadata_nodes = c.nodes,
            Err(e) => r.metadata_errors.push(e.to_string()),
        }
        let st = self.txn()?.stats();
        let total = st.data.used();
        // Every data extent, from the extent tree.
        let mut extents = Vec::new();
        {
            let t = self.txn()?;
            for item in t.range(tree_id::EXTENT_TREE, ..)? {
                let (k, _) = item?;
                if k.item_type == item_type::EXTENT_ITEM {
                    extents.push((k.objectid, k.offset));
                }
            }
        }
        let mut bad: Vec<(u64, u64)> = Vec::new();
        for (bytenr, len) in extents {
            let has_csums = self
                .txn()?
                .get(tree_id::CSUM_TREE, &Key::new(bytenr, ty::DATA_CSUM, 0))?
                .is_some();
            if !has_csums {
                // Preallocated: nothing written, nothing to verify.
                continue;
            }
            r.data_extents += 1;
            let mut at = 0;
            while at < len {
                let n = (len - at).min(PIECE);
                if self.read_extent(bytenr, at, n).is_err() {
                    let mut s = at;
                    while s < at + n {
                        if self.read_extent(bytenr, s, BLOCK).is_err() {
                            bad.push((bytenr, s));
                        }
                        s += BLOCK;
                    }
                }
                at += n;
                r.data_bytes += n;
                progress(r.data_bytes.min(total), total);
            }
        }
        r.bad_sectors = bad.len() as u64;
        bad.truncate(MAX_LISTED);
        r.bad = self.locate_bad(&bad, &mut r.metadata_errors)?;
        progress(total, total);
        Ok(r)
    }

    /// The files (paths and offsets) holding each bad sector.
    fn locate_bad(
        &mut self,
        bad: &[(u64, u64)],
        metadata_errors: &mut Vec<String>,
    ) -> Result<Vec<BadSector>> {
        let wanted: BTreeSet<u64> = bad.iter().map(|b| b.0).collect();
        let mut users: BTreeMap<u64, Vec<(u64, u64, FileExtent)>> = BTreeMap::new();
        if !wanted.is_empty() {
            for subvol in self.subvol_ids()? {
                // A subvolume whose tree cannot be read names no files (its fault is reported).
                let items = match self.items_in(subvol_tree(subvol), Key::MIN, Key::MAX, usize::MAX)
                {
                    Ok(items) => items,
                    Err(e) => {
                        metadata_errors.push(format!("subvolume {subvol}: {e}"));
                        continue;
                    }
                };
                for (k, v) in items {
                    if k.item_type != ty::FILE_EXTENT {
                        continue;
                    }
                    let Ok(fe) = FileExtent::decode(&k, &v) else {
                        continue;
                    };
                    if fe.kind == ExtentKind::Regular && wanted.contains(&fe.bytenr) {
                        users.entry(fe.bytenr).or_default().push((
                            global(subvol, k.objectid),
                            k.offset,
                            fe,
                        ));
                    }
                }
            }
        }
        let mut out = Vec::with_capacity(bad.len());
        for &(extent, off) in bad {
            let mut files = Vec::new();
            for (obj, at, fe) in users.get(&extent).map(Vec::as_slice).unwrap_or(&[]) {
                if off >= fe.offset && off < fe.offset + fe.len {
                    files.push(FileSpot {
                        path: self.file_path(*obj).unwrap_or_default(),
                        ino: *obj,
                        offset: at + (off - fe.offset),
                    });
                }
            }
            out.push(BadSector {
                extent,
                offset_in_extent: off,
                len: BLOCK,
                files,
            });
        }
        Ok(out)
    }

    /// A path of file `obj` (its first name), or "" when it has none.
    pub(crate) fn file_path(&mut self, obj: u64) -> Result<String> {
        let refs = self.items(
            Key::new(obj, ty::INODE_REF, 0),
            Key::new(obj, ty::INODE_REF, u64::MAX),
        )?;
        let Some((k, v)) = refs.first() else {
            return Ok(String::new());
        };
        let parent = global(subvol_of(obj), k.offset);
        let name = items::decode_inode_refs(k, v)?
            .into_iter()
            .next()
            .map(|r| r.name)
            .unwrap_or_default();
        let dir = if local(parent) == ROOT_OBJECTID && subvol_of(parent) == 0 {
            String::new()
        } else {
            self.dir_path(parent)?
        };
        let name = String::from_utf8_lossy(&name);
        Ok(if dir.is_empty() {
            name.into_owned()
        } else {
            format!("{dir}/{name}")
        })
    }
}
