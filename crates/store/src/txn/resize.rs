//! Resizing a filesystem: growing maps new chunks onto the added device space; shrinking removes
//! the chunks beyond the new end that hold nothing and moves the others, whole, into free
//! physical space below it.
//!
//! A move copies a chunk's bytes as they are on the device (ciphertext stays ciphertext: no key
//! and no crypt context is ever involved) and changes one mapping. Every tree node, extent item
//! and checksum names logical addresses, so nothing else changes and every sharing stays as it
//! was. Crash safety: the copy goes to physical space no chunk uses, is flushed, and only then
//! does one commit switch the mappings (and the superblock's size); the moved chunks are kept out
//! of every allocation of that commit, so the copy is exactly their committed content. A crash
//! before the commit leaves the old mapping, whose bytes were never touched.
//!
//! The chunk map of an open store is fixed, so a resize consumes the store: reopen after it.

use std::collections::BTreeSet;

use super::*;
use crate::chunk::CHUNK_ALIGN;

/// What a resize did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResizeReport {
    pub old_size: u64,
    pub new_size: u64,
    pub chunks_added: usize,
    pub chunks_removed: usize,
    pub chunks_moved: usize,
    /// Bytes copied by the moves.
    pub bytes_moved: u64,
}

/// Bytes copied per device read and write during a move.
const COPY_PIECE: u64 = 1 << 20;

impl Store {
    /// Resizes the filesystem to `new_size` bytes of its device, which must already be that
    /// large when growing (the caller cuts the device after a shrink). `progress(done, total)`
    /// counts the bytes moved. Consumes the store: reopen to use the new size.
    ///
    /// Shrinking refuses (changing nothing) when a chunk beyond the new end is in use and no
    /// free physical range below it can take the whole chunk.
    pub fn resize(self, new_size: u64, progress: &mut dyn FnMut(u64, u64)) -> Result<ResizeReport> {
        let new_size = new_size - new_size % CHUNK_ALIGN;
        let mut txn = self.begin()?;
        let old_size = txn.w.sb.total_bytes;
        let mut report = ResizeReport {
            old_size,
            new_size,
            ..ResizeReport::default()
        };
        if new_size == old_size {
            return Ok(report);
        }
        let min = PHYSICAL_START + 8 * MIN_RESIZE_CHUNK;
        if new_size < min {
            return Err(Error::InvalidRequest(format!(
                "{new_size} bytes is below the smallest filesystem ({min} bytes)"
            )));
        }
        if new_size > old_size {
            if self.shared.dev.size() < new_size {
                return Err(Error::InvalidRequest(format!(
                    "the device holds {} bytes, not the {new_size} asked for",
                    self.shared.dev.size()
                )));
            }
            report.chunks_added = txn.add_chunks(new_size)?;
        } else {
            txn.shrink(new_size, &mut report, progress)?;
        }
        txn.w.sb.total_bytes = new_size;
        txn.commit()?;
        Ok(report)
    }
}

/// Chunks a grow adds are at least this large (smaller free pieces stay unused).
const MIN_RESIZE_CHUNK: u64 = 1 << 20;

impl WriteTxn<'_> {
    /// Maps new chunks onto the physical space below `new_size` that no chunk uses: metadata
    /// chunks for the share of metadata the filesystem has now, data chunks for the rest.
    fn add_chunks(&mut self, new_size: u64) -> Result<usize> {
        let chunks = self.shared.chunks.clone();
        let meta_total = self.alloc.stats(ChunkKind::Metadata).total;
        let data_total = self.alloc.stats(ChunkKind::Data).total;
        let all = meta_total + data_total;
        let mut meta_want = if all == 0 {
            0
        } else {
            let free: u64 = chunks
                .free_physical_ranges(new_size, PHYSICAL_START)
                .iter()
                .map(|r| r.1)
                .sum();
            (free as u128 * meta_total as u128 / all as u128) as u64
        };
        let mut map = chunks;
        let mut logical = map.next_free_logical();
        let mut added = 0;
        for (mut physical, mut len) in map.free_physical_ranges(new_size, PHYSICAL_START) {
            while len >= MIN_RESIZE_CHUNK {
                let kind = if meta_want >= MIN_RESIZE_CHUNK {
                    ChunkKind::Metadata
                } else {
                    ChunkKind::Data
                };
                let size =
                    chunk_size_for(kind, new_size).min(len) / MIN_RESIZE_CHUNK * MIN_RESIZE_CHUNK;
                let size = if kind == ChunkKind::Metadata {
                    size.min(meta_want.next_multiple_of(MIN_RESIZE_CHUNK))
                } else {
                    size
                };
                let m = ChunkMapping {
                    logical,
                    length: size,
                    physical,
                    kind,
                };
                map.insert(m)?;
                self.insert(
                    tree_id::CHUNK_TREE,
                    Key::new(m.logical, item_type::CHUNK_ITEM, m.length),
                    &m.encode(),
                )?;
                self.insert(
                    tree_id::FREE_SPACE_TREE,
                    Key::new(m.logical, item_type::FREE_SPACE_EXTENT, m.length),
                    &[],
                )?;
                if kind == ChunkKind::Metadata {
                    meta_want = meta_want.saturating_sub(size);
                }
                logical += size;
                physical += size;
                len -= size;
                added += 1;
            }
        }
        Ok(added)
    }

    /// Removes unused chunks beyond `new_size` and moves the used ones below it.
    fn shrink(
        &mut self,
        new_size: u64,
        report: &mut ResizeReport,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<()> {
        let chunks = self.shared.chunks.clone();
        let beyond: Vec<ChunkMapping> = chunks
            .iter()
            .filter(|m| m.physical_end() > new_size)
            .copied()
            .collect();
        let mut map = chunks.clone();
        let mut moves: Vec<(ChunkMapping, u64)> = Vec::new();
        let mut removed = BTreeSet::new();
        for m in &beyond {
            if m.kind == ChunkKind::System {
                return Err(Error::InvalidRequest(format!(
                    "the system chunk at physical {} lies beyond {new_size}; it cannot move yet",
                    m.physical
                )));
            }
            if self.alloc.chunk_unused(m.logical) {
                map.remove(m.logical);
                removed.insert(m.logical);
            }
        }
        // Largest first into the lowest free range that takes it whole.
        let mut used: Vec<ChunkMapping> = beyond
            .iter()
            .filter(|m| !removed.contains(&m.logical))
            .copied()
            .collect();
        used.sort_by_key(|m| std::cmp::Reverse(m.length));
        for m in used {
            map.remove(m.logical);
            let hole = |map: &ChunkMap| {
                map.free_physical_ranges(new_size, PHYSICAL_START)
                    .into_iter()
                    .find(|(_, len)| *len >= m.length)
            };
            if hole(&map).is_none() {
                // Make room: an unused chunk of the same kind below the new end, at least as
                // long, gives its place to this one (the kind keeps its capacity).
                let spare = map
                    .iter()
                    .filter(|c| {
                        c.kind == m.kind
                            && c.length >= m.length
                            && c.physical_end() <= new_size
                            && self.alloc.chunk_unused(c.logical)
                    })
                    .min_by_key(|c| c.length)
                    .copied();
                if let Some(c) = spare {
                    map.remove(c.logical);
                    removed.insert(c.logical);
                }
            }
            let Some((at, _)) = hole(&map) else {
                return Err(Error::NoSpace {
                    kind: "resize (a used chunk beyond the new size finds no free place below it)",
                    needed: m.length,
                });
            };
            let moved = ChunkMapping { physical: at, ..m };
            map.insert(moved)?;
            moves.push((m, at));
        }
        // Nothing may change inside a moving chunk until the move commits.
        for (m, _) in &moves {
            self.alloc.exclude(m.logical);
        }
        let total: u64 = moves.iter().map(|(m, _)| m.length).sum();
        let mut done = 0;
        let dev = self.shared.dev.clone();
        let mut buf = vec![0u8; COPY_PIECE as usize];
        for (m, to) in &moves {
            let mut at = 0;
            while at < m.length {
                let n = (m.length - at).min(COPY_PIECE) as usize;
                dev.read_at(&mut buf[..n], m.physical + at)?;
                dev.write_at(&buf[..n], to + at)?;
                at += n as u64;
                done += n as u64;
                progress(done, total);
            }
        }
        dev.flush()?;
        for (m, to) in &moves {
            let moved = ChunkMapping {
                physical: *to,
                ..*m
            };
            self.insert(
                tree_id::CHUNK_TREE,
                Key::new(m.logical, item_type::CHUNK_ITEM, m.length),
                &moved.encode(),
            )?;
        }
        for logical in &removed {
            let Some(m) = chunks.lookup(*logical).copied() else {
                continue;
            };
            self.delete(
                tree_id::CHUNK_TREE,
                &Key::new(m.logical, item_type::CHUNK_ITEM, m.length),
            )?;
            let fst: Vec<Key> = self
                .range(
                    tree_id::FREE_SPACE_TREE,
                    Key::new(m.logical, 0, 0)..Key::new(m.logical_end(), 0, 0),
                )?
                .map(|r| r.map(|(k, _)| k))
                .collect::<Result<_>>()?;
            for k in fst {
                self.delete(tree_id::FREE_SPACE_TREE, &k)?;
            }
            self.alloc.exclude(m.logical);
        }
        report.chunks_moved = moves.len();
        report.bytes_moved = total;
        report.chunks_removed = removed.len();
        Ok(())
    }
}
