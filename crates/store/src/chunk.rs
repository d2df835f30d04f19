//! The chunk map: the logical address space the trees and extents live in, mapped onto physical
//! device offsets in large chunks.
//!
//! Everything above the device layer speaks logical addresses. A chunk is a contiguous logical
//! range backed by a contiguous physical range of the same length, so a whole chunk can be moved
//! on the device (relocation, shrinking) by copying its bytes and changing one mapping, without
//! touching a single tree node, extent item or checksum that names a logical address.
//!
//! Rules every mapping obeys (checked on decode and on insert, so a hostile image cannot break
//! them): logical, physical and length are multiples of [`CHUNK_ALIGN`]; the length is not zero;
//! no range wraps around `u64`; logical addresses start at [`FIRST_LOGICAL`] (so 0 can mean "no
//! block"); the physical range avoids the first [`PHYSICAL_START`] bytes and every superblock copy,
//! so no write through a mapping can land on a superblock. Chunks overlap in neither space.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::superblock::{SUPERBLOCK_OFFSETS, SUPERBLOCK_SIZE};

/// Chunk addresses and lengths are multiples of this (one sector).
pub const CHUNK_ALIGN: u64 = 4096;

/// The lowest logical address a chunk may start at; logical 0 means "no block".
pub const FIRST_LOGICAL: u64 = 1 << 20;

/// Physical bytes below this belong to no chunk: boot area and the first superblock copies.
pub const PHYSICAL_START: u64 = 1 << 20;

/// The smallest chunk [`chunk_size_for`] chooses.
pub const MIN_CHUNK_SIZE: u64 = 1 << 20;

/// What a chunk holds. The kind decides which allocator serves it and never changes while the
/// chunk lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChunkKind {
    /// The chunk tree's own nodes, reachable from the superblock's bootstrap mappings.
    System,
    /// Tree nodes other than the chunk tree's.
    Metadata,
    /// File data extents.
    Data,
}

impl ChunkKind {
    fn to_disk(self) -> u8 {
        match self {
            ChunkKind::System => 1,
            ChunkKind::Metadata => 2,
            ChunkKind::Data => 3,
        }
    }

    fn from_disk(b: u8) -> Result<Self> {
        match b {
            1 => Ok(ChunkKind::System),
            2 => Ok(ChunkKind::Metadata),
            3 => Ok(ChunkKind::Data),
            other => Err(bad(format!("unknown chunk kind {other}"))),
        }
    }
}

fn bad(reason: String) -> Error {
    Error::BadChunkMapping { reason }
}

/// The size of a new chunk of `kind` on a device of `device_size` bytes.
///
/// Data chunks take a tenth of the device, metadata and system chunks a fiftieth, rounded down to
/// a power of two and kept within [1 MiB, 1 GiB] (data) or [1 MiB, 256 MiB] (metadata, system):
/// big enough that the map stays small, small enough that a small image still holds one chunk of
/// each kind and relocation moves a bounded amount.
pub fn chunk_size_for(kind: ChunkKind, device_size: u64) -> u64 {
    let (share, max) = match kind {
        ChunkKind::Data => (device_size / 10, 1 << 30),
        ChunkKind::Metadata | ChunkKind::System => (device_size / 50, 256 << 20),
    };
    let clamped = share.clamp(MIN_CHUNK_SIZE, max);
    // Round down to a power of two: clamped >= MIN_CHUNK_SIZE > 0, so ilog2 is defined.
    1u64 << clamped.ilog2()
}

/// One chunk: `length` bytes at `logical` live at `physical` on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkMapping {
    pub logical: u64,
    pub length: u64,
    pub physical: u64,
    pub kind: ChunkKind,
}

impl ChunkMapping {
    /// Bytes of one encoded mapping (see docs/FORMAT.md, "Chunk map").
    pub const ENCODED_SIZE: usize = 32;

    /// The little-endian encoding: logical, length, physical (u64 each), kind (u8), 7 zero bytes.
    pub fn encode(&self) -> [u8; Self::ENCODED_SIZE] {
        let mut b = [0u8; Self::ENCODED_SIZE];
        b[0..8].copy_from_slice(&self.logical.to_le_bytes());
        b[8..16].copy_from_slice(&self.length.to_le_bytes());
        b[16..24].copy_from_slice(&self.physical.to_le_bytes());
        b[24] = self.kind.to_disk();
        b
    }

    /// Decodes and checks one mapping. `b` must be exactly [`Self::ENCODED_SIZE`] bytes.
    pub fn decode(b: &[u8]) -> Result<Self> {
        let b: &[u8; Self::ENCODED_SIZE] = b.try_into().map_err(|_| {
            bad(format!(
                "encoded mapping is {} bytes, expected {}",
                b.len(),
                Self::ENCODED_SIZE
            ))
        })?;
        let m = ChunkMapping {
            logical: le_u64(b, 0),
            length: le_u64(b, 8),
            physical: le_u64(b, 16),
            kind: ChunkKind::from_disk(b[24])?,
        };
        m.validate()?;
        Ok(m)
    }

    /// The end of the logical range (exclusive). Never overflows for a validated mapping.
    pub fn logical_end(&self) -> u64 {
        self.logical.saturating_add(self.length)
    }

    /// The end of the physical range (exclusive). Never overflows for a validated mapping.
    pub fn physical_end(&self) -> u64 {
        self.physical.saturating_add(self.length)
    }

    /// Whether `logical` falls inside this chunk.
    pub fn contains(&self, logical: u64) -> bool {
        logical >= self.logical && logical < self.logical_end()
    }

    /// Checks the rules in the module docs.
    pub fn validate(&self) -> Result<()> {
        if self.length == 0 {
            return Err(bad(format!(
                "chunk at logical {} has length 0",
                self.logical
            )));
        }
        for (name, v) in [
            ("logical", self.logical),
            ("length", self.length),
            ("physical", self.physical),
        ] {
            if v % CHUNK_ALIGN != 0 {
                return Err(bad(format!(
                    "{name} {v} is not a multiple of {CHUNK_ALIGN}"
                )));
            }
        }
        if self.logical.checked_add(self.length).is_none() {
            return Err(bad(format!(
                "logical range {}+{} wraps",
                self.logical, self.length
            )));
        }
        let Some(physical_end) = self.physical.checked_add(self.length) else {
            return Err(bad(format!(
                "physical range {}+{} wraps",
                self.physical, self.length
            )));
        };
        if self.logical < FIRST_LOGICAL {
            return Err(bad(format!(
                "logical {} is below the first logical address {FIRST_LOGICAL}",
                self.logical
            )));
        }
        if self.physical < PHYSICAL_START {
            return Err(bad(format!(
                "physical {} is inside the reserved first {PHYSICAL_START} bytes",
                self.physical
            )));
        }
        for &sb in SUPERBLOCK_OFFSETS {
            if self.physical < sb + SUPERBLOCK_SIZE as u64 && sb < physical_end {
                return Err(bad(format!(
                    "physical range {}+{} covers the superblock copy at {sb}",
                    self.physical, self.length
                )));
            }
        }
        Ok(())
    }
}

fn le_u64(b: &[u8; ChunkMapping::ENCODED_SIZE], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// The set of chunk mappings, indexed both ways.
#[derive(Debug, Clone, Default)]
pub struct ChunkMap {
    by_logical: BTreeMap<u64, ChunkMapping>,
    /// physical start -> logical start, to refuse physical overlaps and find a chunk by offset.
    by_physical: BTreeMap<u64, u64>,
}

impl ChunkMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a mapping after checking it and refusing any overlap in logical or physical space.
    pub fn insert(&mut self, m: ChunkMapping) -> Result<()> {
        m.validate()?;
        if let Some(prev) = self.by_logical.range(..m.logical_end()).next_back()
            && prev.1.logical_end() > m.logical
        {
            return Err(Error::ChunkOverlap {
                space: "logical",
                logical: m.logical,
                existing: prev.1.logical,
            });
        }
        if let Some((_, &prev_logical)) = self.by_physical.range(..m.physical_end()).next_back()
            && let Some(prev) = self.by_logical.get(&prev_logical)
            && prev.physical_end() > m.physical
        {
            return Err(Error::ChunkOverlap {
                space: "physical",
                logical: m.logical,
                existing: prev.logical,
            });
        }
        self.by_logical.insert(m.logical, m);
        self.by_physical.insert(m.physical, m.logical);
        Ok(())
    }

    /// Removes the chunk that starts at `logical`.
    pub fn remove(&mut self, logical: u64) -> Option<ChunkMapping> {
        let m = self.by_logical.remove(&logical)?;
        self.by_physical.remove(&m.physical);
        Some(m)
    }

    /// The chunk containing `logical`.
    pub fn lookup(&self, logical: u64) -> Option<&ChunkMapping> {
        self.by_logical
            .range(..=logical)
            .next_back()
            .map(|(_, m)| m)
            .filter(|m| m.contains(logical))
    }

    /// The chunk whose physical range contains `physical`.
    pub fn lookup_physical(&self, physical: u64) -> Option<&ChunkMapping> {
        let (_, logical) = self.by_physical.range(..=physical).next_back()?;
        self.by_logical
            .get(logical)
            .filter(|m| physical < m.physical_end())
    }

    /// The physical offset of `len` bytes at `logical`; the whole range must lie in one chunk.
    pub fn to_physical(&self, logical: u64, len: u64) -> Result<u64> {
        let unmapped = || Error::Unmapped { logical, len };
        let m = self.lookup(logical).ok_or_else(unmapped)?;
        let end = logical.checked_add(len).ok_or_else(unmapped)?;
        if end > m.logical_end() {
            return Err(unmapped());
        }
        Ok(m.physical + (logical - m.logical))
    }

    /// All mappings in logical order.
    pub fn iter(&self) -> impl Iterator<Item = &ChunkMapping> {
        self.by_logical.values()
    }

    /// Number of chunks.
    pub fn len(&self) -> usize {
        self.by_logical.len()
    }

    /// Whether the map holds no chunk.
    pub fn is_empty(&self) -> bool {
        self.by_logical.is_empty()
    }

    /// The logical address a new chunk should start at: after the last chunk, never below
    /// [`FIRST_LOGICAL`]. Logical addresses are not reused, so a stale pointer into a freed chunk
    /// never resolves to a newer chunk's bytes.
    pub fn next_free_logical(&self) -> u64 {
        self.by_logical
            .values()
            .next_back()
            .map_or(FIRST_LOGICAL, |m| m.logical_end().max(FIRST_LOGICAL))
    }

    /// The physical ranges `(start, length)` no chunk uses, in order, inside
    /// `[reserved_prefix, device_size)` and skipping every superblock copy. Starts and lengths
    /// are multiples of [`CHUNK_ALIGN`] (partial units at the edges are dropped).
    pub fn free_physical_ranges(&self, device_size: u64, reserved_prefix: u64) -> Vec<(u64, u64)> {
        let start = reserved_prefix
            .max(PHYSICAL_START)
            .next_multiple_of(CHUNK_ALIGN);
        let end = device_size - device_size % CHUNK_ALIGN;
        // Used ranges: chunks, plus each superblock copy widened to whole units.
        let mut used: Vec<(u64, u64)> = self
            .by_logical
            .values()
            .map(|m| (m.physical, m.physical_end()))
            .collect();
        for &sb in SUPERBLOCK_OFFSETS {
            let lo = sb - sb % CHUNK_ALIGN;
            let hi = (sb + SUPERBLOCK_SIZE as u64).next_multiple_of(CHUNK_ALIGN);
            used.push((lo, hi));
        }
        used.sort_unstable();
        let mut free = Vec::new();
        let mut cursor = start;
        for (lo, hi) in used {
            if cursor >= end {
                break;
            }
            if lo > cursor {
                free.push((cursor, lo.min(end) - cursor));
            }
            cursor = cursor.max(hi);
        }
        if cursor < end {
            free.push((cursor, end - cursor));
        }
        free
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    fn map(logical: u64, length: u64, physical: u64) -> ChunkMapping {
        ChunkMapping {
            logical,
            length,
            physical,
            kind: ChunkKind::Data,
        }
    }

    #[test]
    fn overlaps_refused_in_both_spaces() {
        let mut cm = ChunkMap::new();
        cm.insert(map(4 * MIB, 4 * MIB, 8 * MIB)).unwrap();
        // Logical overlap from below and from above, and containment.
        for m in [
            map(2 * MIB, 4 * MIB, 32 * MIB),
            map(6 * MIB, 4 * MIB, 32 * MIB),
            map(5 * MIB, MIB, 32 * MIB),
        ] {
            assert!(matches!(
                cm.insert(m),
                Err(Error::ChunkOverlap {
                    space: "logical",
                    ..
                })
            ));
        }
        // Physical overlap.
        for m in [
            map(16 * MIB, 4 * MIB, 6 * MIB),
            map(16 * MIB, 4 * MIB, 10 * MIB),
            map(16 * MIB, MIB, 9 * MIB),
        ] {
            assert!(matches!(
                cm.insert(m),
                Err(Error::ChunkOverlap {
                    space: "physical",
                    ..
                })
            ));
        }
        // Adjacent in both spaces is fine.
        cm.insert(map(8 * MIB, 4 * MIB, 12 * MIB)).unwrap();
        cm.insert(map(2 * MIB, 2 * MIB, 4 * MIB)).unwrap();
        assert_eq!(cm.len(), 3);
        assert_eq!(cm.remove(8 * MIB), Some(map(8 * MIB, 4 * MIB, 12 * MIB)));
        assert_eq!(cm.remove(8 * MIB), None);
        // Its physical space is free again.
        cm.insert(map(40 * MIB, 4 * MIB, 12 * MIB)).unwrap();
    }

    #[test]
    fn to_physical_stays_inside_one_chunk() {
        let mut cm = ChunkMap::new();
        cm.insert(map(4 * MIB, 4 * MIB, 20 * MIB)).unwrap();
        cm.insert(map(8 * MIB, 4 * MIB, 2 * MIB)).unwrap();
        assert_eq!(cm.to_physical(4 * MIB, 4096).unwrap(), 20 * MIB);
        assert_eq!(cm.to_physical(5 * MIB + 12, 100).unwrap(), 21 * MIB + 12);
        assert_eq!(
            cm.to_physical(8 * MIB - 4096, 4096).unwrap(),
            24 * MIB - 4096
        );
        // Across the boundary into the next chunk, even though both are mapped.
        assert!(matches!(
            cm.to_physical(8 * MIB - 4096, 8192),
            Err(Error::Unmapped { .. })
        ));
        assert!(cm.to_physical(3 * MIB, 1).is_err());
        assert!(cm.to_physical(12 * MIB, 1).is_err());
        assert!(cm.to_physical(5 * MIB, u64::MAX).is_err());
        assert_eq!(cm.lookup(12 * MIB - 1).unwrap().logical, 8 * MIB);
        assert!(cm.lookup(12 * MIB).is_none());
        assert_eq!(cm.lookup_physical(23 * MIB).unwrap().logical, 4 * MIB);
        assert!(cm.lookup_physical(6 * MIB).is_none());
    }

    #[test]
    fn mapping_rules() {
        let good = map(FIRST_LOGICAL, MIB, PHYSICAL_START);
        good.validate().unwrap();
        let bad_ones = [
            map(FIRST_LOGICAL, 0, 2 * MIB),
            map(FIRST_LOGICAL + 1, MIB, 2 * MIB),
            map(FIRST_LOGICAL, MIB + 512, 2 * MIB),
            map(0, MIB, 2 * MIB),
            map(FIRST_LOGICAL, MIB, 0),
            map(FIRST_LOGICAL, MIB, 64 * 1024),
            // Covers the superblock copy at 64 MiB.
            map(FIRST_LOGICAL, 2 * MIB, 63 * MIB),
            map(u64::MAX - 4095, 8192, 2 * MIB),
            map(FIRST_LOGICAL, 8192, u64::MAX - 4095),
        ];
        for m in bad_ones {
            assert!(
                matches!(m.validate(), Err(Error::BadChunkMapping { .. })),
                "{m:?}"
            );
            assert!(ChunkMap::new().insert(m).is_err());
            assert!(ChunkMapping::decode(&m.encode()).is_err());
        }
        let mut b = good.encode();
        b[24] = 9;
        assert!(ChunkMapping::decode(&b).is_err());
        assert!(ChunkMapping::decode(&good.encode()[..31]).is_err());
    }

    #[test]
    fn free_ranges_and_next_logical() {
        let mut cm = ChunkMap::new();
        assert_eq!(cm.next_free_logical(), FIRST_LOGICAL);
        let size = 100 * MIB + 100;
        assert_eq!(
            cm.free_physical_ranges(size, MIB),
            vec![(MIB, 63 * MIB), (64 * MIB + 4096, 36 * MIB - 4096)]
        );
        cm.insert(map(FIRST_LOGICAL, 2 * MIB, 2 * MIB)).unwrap();
        cm.insert(map(8 * MIB, 2 * MIB, 70 * MIB)).unwrap();
        assert_eq!(cm.next_free_logical(), 10 * MIB);
        assert_eq!(
            cm.free_physical_ranges(size, MIB),
            vec![
                (MIB, MIB),
                (4 * MIB, 60 * MIB),
                (64 * MIB + 4096, 6 * MIB - 4096),
                (72 * MIB, 28 * MIB)
            ]
        );
        // A bigger reserved prefix and a small device.
        assert_eq!(cm.free_physical_ranges(3 * MIB, 2 * MIB), vec![]);
        assert_eq!(
            cm.free_physical_ranges(5 * MIB, 3 * MIB),
            vec![(4 * MIB, MIB)]
        );
        assert_eq!(cm.free_physical_ranges(0, 0), vec![]);
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(chunk_size_for(ChunkKind::Data, 16 * MIB), MIB);
        assert_eq!(chunk_size_for(ChunkKind::Data, 1 << 30), 64 * MIB);
        assert_eq!(chunk_size_for(ChunkKind::Data, 1 << 40), 1 << 30);
        assert_eq!(chunk_size_for(ChunkKind::Metadata, 1 << 30), 16 * MIB);
        assert_eq!(chunk_size_for(ChunkKind::System, 1 << 40), 256 * MIB);
        assert_eq!(chunk_size_for(ChunkKind::System, 0), MIB);
    }

    fn arb_mapping() -> impl Strategy<Value = ChunkMapping> {
        (
            (FIRST_LOGICAL / CHUNK_ALIGN)..(1u64 << 40),
            1u64..(1 << 20),
            (128 * MIB / CHUNK_ALIGN)..(1u64 << 40),
            prop_oneof![
                Just(ChunkKind::System),
                Just(ChunkKind::Metadata),
                Just(ChunkKind::Data)
            ],
        )
            .prop_map(|(l, n, p, kind)| ChunkMapping {
                logical: l * CHUNK_ALIGN,
                length: n * CHUNK_ALIGN,
                physical: p * CHUNK_ALIGN,
                kind,
            })
    }

    proptest! {
        #[test]
        fn codec_round_trip(m in arb_mapping()) {
            let b = m.encode();
            prop_assert_eq!(ChunkMapping::decode(&b).unwrap(), m);
            prop_assert_eq!(&b[25..], &[0u8; 7][..]);
        }

        #[test]
        fn decode_random_bytes_never_panics(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(m) = ChunkMapping::decode(&b) {
                prop_assert!(m.validate().is_ok());
                prop_assert_eq!(&m.encode()[..25], &b[..25]);
            }
        }

        #[test]
        fn inserted_mappings_never_overlap(ms in proptest::collection::vec(arb_mapping(), 0..30)) {
            let mut cm = ChunkMap::new();
            for m in ms {
                let _ = cm.insert(m);
            }
            let all: Vec<_> = cm.iter().copied().collect();
            for (i, a) in all.iter().enumerate() {
                for b in &all[i + 1..] {
                    prop_assert!(a.logical_end() <= b.logical || b.logical_end() <= a.logical);
                    prop_assert!(a.physical_end() <= b.physical || b.physical_end() <= a.physical);
                }
                prop_assert_eq!(cm.to_physical(a.logical, a.length).unwrap(), a.physical);
            }
        }
    }
}
