//! Scrub: reads everything back and verifies it against its checksums, with no key (checksums
//! cover the bytes as stored, ciphertext when encrypted). Metadata through the store's check of
//! every tree node; data extent by extent, a bounded piece at a time, sector by sector where a
//! piece fails. Each bad sector is reported with every file that uses it: its path and the file
//! offset the sector holds.
//!
//! With the key of an authenticated extent loaded, scrub also checks every data unit's MAC
//! (checksums catch damage; only MACs catch tampering done with the checksums fixed up). Extents
//! whose key is absent are counted, not failed.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use store::{Key, item_type, tree_id};

use fscrypt::extent::{ExtentAuthenticator, ExtentContext, MAC_SIZE};

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
    /// The first [`MAX_LISTED`] of them (and of the bad MACs).
    pub bad: Vec<BadSector>,
    /// Authenticated extents whose every MAC was checked with their key.
    #[serde(default)]
    pub mac_extents: u64,
    /// Authenticated extents left unchecked because their key is not loaded.
    #[serde(default)]
    pub mac_extents_without_key: u64,
    /// Data units whose MAC does not match (their checksums did).
    #[serde(default)]
    pub bad_macs: u64,
}

impl ScrubReport {
    pub fn is_clean(&self) -> bool {
        self.metadata_errors.is_empty() && self.bad_sectors == 0 && self.bad_macs == 0
    }
}

/// One bad sector of a data extent and the files that hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadSector {
    /// "checksum" (damaged) or "mac" (checksums match but authentication fails: tampered).
    #[serde(default = "checksum_reason")]
    pub reason: String,
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

fn checksum_reason() -> String {
    "checksum".into()
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
        r.bad = self.locate_bad(&bad, "checksum", &mut r.metadata_errors)?;
        let damaged: BTreeSet<(u64, u64)> = bad.iter().copied().collect();
        let mut bad_macs = self.scrub_macs(&mut r, &damaged)?;
        r.bad_macs = bad_macs.len() as u64;
        bad_macs.truncate(MAX_LISTED.saturating_sub(r.bad.len()));
        let located = self.locate_bad(&bad_macs, "mac", &mut r.metadata_errors)?;
        r.bad.extend(located);
        progress(total, total);
        Ok(r)
    }

    /// Checks the MAC of every data unit of every authenticated extent whose key is loaded;
    /// returns the units that fail (those already failing their checksum are not counted
    /// again).
    fn scrub_macs(
        &mut self,
        r: &mut ScrubReport,
        damaged: &BTreeSet<(u64, u64)>,
    ) -> Result<Vec<(u64, u64)>> {
        let mut bad = Vec::new();
        if self.keyring.stats().keys == 0 {
            // No key, nothing to check with: count what stays unchecked.
            r.mac_extents_without_key = self.authenticated_extents(r)?.len() as u64;
            return Ok(bad);
        }
        for (bytenr, (len, ctx)) in self.authenticated_extents(r)? {
            let Ok(key) = self.keyring.unlock(ctx.master_key_identifier()) else {
                r.mac_extents_without_key += 1;
                continue;
            };
            let auth = ExtentAuthenticator::load(&key, &ctx).map_err(crate::crypt::crypt_error)?;
            r.mac_extents += 1;
            let mut at = 0;
            while at < len {
                let n = (len - at).min(PIECE);
                let size = usize::try_from(n).map_err(|_| crate::Error::Invalid("extent"))?;
                let piece = self
                    .txn()?
                    .data_io()?
                    .read_raw(bytenr, at, size)
                    .map_err(crate::Error::from)
                    .and_then(|bytes| Ok((bytes, self.macs(bytenr, at, n)?)));
                let (bytes, macs) = match piece {
                    Ok(p) => p,
                    Err(e) => {
                        // Missing MAC items or an unreadable range: a fault, and scrub goes on.
                        r.metadata_errors
                            .push(format!("authenticated extent {bytenr} at {at}: {e}"));
                        at += n;
                        continue;
                    }
                };
                for (i, (unit, mac)) in bytes
                    .chunks(BLOCK as usize)
                    .zip(macs.chunks(MAC_SIZE))
                    .enumerate()
                {
                    let off = at + i as u64 * BLOCK;
                    if auth.verify(off / BLOCK, BLOCK as usize, unit, mac).is_err()
                        && !damaged.contains(&(bytenr, off))
                    {
                        bad.push((bytenr, off));
                    }
                }
                at += n;
            }
        }
        Ok(bad)
    }

    /// Every authenticated extent: its length and its context (from any file extent item that
    /// references it; all carry the same context).
    /// A subvolume whose tree cannot be read adds a metadata error and no extents.
    fn authenticated_extents(
        &mut self,
        r: &mut ScrubReport,
    ) -> Result<BTreeMap<u64, (u64, ExtentContext)>> {
        let mut out = BTreeMap::new();
        for (_, _, fe) in self.regular_file_extents(&mut r.metadata_errors)? {
            if out.contains_key(&fe.bytenr) {
                continue;
            }
            if let Some(ctx) = fe
                .crypt
                .as_deref()
                .and_then(|c| ExtentContext::decode(c).ok())
                .filter(ExtentContext::authenticated)
            {
                out.insert(fe.bytenr, (fe.extent_len, ctx));
            }
        }
        Ok(out)
    }

    /// Every regular file extent item of every subvolume: (inode, key offset, item). A
    /// subvolume whose tree cannot be read adds a metadata error (once) and no items.
    fn regular_file_extents(
        &mut self,
        metadata_errors: &mut Vec<String>,
    ) -> Result<Vec<(u64, u64, FileExtent)>> {
        let mut out = Vec::new();
        for subvol in self.subvol_ids()? {
            let items = match self.items_in(subvol_tree(subvol), Key::MIN, Key::MAX, usize::MAX) {
                Ok(items) => items,
                Err(e) => {
                    let e = format!("subvolume {subvol}: {e}");
                    if !metadata_errors.contains(&e) {
                        metadata_errors.push(e);
                    }
                    continue;
                }
            };
            for (k, v) in items {
                if k.item_type != ty::FILE_EXTENT {
                    continue;
                }
                if let Ok(fe) = FileExtent::decode(&k, &v)
                    && fe.kind == ExtentKind::Regular
                {
                    out.push((global(subvol, k.objectid), k.offset, fe));
                }
            }
        }
        Ok(out)
    }

    /// The files (paths and offsets) holding each bad sector.
    fn locate_bad(
        &mut self,
        bad: &[(u64, u64)],
        reason: &str,
        metadata_errors: &mut Vec<String>,
    ) -> Result<Vec<BadSector>> {
        let wanted: BTreeSet<u64> = bad.iter().map(|b| b.0).collect();
        let mut users: BTreeMap<u64, Vec<(u64, u64, FileExtent)>> = BTreeMap::new();
        if !wanted.is_empty() {
            for (obj, at, fe) in self.regular_file_extents(metadata_errors)? {
                if wanted.contains(&fe.bytenr) {
                    users.entry(fe.bytenr).or_default().push((obj, at, fe));
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
                reason: reason.to_string(),
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
        let name = self.path_name(parent, name);
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
