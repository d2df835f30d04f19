//! Balance: empties data chunks that are little used by moving their extents into other chunks,
//! so free space gathers into whole empty chunks (which a shrink can then drop).
//!
//! An extent moves whole and as stored: its bytes are copied raw (ciphertext stays ciphertext,
//! no key is needed, and a data unit keeps its place inside the extent, hence its IV), its
//! checksums are recomputed over the same bytes, and every file extent item that points at it,
//! in every subvolume, is changed to point at the copy with its reference moved in step, so an
//! extent shared by snapshots and reflinks stays one shared extent. Each chunk is one operation
//! of the ordinary transaction, so a crash leaves either the old extent or the new one in use.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use store::{ChunkKind, Key, item_type, tree_id};

use crate::error::Result;
use crate::items::{ExtentKind, FileExtent, ty};
use crate::state::{State, global, subvol_tree};

/// What a balance did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceReport {
    /// Data chunks at or below the usage limit that held data.
    pub chunks_considered: usize,
    /// Of those, the ones now empty.
    pub chunks_emptied: usize,
    pub extents_moved: u64,
    pub bytes_moved: u64,
}

/// Where a chunk's extents may go: the data chunks, and the destinations fullest first.
struct Moves<'a> {
    data_chunks: &'a [u64],
    dests: Vec<u64>,
}

/// A data chunk balance may empty.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BalanceTarget {
    pub logical: u64,
    pub length: u64,
    pub used: u64,
}

impl State {
    /// Data chunks holding data with at most `usage_percent` of them in use, least used first.
    pub(crate) fn balance_targets(&mut self, usage_percent: u8) -> Result<Vec<BalanceTarget>> {
        self.flush_all_data()?;
        let mut out: Vec<BalanceTarget> = self
            .txn()?
            .chunk_usage()
            .into_iter()
            .filter(|(m, _)| m.kind == ChunkKind::Data)
            .map(|(m, st)| BalanceTarget {
                logical: m.logical,
                length: m.length,
                used: st.used(),
            })
            .filter(|t| {
                t.used > 0 && t.used as u128 * 100 <= t.length as u128 * u128::from(usage_percent)
            })
            .collect();
        out.sort_by_key(|t| t.used);
        Ok(out)
    }

    /// Moves the extents of the data chunk `target` into the fullest other chunks that have
    /// room (never into empty ones: that would gather nothing). The chunks that took data are
    /// added to `keep`, so a balance does not empty them again later.
    pub(crate) fn balance_chunk(
        &mut self,
        target: BalanceTarget,
        keep: &mut BTreeSet<u64>,
        report: &mut BalanceReport,
    ) -> Result<()> {
        self.check_writable_fs()?;
        // Like a delete, balance must work on a nearly full filesystem.
        self.txn()?.allow_reserve();
        self.flush_all_data()?;
        let end = target.logical + target.length;
        // The extents in the chunk, from the extent tree.
        let extents: Vec<(u64, u64)> = {
            let t = self.txn()?;
            let mut v = Vec::new();
            for r in t.range(
                tree_id::EXTENT_TREE,
                Key::new(target.logical, 0, 0)..Key::new(end, 0, 0),
            )? {
                let (k, _) = r?;
                if k.item_type == item_type::EXTENT_ITEM {
                    v.push((k.objectid, k.offset));
                }
            }
            v
        };
        if extents.is_empty() {
            return Ok(());
        }
        // Every file extent item pointing into the chunk, in every subvolume.
        let mut users: BTreeMap<u64, Vec<(u64, u64, FileExtent)>> = BTreeMap::new();
        for subvol in self.subvol_ids()? {
            let items = self.items_in(subvol_tree(subvol), Key::MIN, Key::MAX, usize::MAX)?;
            for (k, v) in items {
                if k.item_type != ty::FILE_EXTENT {
                    continue;
                }
                let fe = FileExtent::decode(&k, &v)?;
                if fe.bytenr >= target.logical && fe.bytenr < end {
                    users.entry(fe.bytenr).or_default().push((
                        global(subvol, k.objectid),
                        k.offset,
                        fe,
                    ));
                }
            }
        }
        let mut data_chunks = Vec::new();
        let mut dests = Vec::new();
        for (m, st) in self.txn()?.chunk_usage() {
            if m.kind != ChunkKind::Data {
                continue;
            }
            data_chunks.push(m.logical);
            if m.logical != target.logical && st.used() > 0 {
                dests.push((st.used(), m.logical));
            }
        }
        dests.sort_by(|a, b| b.cmp(a));
        let moves = Moves {
            data_chunks: &data_chunks,
            dests: dests.into_iter().map(|(_, l)| l).collect(),
        };
        let r = self.move_extents(&extents, &users, &moves, keep, report);
        self.txn()?.clear_excluded_chunks();
        if r? {
            report.chunks_emptied += 1;
        }
        Ok(())
    }

    /// A new place for an extent of `len` bytes in the first destination with room, or `None`
    /// (nothing changed) when none has.
    fn alloc_in_dests(
        &mut self,
        len: u64,
        owner: store::DataRefOwner,
        moves: &Moves<'_>,
        keep: &mut BTreeSet<u64>,
    ) -> Result<Option<u64>> {
        for &d in &moves.dests {
            let t = self.txn()?;
            t.clear_excluded_chunks();
            for &c in moves.data_chunks {
                if c != d {
                    t.exclude_chunk(c);
                }
            }
            match t.alloc_data_extent(len, owner) {
                Ok(at) => {
                    keep.insert(d);
                    return Ok(Some(at));
                }
                Err(store::Error::NoSpace { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(None)
    }

    fn move_extents(
        &mut self,
        extents: &[(u64, u64)],
        users: &BTreeMap<u64, Vec<(u64, u64, FileExtent)>>,
        moves: &Moves<'_>,
        keep: &mut BTreeSet<u64>,
        report: &mut BalanceReport,
    ) -> Result<bool> {
        let mut all = true;
        for &(old, len) in extents {
            let Some(items) = users.get(&old).filter(|v| !v.is_empty()) else {
                // Referenced by nothing a file holds (a tree being dropped): it goes with
                // that drop, not here.
                all = false;
                continue;
            };
            let (obj0, at0, fe0) = &items[0];
            let first_owner = store::DataRefOwner {
                root: crate::state::tree_of(*obj0),
                inode: crate::state::local(*obj0),
                offset: at0.wrapping_sub(fe0.offset),
            };
            let Some(new) = self.alloc_in_dests(len, first_owner, moves, keep)? else {
                // No fuller chunk has room: this chunk stays as it is from here on.
                return Ok(false);
            };
            self.changes += 1;
            let size =
                usize::try_from(len).map_err(|_| crate::Error::Invalid("extent too large"))?;
            let bytes = self.txn()?.data_io()?.read_raw(old, 0, size)?;
            if fe0.kind == ExtentKind::Regular {
                // The same bytes, so the same checksums, under the new address.
                self.write_extent(new, &bytes)?;
                // MACs bind data to its extent's nonce and its place inside the extent, never
                // to an address: they move as they are, with no key.
                if fe0
                    .crypt
                    .as_deref()
                    .is_some_and(crate::data::context_is_authenticated)
                {
                    let macs = self.macs(old, 0, len)?;
                    self.put_macs(new, &macs)?;
                }
            } else {
                self.txn()?.data_io()?.write(new, 0, &bytes, None)?;
            }
            for (i, (obj, at, fe)) in items.iter().enumerate() {
                let moved = FileExtent {
                    bytenr: new,
                    ..fe.clone()
                };
                self.put(Key::new(*obj, ty::FILE_EXTENT, *at), &moved.encode())?;
                if i > 0 {
                    self.add_extent_ref(*obj, *at, &moved)?;
                }
                self.drop_extent_ref(*obj, *at, fe)?;
            }
            report.extents_moved += 1;
            report.bytes_moved += len;
        }
        Ok(all)
    }
}
