//! The node cache: decoded, verified nodes by logical address, bounded by bytes.
//!
//! Entries are checked against the reader's pointer (generation, level) on every hit, so an
//! entry left over from a block's earlier life is never served for its new one. Eviction is
//! CLOCK: a hit sets a mark, the hand clears marks and evicts unmarked entries, so memory stays
//! under the bound however large the tree grows. Each entry is charged what its decoded node
//! really takes ([`Node::mem_bytes`]: a packed leaf only the bytes in use) plus the cache's own
//! bookkeeping, so the bound is on memory, not on a count of nodes. Dirty nodes never live here:
//! the transaction holds them until commit writes them out, then offers what it wrote.
//!
//! Once full, the cache admits only one leaf read from disk in eight ([`NodeCache::admits`]):
//! random or scanning reads would otherwise swap one cached leaf for another at the price of a
//! copy, an eviction and a free per miss, for no gain in hits. A declined leaf is used in place
//! in the reading thread's block buffer ([`take_read_buffer`], [`recycle_read_buffer`]).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::node::Node;

struct Entry {
    node: Arc<Node>,
    referenced: AtomicBool,
    /// Bytes charged for this entry.
    charge: usize,
}

/// Bookkeeping per entry beyond the node: the map's slot and the clock's.
const ENTRY_OVERHEAD: usize = std::mem::size_of::<(u64, Entry)>() + std::mem::size_of::<u64>() + 16;

/// Hashes block addresses for the maps keyed by them. Addresses are not chosen by an attacker
/// (the allocator picks them), so a multiplicative hash does: SipHash's resistance to chosen keys
/// would cost a large part of a cached lookup.
#[derive(Debug, Clone, Copy, Default)]
pub struct AddrHash;

impl std::hash::BuildHasher for AddrHash {
    type Hasher = AddrHasher;
    fn build_hasher(&self) -> AddrHasher {
        AddrHasher(0)
    }
}

/// The hasher of [`AddrHash`].
#[derive(Debug, Clone, Copy, Default)]
pub struct AddrHasher(u64);

impl std::hash::Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        // Fibonacci hashing; the fold brings the well-mixed high bits down to the low bits the
        // table indexes by (addresses are multiples of 4096, so their own low bits are zero).
        let h = self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^ (h >> 29)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 ^= v;
    }
}

/// A full cache admits one leaf read in this many (see [`NodeCache::admits`]).
const ADMIT_ONE_IN: u64 = 8;

struct Inner {
    map: HashMap<u64, Entry, AddrHash>,
    clock: VecDeque<u64>,
    bytes: usize,
}

/// A bounded cache of decoded nodes.
pub struct NodeCache {
    inner: Mutex<Inner>,
    capacity: usize,
    /// Below `capacity` by this much or more, the cache has room (eviction leaves it within about
    /// one entry of full).
    slack: usize,
    /// Leaf reads asked about since the start, for admission.
    leaf_reads: AtomicU64,
}

impl NodeCache {
    /// A cache holding at most `capacity` bytes of decoded nodes and their bookkeeping (at least
    /// sixteen nodes' worth of `node_size`, so a tree's path always fits).
    pub fn new(capacity: usize, node_size: usize) -> Self {
        NodeCache {
            inner: Mutex::new(Inner {
                map: HashMap::default(),
                clock: VecDeque::new(),
                bytes: 0,
            }),
            capacity: capacity.max(16 * node_size),
            slack: 2 * node_size,
            leaf_reads: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached node at `bytenr` if it is the one a pointer with `generation` and `level` names.
    pub fn get(&self, bytenr: u64, generation: u64, level: u8) -> Option<Arc<Node>> {
        let inner = self.lock();
        let e = inner.map.get(&bytenr)?;
        if e.node.generation != generation || e.node.level != level {
            return None;
        }
        e.referenced.store(true, Ordering::Relaxed);
        Some(e.node.clone())
    }

    /// Whether a node just read from disk at `level` should be kept. Internal nodes always are
    /// (every lookup passes through them), and so is everything while there is room. A full cache
    /// admits one leaf read in eight: under random or scanning reads, which gain
    /// nothing from swapping one cached leaf for another, that saves most misses a copy, an
    /// eviction and a free, while a leaf read again and again still gets in after a few reads
    /// and then stays (CLOCK keeps what is hit). Written nodes are always offered by the commit.
    pub fn admits(&self, level: u8) -> bool {
        if level > 0 {
            return true;
        }
        let n = self.leaf_reads.fetch_add(1, Ordering::Relaxed);
        n.is_multiple_of(ADMIT_ONE_IN) || self.lock().bytes + self.slack <= self.capacity
    }

    /// Adds or replaces a node, evicting others to stay within the bound.
    pub fn insert(&self, node: Arc<Node>) {
        let charge = node.mem_bytes() + ENTRY_OVERHEAD;
        if charge > self.capacity {
            return;
        }
        let mut inner = self.lock();
        let bytenr = node.bytenr;
        let old = inner.map.insert(
            bytenr,
            Entry {
                node,
                referenced: AtomicBool::new(false),
                charge,
            },
        );
        inner.bytes += charge;
        match old {
            Some(e) => inner.bytes -= e.charge,
            None => inner.clock.push_back(bytenr),
        }
        // Each round the hand either evicts or clears a mark, so this ends within two laps.
        while inner.bytes > self.capacity {
            let Some(b) = inner.clock.pop_front() else {
                break;
            };
            let marked = inner
                .map
                .get(&b)
                .is_some_and(|e| e.referenced.swap(false, Ordering::Relaxed));
            if marked {
                inner.clock.push_back(b);
            } else if let Some(e) = inner.map.remove(&b) {
                inner.bytes -= e.charge;
            }
        }
    }

    /// Drops the entry of a freed block.
    pub fn remove(&self, bytenr: u64) {
        let mut inner = self.lock();
        if let Some(e) = inner.map.remove(&bytenr) {
            inner.bytes -= e.charge;
            // The clock slot stays and is dropped when the hand reaches it; compact when stale
            // slots pile up so the clock stays proportional to the entries.
            if inner.clock.len() > 2 * inner.map.len() + 64 {
                let Inner { map, clock, .. } = &mut *inner;
                let mut seen = std::collections::HashSet::new();
                clock.retain(|b| map.contains_key(b) && seen.insert(*b));
            }
        }
    }

    /// Bytes of decoded nodes and bookkeeping held.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

thread_local! {
    /// Each thread's buffer for reading blocks: a node the cache keeps is a packed copy of what
    /// it needs, and a leaf it declines is used in place and handed back
    /// ([`recycle_read_buffer`]), so blocks are read into the same buffer over and over (no
    /// allocation and no zeroing per read).
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// This thread's read buffer, `len` bytes long (a new one if it is out on loan).
pub fn take_read_buffer(len: usize) -> Vec<u8> {
    let mut buf = READ_BUF.take();
    if buf.len() != len {
        buf = vec![0u8; len];
    }
    buf
}

/// Returns a buffer from [`take_read_buffer`].
pub fn give_back_read_buffer(buf: Vec<u8>) {
    READ_BUF.with_borrow_mut(|slot| {
        if slot.is_empty() {
            *slot = buf;
        }
    });
}

/// Takes back the block buffer of a node nobody else holds, if it has one
/// ([`Node::decode_in_place`]).
pub fn recycle_read_buffer(node: Arc<Node>) {
    if let Ok(node) = Arc::try_unwrap(node)
        && let Some(buf) = node.into_read_buffer()
    {
        give_back_read_buffer(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_generation_checked() {
        let c = NodeCache::new(16 * 4096, 4096);
        let leaf = |bytenr: u64, generation: u64| {
            let mut n = Node::new_leaf(bytenr, generation, 256);
            for k in 0..30 {
                n.leaf_insert(crate::key::Key::new(k, 1, 0), &[7; 100]);
            }
            Arc::new(n)
        };
        let one = leaf(4096, 0).mem_bytes() + ENTRY_OVERHEAD;
        assert!(one > 3000, "{one}");
        for i in 0..100u64 {
            c.insert(leaf(4096 * (i + 1), i));
            // Keep touching node 1 so CLOCK keeps it.
            assert!(c.get(4096, 0, 0).is_some(), "after {i}");
        }
        assert!(c.bytes() <= 16 * 4096);
        assert!(c.bytes() > 16 * 4096 - 2 * one, "fills to its bound");
        assert!(c.get(4096 * 100, 99, 0).is_some());
        assert!(c.get(4096 * 100, 98, 0).is_none(), "stale generation");
        assert!(c.get(4096 * 100, 99, 1).is_none(), "wrong level");
        assert!(c.get(4096 * 2, 1, 0).is_none(), "evicted");
        c.remove(4096);
        assert!(c.get(4096, 0, 0).is_none());
    }

    #[test]
    fn full_cache_admits_few_leaves_and_every_internal_node() {
        let c = NodeCache::new(16 * 4096, 4096);
        assert!((0..10).all(|_| c.admits(0)), "room left: everything");
        let mut b = 4096;
        while c.bytes() < 16 * 4096 - 4096 {
            let mut n = Node::new_leaf(b, 1, 256);
            n.leaf_insert(crate::key::Key::new(b, 1, 0), &[1; 1000]);
            c.insert(Arc::new(n));
            b += 4096;
        }
        c.insert(Arc::new(Node::new_leaf(b, 1, 256)));
        let mut n = Node::new_leaf(b + 4096, 1, 256);
        n.leaf_insert(crate::key::Key::new(0, 1, 0), &[1; 3000]);
        c.insert(Arc::new(n));
        assert!(c.bytes() + 2 * 4096 > 16 * 4096, "full");
        let admitted = (0..800).filter(|_| c.admits(0)).count();
        assert_eq!(admitted, 800 / ADMIT_ONE_IN as usize);
        assert!((0..10).all(|_| c.admits(1)));
    }
}
