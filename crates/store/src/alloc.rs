//! Space: which logical bytes of each chunk are free, allocated, or pinned.
//!
//! Freed blocks are *pinned*: they stay out of allocation until the commit that freed them is
//! durable and no live reader looks at a generation that can see them (from the generation that
//! wrote the block to the one before it was freed), so a crash or a slow reader never sees a
//! block it needs overwritten, while a long-lived reader holds back only its own blocks.
//! Allocation is next-fit per kind of chunk: new blocks of a commit land side by side, so its
//! writes are mostly sequential. On disk the free-space tree lists, per chunk, the ranges
//! that are free in the committed state (free plus pinned); mounting reads that tree and never
//! scans the extent tree. [`Allocator::fst_changes`] gives the item changes that bring the tree
//! in line with memory.
//!
//! A metadata reserve keeps some metadata space back from ordinary allocations so that deleting
//! (which copies paths before it frees anything) and committing always work on a full filesystem.

use std::collections::{BTreeMap, BTreeSet};

use crate::chunk::{ChunkKind, ChunkMapping};
use crate::error::{Error, Result};

/// Disjoint, coalesced byte ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    /// start -> length
    map: BTreeMap<u64, u64>,
    total: u64,
}

impl RangeSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes in the set.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The ranges, in order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.map.iter().map(|(&s, &l)| (s, l))
    }

    /// Whether every byte of `[start, start+len)` is in the set.
    pub fn contains(&self, start: u64, len: u64) -> bool {
        self.map
            .range(..=start)
            .next_back()
            .is_some_and(|(&s, &l)| s + l >= start + len)
    }

    /// Whether any byte of `[start, start+len)` is in the set.
    pub fn overlaps(&self, start: u64, len: u64) -> bool {
        if let Some((&s, &l)) = self.map.range(..=start).next_back()
            && s + l > start
        {
            return true;
        }
        self.map.range(start..start + len).next().is_some()
    }

    /// Adds a range that must not overlap the set; merges with neighbours.
    pub fn insert(&mut self, start: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        if self.overlaps(start, len) {
            return Err(Error::Corrupt(format!(
                "range {start}+{len} freed twice (overlaps free space)"
            )));
        }
        let (mut s, mut l) = (start, len);
        if let Some((&ps, &pl)) = self.map.range(..start).next_back()
            && ps + pl == start
        {
            self.map.remove(&ps);
            s = ps;
            l += pl;
        }
        if let Some(&nl) = self.map.get(&(start + len)) {
            self.map.remove(&(start + len));
            l += nl;
        }
        self.map.insert(s, l);
        self.total += len;
        Ok(())
    }

    /// Removes a range that must lie inside one range of the set.
    pub fn remove(&mut self, start: u64, len: u64) -> Result<()> {
        let Some((&s, &l)) = self.map.range(..=start).next_back() else {
            return Err(Error::Corrupt(format!("range {start}+{len} is not free")));
        };
        if s + l < start + len {
            return Err(Error::Corrupt(format!("range {start}+{len} is not free")));
        }
        self.map.remove(&s);
        if start > s {
            self.map.insert(s, start - s);
        }
        if s + l > start + len {
            self.map.insert(start + len, s + l - start - len);
        }
        self.total -= len;
        Ok(())
    }

    /// The first `len` bytes aligned to `align` at or after `hint`, wrapping to the start.
    pub fn find(&self, len: u64, align: u64, hint: u64) -> Option<u64> {
        let fit = |(&s, &l): (&u64, &u64)| {
            let a = s.next_multiple_of(align);
            (a + len <= s + l).then_some(a)
        };
        // A range straddling the hint counts from the hint.
        if let Some((&s, &l)) = self.map.range(..hint).next_back()
            && s + l > hint
        {
            let a = hint.next_multiple_of(align);
            if a + len <= s + l {
                return Some(a);
            }
        }
        self.map
            .range(hint..)
            .find_map(fit)
            .or_else(|| self.map.range(..hint).find_map(fit))
    }

    /// The union of two sets.
    pub fn union(&self, other: &RangeSet) -> RangeSet {
        let mut out = self.clone();
        for (s, l) in other.iter() {
            // Pieces already present are skipped byte range by byte range.
            let mut at = s;
            while at < s + l {
                if let Some((&os, &ol)) = out.map.range(..=at).next_back()
                    && os + ol > at
                {
                    at = os + ol;
                    continue;
                }
                let next = out
                    .map
                    .range(at..)
                    .next()
                    .map_or(s + l, |(&ns, _)| ns.min(s + l));
                // `at..next` is not in `out`; insert cannot fail.
                let _ = out.insert(at, next - at);
                at = next;
            }
        }
        out
    }
}

/// (start, length) pairs.
pub type Ranges = Vec<(u64, u64)>;

/// One chunk's space.
#[derive(Debug, Clone)]
pub struct ChunkSpace {
    pub mapping: ChunkMapping,
    /// Allocatable now.
    pub free: RangeSet,
    /// Freed, not yet allocatable.
    pub pinned: RangeSet,
    /// What the free-space tree holds for this chunk.
    pub on_disk: RangeSet,
}

/// The allocator of one filesystem.
#[derive(Debug, Clone)]
pub struct Allocator {
    chunks: BTreeMap<u64, ChunkSpace>,
    /// generation that freed them -> ranges
    /// freeing generation -> (start, length, generation that wrote the block)
    pinned: BTreeMap<u64, Vec<(u64, u64, u64)>>,
    /// Chunks whose free-space tree items may be stale.
    dirty: BTreeSet<u64>,
    node_size: u64,
    sector_size: u64,
    meta_reserve: u64,
    /// Where the next search starts, per kind (next-fit).
    hints: [u64; 3],
    /// Free bytes per kind, kept in step with the chunks' free sets (read on every allocation
    /// and every tree change's space check).
    free_bytes: [u64; 3],
    /// Chunks no allocation may use (being moved by a resize).
    excluded: BTreeSet<u64>,
}

fn kind_index(k: ChunkKind) -> usize {
    match k {
        ChunkKind::System => 0,
        ChunkKind::Metadata => 1,
        ChunkKind::Data => 2,
    }
}

fn kind_name(k: ChunkKind) -> &'static str {
    match k {
        ChunkKind::System => "system",
        ChunkKind::Metadata => "metadata",
        ChunkKind::Data => "data",
    }
}

/// Bytes of one kind of space.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpaceStats {
    pub total: u64,
    pub free: u64,
    pub pinned: u64,
}

impl SpaceStats {
    /// Bytes in use by the committed or running state.
    pub fn used(&self) -> u64 {
        self.total - self.free - self.pinned
    }
}

impl Allocator {
    /// An allocator over `chunks`, with each chunk's free ranges as the free-space tree lists them.
    pub fn new(
        chunks: impl IntoIterator<Item = (ChunkMapping, RangeSet)>,
        node_size: u64,
        sector_size: u64,
    ) -> Result<Self> {
        let mut map = BTreeMap::new();
        let mut meta_total = 0;
        let mut free_bytes = [0; 3];
        for (m, free) in chunks {
            if let Some((s, l)) = free.iter().find(|&(s, l)| {
                s < m.logical || s.checked_add(l).is_none_or(|e| e > m.logical_end())
            }) {
                return Err(Error::Corrupt(format!(
                    "free range {s}+{l} outside its chunk at {}",
                    m.logical
                )));
            }
            if m.kind == ChunkKind::Metadata {
                meta_total += m.length;
            }
            free_bytes[kind_index(m.kind)] += free.total();
            map.insert(
                m.logical,
                ChunkSpace {
                    mapping: m,
                    on_disk: free.clone(),
                    free,
                    pinned: RangeSet::new(),
                },
            );
        }
        // A thirty-second of metadata, at least 16 nodes, at most a quarter.
        let meta_reserve = (meta_total / 32).max(16 * node_size).min(meta_total / 4);
        Ok(Allocator {
            chunks: map,
            pinned: BTreeMap::new(),
            dirty: BTreeSet::new(),
            node_size,
            sector_size,
            meta_reserve,
            hints: [0; 3],
            free_bytes,
            excluded: BTreeSet::new(),
        })
    }

    /// Bytes kept back from ordinary metadata allocations.
    pub fn meta_reserve(&self) -> u64 {
        self.meta_reserve
    }

    /// Space figures of one kind.
    pub fn stats(&self, kind: ChunkKind) -> SpaceStats {
        let mut s = SpaceStats::default();
        for c in self.chunks.values().filter(|c| c.mapping.kind == kind) {
            s.total += c.mapping.length;
            s.free += c.free.total();
            s.pinned += c.pinned.total();
        }
        s
    }

    /// Allocates `len` bytes of `kind`. Ordinary metadata allocations leave the reserve alone;
    /// `use_reserve` lets deletes and commits dip into it.
    pub fn alloc(&mut self, kind: ChunkKind, len: u64, use_reserve: bool) -> Result<u64> {
        let no_space = || Error::NoSpace {
            kind: kind_name(kind),
            needed: len,
        };
        // No chunk is this large; refusing here keeps the address arithmetic below in range.
        if len == 0 || len > 1 << 50 {
            return Err(no_space());
        }
        if kind == ChunkKind::Metadata
            && !use_reserve
            && self.free_bytes(kind) < len + self.meta_reserve
        {
            return Err(no_space());
        }
        let align = if kind == ChunkKind::Data {
            self.sector_size
        } else {
            self.node_size
        };
        let hint = self.hints[kind_index(kind)];
        // Chunks from the one holding the hint onwards, then the rest.
        // (Searched without collecting: this runs for every node a transaction copies.)
        let first = self
            .chunks
            .range(..=hint)
            .next_back()
            .filter(|(_, c)| c.mapping.kind == kind && c.mapping.contains(hint))
            .map_or(0, |(&l, _)| l);
        let found = self
            .chunks
            .range(first..)
            .chain(self.chunks.range(..first))
            .filter(|(l, c)| c.mapping.kind == kind && !self.excluded.contains(l))
            .find_map(|(&logical, c)| {
                let h = if c.mapping.contains(hint) {
                    hint
                } else {
                    c.mapping.logical
                };
                c.free.find(len, align, h).map(|at| (logical, at))
            });
        let (logical, at) = found.ok_or_else(no_space)?;
        let c = self.chunks.get_mut(&logical).ok_or_else(no_space)?;
        c.free.remove(at, len)?;
        self.free_bytes[kind_index(kind)] -= len;
        self.dirty.insert(logical);
        self.hints[kind_index(kind)] = at + len;
        Ok(at)
    }

    /// Keeps every allocation out of the chunk at `logical` (its bytes are being copied to a new
    /// place, so nothing may change in it until the move commits).
    pub fn exclude(&mut self, logical: u64) {
        self.excluded.insert(logical);
    }

    /// Lets allocations use every chunk again.
    pub fn clear_excluded(&mut self) {
        self.excluded.clear();
    }

    /// Whether no byte of the chunk at `logical` is in use (all free, none pinned).
    pub fn chunk_unused(&self, logical: u64) -> bool {
        self.chunks
            .get(&logical)
            .is_some_and(|c| c.free.total() == c.mapping.length)
    }

    /// Bytes of `kind` allocatable now (the reserve included).
    pub fn free_bytes(&self, kind: ChunkKind) -> u64 {
        self.free_bytes[kind_index(kind)]
    }

    fn chunk_of(&mut self, start: u64, len: u64) -> Result<&mut ChunkSpace> {
        let (_, c) = self
            .chunks
            .range_mut(..=start)
            .next_back()
            .ok_or_else(|| Error::Corrupt(format!("range {start}+{len} is in no chunk")))?;
        if start + len > c.mapping.logical_end() {
            return Err(Error::Corrupt(format!(
                "range {start}+{len} crosses a chunk end"
            )));
        }
        Ok(c)
    }

    /// Returns a range that no committed state ever referenced: allocatable at once.
    pub fn free_now(&mut self, start: u64, len: u64) -> Result<()> {
        let c = self.chunk_of(start, len)?;
        c.free.insert(start, len)?;
        let (l, k) = (c.mapping.logical, kind_index(c.mapping.kind));
        self.free_bytes[k] += len;
        self.dirty.insert(l);
        Ok(())
    }

    /// Frees a range that committed state references: pinned until generation `freed` is
    /// durable and no reader looks at a generation in `created..freed` (the generations whose
    /// state holds the range; `created` is the generation that wrote it, 0 if unknown).
    pub fn pin(&mut self, start: u64, len: u64, freed: u64, created: u64) -> Result<()> {
        let c = self.chunk_of(start, len)?;
        if c.free.overlaps(start, len) {
            return Err(Error::Corrupt(format!("range {start}+{len} freed twice")));
        }
        c.pinned.insert(start, len)?;
        let l = c.mapping.logical;
        self.dirty.insert(l);
        self.pinned
            .entry(freed)
            .or_default()
            .push((start, len, created));
        Ok(())
    }

    /// Makes allocatable every pinned range freed by a generation up to `durable` that no
    /// reader in `readers` (generations of live read views) may still read.
    pub fn release_pinned(&mut self, durable: u64, readers: &[u64]) -> Result<()> {
        let gens: Vec<u64> = self.pinned.range(..=durable).map(|(g, _)| *g).collect();
        for freed in gens {
            let entries = self.pinned.remove(&freed).unwrap_or_default();
            let mut keep = Vec::new();
            for (start, len, created) in entries {
                if readers.iter().any(|&r| created <= r && r < freed) {
                    keep.push((start, len, created));
                    continue;
                }
                let c = self.chunk_of(start, len)?;
                c.pinned.remove(start, len)?;
                c.free.insert(start, len)?;
                let k = kind_index(c.mapping.kind);
                self.free_bytes[k] += len;
                // Free plus pinned is unchanged, so the free-space tree is too.
            }
            if !keep.is_empty() {
                self.pinned.insert(freed, keep);
            }
        }
        Ok(())
    }

    /// Starts of the ranges generation `freed` pinned (that are still pinned).
    pub fn freed_in(&self, freed: u64) -> impl Iterator<Item = u64> + '_ {
        self.pinned
            .get(&freed)
            .into_iter()
            .flat_map(|v| v.iter().map(|&(start, _, _)| start))
    }

    /// Whether a range is free or pinned (not in use).
    pub fn is_unused(&self, start: u64, len: u64) -> bool {
        self.chunks
            .range(..=start)
            .next_back()
            .is_some_and(|(_, c)| c.free.contains(start, len) || c.pinned.contains(start, len))
    }

    /// Per chunk, the free-space tree items to delete and to insert so the tree lists free plus
    /// pinned. Marks the chunks clean, as if the changes were applied.
    pub fn fst_changes(&mut self) -> (Ranges, Ranges) {
        let (mut del, mut ins) = (Vec::new(), Vec::new());
        for l in std::mem::take(&mut self.dirty) {
            let Some(c) = self.chunks.get_mut(&l) else {
                continue;
            };
            let want = c.free.union(&c.pinned);
            let have: BTreeSet<(u64, u64)> = c.on_disk.iter().collect();
            let want_set: BTreeSet<(u64, u64)> = want.iter().collect();
            del.extend(have.difference(&want_set));
            ins.extend(want_set.difference(&have));
            c.on_disk = want;
        }
        (del, ins)
    }

    /// For a new filesystem: the free-space tree is empty, so every chunk needs its items.
    pub fn forget_on_disk(&mut self) {
        for (l, c) in &mut self.chunks {
            c.on_disk = RangeSet::new();
            self.dirty.insert(*l);
        }
    }

    /// Whether some chunk's free-space items may be stale.
    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// All chunks.
    pub fn chunks(&self) -> impl Iterator<Item = &ChunkSpace> {
        self.chunks.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn range_set_matches_a_bitmap(ops in proptest::collection::vec((any::<bool>(), 0u64..200, 1u64..20), 1..200)) {
            let mut rs = RangeSet::new();
            let mut bits = [false; 220];
            for (add, s, l) in ops {
                let all_set = (s..s + l).all(|i| bits[i as usize]);
                let none_set = (s..s + l).all(|i| !bits[i as usize]);
                if add {
                    prop_assert_eq!(rs.insert(s, l).is_ok(), none_set);
                    if none_set { (s..s + l).for_each(|i| bits[i as usize] = true); }
                } else {
                    // Removal succeeds exactly when the range lies in one stored range.
                    let ok = rs.contains(s, l);
                    prop_assert_eq!(rs.remove(s, l).is_ok(), ok);
                    if ok {
                        prop_assert!(all_set);
                        (s..s + l).for_each(|i| bits[i as usize] = false);
                    }
                }
                prop_assert_eq!(rs.total(), bits.iter().filter(|&&b| b).count() as u64);
                // Coalesced: no two ranges touch.
                let v: Vec<_> = rs.iter().collect();
                for w in v.windows(2) { prop_assert!(w[0].0 + w[0].1 < w[1].0); }
            }
        }

        #[test]
        fn union_is_the_or(a in proptest::collection::btree_set(0u64..300, 0..100), b in proptest::collection::btree_set(0u64..300, 0..100)) {
            let mk = |s: &std::collections::BTreeSet<u64>| { let mut r = RangeSet::new(); for &i in s { r.insert(i, 1).unwrap(); } r };
            let u = mk(&a).union(&mk(&b));
            let both: std::collections::BTreeSet<u64> = a.union(&b).copied().collect();
            prop_assert_eq!(u, mk(&both));
        }
    }

    fn alloc_over(meta_len: u64) -> Allocator {
        let m = ChunkMapping {
            logical: 1 << 20,
            length: meta_len,
            physical: 2 << 20,
            kind: ChunkKind::Metadata,
        };
        let mut free = RangeSet::new();
        free.insert(m.logical, m.length).unwrap();
        Allocator::new([(m, free)], 4096, 4096).unwrap()
    }

    #[test]
    fn pinned_space_waits_for_its_commit_and_reserve_holds() {
        let mut a = alloc_over(1 << 20);
        let reserve = a.meta_reserve();
        assert_eq!(reserve, 16 * 4096);
        let mut got = Vec::new();
        while let Ok(b) = a.alloc(ChunkKind::Metadata, 4096, false) {
            got.push(b);
        }
        assert_eq!(a.stats(ChunkKind::Metadata).free, reserve);
        assert!(matches!(
            a.alloc(ChunkKind::Metadata, 4096, false),
            Err(Error::NoSpace { .. })
        ));
        // A delete may use the reserve.
        let r = a.alloc(ChunkKind::Metadata, 4096, true).unwrap();
        a.free_now(r, 4096).unwrap();
        a.pin(got[0], 4096, 7, 3).unwrap();
        assert!(a.pin(got[0], 4096, 7, 3).is_err(), "double free refused");
        assert_eq!(a.stats(ChunkKind::Metadata).pinned, 4096);
        assert!(matches!(
            a.alloc(ChunkKind::Metadata, 4096, false),
            Err(Error::NoSpace { .. })
        ));
        a.release_pinned(6, &[]).unwrap();
        assert_eq!(a.stats(ChunkKind::Metadata).pinned, 4096);
        // A reader of generation 3..7 still sees the block; one of 2 or of 7 does not.
        a.release_pinned(7, &[5]).unwrap();
        assert_eq!(a.stats(ChunkKind::Metadata).pinned, 4096);
        a.release_pinned(7, &[2, 7]).unwrap();
        assert_eq!(a.stats(ChunkKind::Metadata).free, reserve + 4096);
        // The running count agrees with the chunks' sets.
        assert_eq!(a.free_bytes(ChunkKind::Metadata), reserve + 4096);
        a.alloc(ChunkKind::Metadata, 4096, false).unwrap();
        assert!(matches!(
            a.alloc(ChunkKind::Metadata, 4096, false),
            Err(Error::NoSpace { .. })
        ));
    }

    #[test]
    fn fst_changes_track_free_plus_pinned() {
        let mut a = alloc_over(1 << 20);
        let (del, ins) = a.fst_changes();
        assert!(del.is_empty() && ins.is_empty());
        let b = a.alloc(ChunkKind::Metadata, 4096, false).unwrap();
        let (del, ins) = a.fst_changes();
        assert_eq!(del, vec![(1 << 20, 1 << 20)]);
        assert_eq!(ins, vec![(b + 4096, (1 << 20) - 4096)]);
        a.pin(b, 4096, 3, 1).unwrap();
        let (del, ins) = a.fst_changes();
        assert_eq!((del.len(), ins), (1, vec![(1 << 20, 1 << 20)]));
        a.release_pinned(3, &[]).unwrap();
        assert!(!a.has_dirty());
    }
}
