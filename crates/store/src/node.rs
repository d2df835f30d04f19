//! Tree nodes: the on-disk block every B-tree is made of, and its decoded form.
//!
//! A node is one block of the filesystem's node size. A header names the node (checksum, fs uuid,
//! the logical address it was written at, generation, owner tree, level) so a read can refuse a
//! misdirected, stale, foreign or damaged block. Leaves hold items: headers grow from the front,
//! values are packed from the back. Internal nodes hold (key, child address, child generation)
//! pointers. Decoding checks every field and returns errors; the layout is in docs/FORMAT-trees.md.
//!
//! The decoded form is a sorted vector with a running byte count, so an insert is a binary search
//! and a move, and a node is encoded once, when it is written out.

use crate::checksum::{CSUM_SIZE, checksum};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::superblock::MAX_TREE_LEVEL;

/// Bytes of the node header.
pub const HEADER_SIZE: usize = 64;
/// Bytes of one leaf item header: key, value offset (u32), value size (u32).
pub const ITEM_HEADER_SIZE: usize = Key::ENCODED_SIZE + 8;
/// Bytes of one internal pointer: key, child bytenr (u64), child generation (u64).
pub const PTR_SIZE: usize = Key::ENCODED_SIZE + 16;
/// The node format version this build writes and reads.
pub const NODE_VERSION: u8 = 1;

const OFF_CSUM: usize = 0x00;
const OFF_VERSION: usize = 0x04;
const OFF_FLAGS: usize = 0x05;
const OFF_LEVEL: usize = 0x06;
const OFF_RESERVED0: usize = 0x07;
const OFF_UUID: usize = 0x08;
const OFF_BYTENR: usize = 0x18;
const OFF_GENERATION: usize = 0x20;
const OFF_OWNER: usize = 0x28;
const OFF_NRITEMS: usize = 0x30;
const OFF_RESERVED: usize = 0x34;

/// Where one leaf item's value sits in its leaf's value buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    key: Key,
    off: u32,
    len: u32,
}

/// A leaf's items, in one of two forms.
///
/// The *packed* form is what clean leaves (read from disk, or just written) keep in the node
/// cache: the leaf's on-disk item headers followed by its packed values, in one buffer and
/// nothing else. It costs one allocation and one copy to make, and memory for exactly the bytes
/// in use (a leaf's free space is not kept), so the cache's byte bound holds as many leaves as
/// possible. Lookups binary-search the headers in place. A leaf the cache declines is packed
/// without any copy: its `data` is then the whole block as read, headers after the node header
/// and the free gap left where it is ([`Node::decode_in_place`]).
///
/// The *editable* form is what a transaction changes: sorted slots with their values in one
/// shared buffer (two allocations, not one per item). Replaced and removed values leave garbage
/// in the buffer until it is compacted. Every change first turns a packed leaf editable; cloning
/// a packed leaf (copy-on-write) gives the editable form directly.
#[derive(Debug, Default)]
pub struct Leaf {
    /// Editable form: the items in key order. Empty in the packed form.
    slots: Vec<Slot>,
    /// Editable form: the values. Packed form: `packed` item headers (25 bytes each, as on disk)
    /// and the values.
    data: Vec<u8>,
    /// Editable form: bytes of `data` no slot refers to.
    garbage: usize,
    /// Packed form: the number of items (0 in the editable form).
    packed: usize,
    /// Packed form: subtracted from a header's value offset (a position in the node) gives the
    /// value's position in `data`.
    shift: usize,
    /// Packed form: where the item headers start in `data` (0 in a packed copy; the header's
    /// size when `data` is the whole block as read, see [`Node::decode_in_place`]).
    hoff: usize,
    /// Packed form: where the values start in `data`.
    vstart: usize,
}

impl Clone for Leaf {
    fn clone(&self) -> Self {
        if self.packed > 0 {
            // A clone is made to be changed (copy-on-write): make it editable in one step.
            self.editable()
        } else {
            Leaf {
                slots: self.slots.clone(),
                data: self.data.clone(),
                garbage: self.garbage,
                packed: 0,
                shift: 0,
                hoff: 0,
                vstart: 0,
            }
        }
    }
}

impl PartialEq for Leaf {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Leaf {}

impl Leaf {
    /// A packed leaf of the `n` items whose headers start at [`HEADER_SIZE`] in the encoded
    /// node `buf`, with values packed from `values_start` to the end. The caller has checked the
    /// layout (decode) or made it (encode).
    fn packed_from(buf: &[u8], n: usize, values_start: usize) -> Leaf {
        let headers = n * ITEM_HEADER_SIZE;
        let mut data = Vec::with_capacity(headers + buf.len() - values_start);
        data.extend_from_slice(&buf[HEADER_SIZE..HEADER_SIZE + headers]);
        data.extend_from_slice(&buf[values_start..]);
        Leaf {
            slots: Vec::new(),
            data,
            garbage: 0,
            packed: n,
            shift: values_start - headers,
            hoff: 0,
            vstart: headers,
        }
    }

    /// The editable form of a packed leaf.
    fn editable(&self) -> Leaf {
        let n = self.packed;
        let values = &self.data[self.vstart..];
        // Room for a few more items: a copied leaf usually takes one or two changes before it is
        // written (a transaction holds every leaf it copies, so slack here costs memory).
        let mut data = Vec::with_capacity(values.len() + values.len() / 8 + 512);
        data.extend_from_slice(values);
        let base = self.shift + self.vstart;
        let slots = (0..n)
            .map(|i| {
                let (key, off, len) = self.header(i);
                Slot {
                    key,
                    off: (off - base) as u32,
                    len: len as u32,
                }
            })
            .collect();
        Leaf {
            slots,
            data,
            garbage: 0,
            packed: 0,
            shift: 0,
            hoff: 0,
            vstart: 0,
        }
    }

    /// Turns a packed leaf editable, before a change.
    fn edit(&mut self) {
        if self.packed > 0 {
            *self = self.editable();
        }
    }

    /// Packed form: item `i`'s key, value position in the node and value length.
    fn header(&self, i: usize) -> (Key, usize, usize) {
        // Packed leaves are made only from checked or self-made layouts: every header lies
        // inside `data` and every value offset is at least `shift`.
        let at = self.hoff + i * ITEM_HEADER_SIZE;
        let h = &self.data[at..at + ITEM_HEADER_SIZE];
        let key = Key::new(get_u64(h, 0), h[8], get_u64(h, 9));
        (key, get_u32(h, 17) as usize, get_u32(h, 21) as usize)
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        if self.packed > 0 {
            self.packed
        } else {
            self.slots.len()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key of item `i`.
    pub fn key(&self, i: usize) -> Key {
        if self.packed > 0 {
            let at = self.hoff + i * ITEM_HEADER_SIZE;
            let h = &self.data[at..at + Key::ENCODED_SIZE];
            Key::new(get_u64(h, 0), h[8], get_u64(h, 9))
        } else {
            self.slots[i].key
        }
    }

    /// The value of item `i`.
    pub fn value(&self, i: usize) -> &[u8] {
        if self.packed > 0 {
            let (_, off, len) = self.header(i);
            let o = off - self.shift;
            &self.data[o..o + len]
        } else {
            let s = &self.slots[i];
            &self.data[s.off as usize..s.off as usize + s.len as usize]
        }
    }

    fn value_len(&self, i: usize) -> usize {
        if self.packed > 0 {
            let at = self.hoff + i * ITEM_HEADER_SIZE + 21;
            get_u32(&self.data, at) as usize
        } else {
            self.slots[i].len as usize
        }
    }

    /// Items in key order.
    pub fn iter(&self) -> impl Iterator<Item = (Key, &[u8])> + '_ {
        (0..self.len()).map(|i| (self.key(i), self.value(i)))
    }

    /// Binary search by key.
    pub fn search(&self, key: &Key) -> std::result::Result<usize, usize> {
        if self.packed == 0 {
            return self.slots.binary_search_by(|s| s.key.cmp(key));
        }
        let (mut lo, mut hi) = (0, self.packed);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.key(mid).cmp(key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(mid),
            }
        }
        Err(lo)
    }

    /// The index of the first item whose key fails `pred` (keys must be partitioned by it).
    pub fn partition_point(&self, pred: impl Fn(&Key) -> bool) -> usize {
        if self.packed == 0 {
            return self.slots.partition_point(|s| pred(&s.key));
        }
        let (mut lo, mut hi) = (0, self.packed);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if pred(&self.key(mid)) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Body bytes of item `i` in an encoded node.
    pub fn item_bytes(&self, i: usize) -> usize {
        ITEM_HEADER_SIZE + self.value_len(i)
    }

    /// Heap bytes this leaf holds.
    fn heap_bytes(&self) -> usize {
        self.data.capacity() + self.slots.capacity() * std::mem::size_of::<Slot>()
    }

    fn store(&mut self, value: &[u8]) -> u32 {
        let off = self.data.len() as u32;
        self.data.extend_from_slice(value);
        off
    }

    /// Appends an item; its key must be above every key held.
    pub fn push(&mut self, key: Key, value: &[u8]) {
        self.edit();
        let off = self.store(value);
        self.slots.push(Slot {
            key,
            off,
            len: value.len() as u32,
        });
    }

    /// Inserts or replaces; returns the replaced value's length.
    fn insert(&mut self, key: Key, value: &[u8]) -> Option<usize> {
        self.edit();
        match self.search(&key) {
            Ok(at) => {
                let old = self.slots[at];
                if old.len as usize == value.len() {
                    let o = old.off as usize;
                    self.data[o..o + value.len()].copy_from_slice(value);
                } else {
                    self.garbage += old.len as usize;
                    let off = self.store(value);
                    self.slots[at].off = off;
                    self.slots[at].len = value.len() as u32;
                    self.maybe_compact();
                }
                Some(old.len as usize)
            }
            Err(at) => {
                let off = self.store(value);
                self.slots.insert(
                    at,
                    Slot {
                        key,
                        off,
                        len: value.len() as u32,
                    },
                );
                None
            }
        }
    }

    /// Removes item `at`, returning its value's length.
    fn remove_at(&mut self, at: usize) -> usize {
        self.edit();
        let s = self.slots.remove(at);
        self.garbage += s.len as usize;
        self.maybe_compact();
        s.len as usize
    }

    fn maybe_compact(&mut self) {
        // Keep the buffer within about twice its live bytes, so memory stays bounded.
        if self.garbage > 4096 && self.garbage > self.data.len() / 2 {
            *self = self.rebuilt(0..self.len());
        }
    }

    fn rebuilt(&self, range: std::ops::Range<usize>) -> Leaf {
        let live: usize = range.clone().map(|i| self.value_len(i)).sum();
        let mut out = Leaf {
            slots: Vec::with_capacity(range.len()),
            data: Vec::with_capacity(live),
            garbage: 0,
            packed: 0,
            shift: 0,
            hoff: 0,
            vstart: 0,
        };
        for i in range {
            out.push(self.key(i), self.value(i));
        }
        out
    }

    /// Splits off items `at..` into a new leaf.
    pub fn split_off(&mut self, at: usize) -> Leaf {
        let right = self.rebuilt(at..self.len());
        *self = self.rebuilt(0..at);
        right
    }

    /// Appends every item of `other`, whose keys are all above this leaf's.
    pub fn append(&mut self, other: &Leaf) {
        self.edit();
        for (k, v) in other.iter() {
            self.push(k, v);
        }
    }
}

/// One pointer of an internal node. `key` is the first key of the child's subtree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildPtr {
    pub key: Key,
    pub bytenr: u64,
    pub generation: u64,
}

/// What a node holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeBody {
    Leaf(Leaf),
    Internal(Vec<ChildPtr>),
}

/// A decoded node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub bytenr: u64,
    pub generation: u64,
    pub owner: u64,
    pub level: u8,
    pub body: NodeBody,
    /// Bytes the body takes after the header (item headers and values, or pointers).
    used: usize,
}

/// What the reader of a node expects, from the pointer it followed.
#[derive(Debug, Clone, Copy)]
pub struct Expect {
    pub fs_uuid: [u8; 16],
    pub bytenr: u64,
    /// The generation the parent pointer (or root item) recorded.
    pub generation: u64,
    pub level: u8,
}

/// The largest value an item may hold in a tree of `node_size` nodes: a quarter of a node's
/// body, so that splitting an overfull leaf in two always gives two leaves that fit.
pub fn max_value_size(node_size: usize) -> usize {
    (node_size - HEADER_SIZE) / 4 - ITEM_HEADER_SIZE
}

/// Pointers an internal node holds.
pub fn max_ptrs(node_size: usize) -> usize {
    (node_size - HEADER_SIZE) / PTR_SIZE
}

impl Node {
    /// An empty leaf.
    pub fn new_leaf(bytenr: u64, generation: u64, owner: u64) -> Node {
        Node {
            bytenr,
            generation,
            owner,
            level: 0,
            body: NodeBody::Leaf(Leaf::default()),
            used: 0,
        }
    }

    /// An internal node at `level` (>= 1) holding `ptrs`.
    pub fn new_internal(
        bytenr: u64,
        generation: u64,
        owner: u64,
        level: u8,
        ptrs: Vec<ChildPtr>,
    ) -> Node {
        let used = ptrs.len() * PTR_SIZE;
        Node {
            bytenr,
            generation,
            owner,
            level,
            body: NodeBody::Internal(ptrs),
            used,
        }
    }

    /// Body bytes in use.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Number of items or pointers.
    pub fn len(&self) -> usize {
        match &self.body {
            NodeBody::Leaf(items) => items.len(),
            NodeBody::Internal(ptrs) => ptrs.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first key, if any.
    pub fn first_key(&self) -> Option<Key> {
        match &self.body {
            NodeBody::Leaf(leaf) => (!leaf.is_empty()).then(|| leaf.key(0)),
            NodeBody::Internal(ptrs) => ptrs.first().map(|p| p.key),
        }
    }

    /// The leaf's items (`None` for an internal node).
    pub fn leaf(&self) -> Option<&Leaf> {
        match &self.body {
            NodeBody::Leaf(leaf) => Some(leaf),
            NodeBody::Internal(_) => None,
        }
    }

    /// Internal pointers (empty for a leaf).
    pub fn ptrs(&self) -> &[ChildPtr] {
        match &self.body {
            NodeBody::Leaf(_) => &[],
            NodeBody::Internal(ptrs) => ptrs,
        }
    }

    /// Recomputes the byte count after the body was replaced wholesale.
    pub fn recount(&mut self) {
        self.used = match &self.body {
            NodeBody::Leaf(leaf) => (0..leaf.len()).map(|i| leaf.item_bytes(i)).sum(),
            NodeBody::Internal(ptrs) => ptrs.len() * PTR_SIZE,
        };
    }

    /// Inserts or replaces the item with `key` in a leaf; returns whether it replaced one.
    pub fn leaf_insert(&mut self, key: Key, value: &[u8]) -> bool {
        let NodeBody::Leaf(leaf) = &mut self.body else {
            return false;
        };
        match leaf.insert(key, value) {
            Some(old) => {
                self.used = self.used - old + value.len();
                true
            }
            None => {
                self.used += ITEM_HEADER_SIZE + value.len();
                false
            }
        }
    }

    /// Removes the item with `key` from a leaf; returns whether it was there.
    pub fn leaf_remove(&mut self, key: &Key) -> bool {
        let NodeBody::Leaf(leaf) = &mut self.body else {
            return false;
        };
        let Ok(at) = leaf.search(key) else {
            return false;
        };
        self.used -= ITEM_HEADER_SIZE + leaf.remove_at(at);
        true
    }

    /// The value of `key` in a leaf.
    pub fn leaf_get(&self, key: &Key) -> Option<&[u8]> {
        let leaf = self.leaf()?;
        leaf.search(key).ok().map(|at| leaf.value(at))
    }

    /// In an internal node, the index of the child whose subtree may hold `key`: the last
    /// pointer whose key is <= `key`, or the first.
    pub fn child_index(&self, key: &Key) -> usize {
        let ptrs = self.ptrs();
        match ptrs.binary_search_by(|p| p.key.cmp(key)) {
            Ok(at) => at,
            Err(0) => 0,
            Err(at) => at - 1,
        }
    }

    /// Encodes the node into `buf` (exactly the node size), checksum included.
    pub fn encode_into(&self, fs_uuid: &[u8; 16], buf: &mut [u8]) -> Result<()> {
        let node_size = buf.len();
        let bad = |reason: String| Error::BadNode {
            bytenr: self.bytenr,
            reason,
        };
        if node_size < HEADER_SIZE || HEADER_SIZE + self.used > node_size {
            return Err(bad(format!(
                "body of {} bytes does not fit a {node_size}-byte node",
                self.used
            )));
        }
        // Zero only what the fields below leave alone (the header's reserved bytes and the free
        // gap): a node is written whole, every byte of it defined.
        buf[..HEADER_SIZE].fill(0);
        buf[OFF_VERSION] = NODE_VERSION;
        buf[OFF_LEVEL] = self.level;
        buf[OFF_UUID..OFF_UUID + 16].copy_from_slice(fs_uuid);
        put_u64(buf, OFF_BYTENR, self.bytenr);
        put_u64(buf, OFF_GENERATION, self.generation);
        put_u64(buf, OFF_OWNER, self.owner);
        put_u32(buf, OFF_NRITEMS, self.len() as u32);
        match &self.body {
            NodeBody::Leaf(leaf) => {
                let mut data_end = node_size;
                for (i, (key, value)) in leaf.iter().enumerate() {
                    let at = HEADER_SIZE + i * ITEM_HEADER_SIZE;
                    let start = data_end - value.len();
                    buf[at..at + Key::ENCODED_SIZE].copy_from_slice(&key.encode());
                    put_u32(buf, at + 17, start as u32);
                    put_u32(buf, at + 21, value.len() as u32);
                    buf[start..data_end].copy_from_slice(value);
                    data_end = start;
                }
                buf[HEADER_SIZE + leaf.len() * ITEM_HEADER_SIZE..data_end].fill(0);
            }
            NodeBody::Internal(ptrs) => {
                for (i, p) in ptrs.iter().enumerate() {
                    let at = HEADER_SIZE + i * PTR_SIZE;
                    buf[at..at + Key::ENCODED_SIZE].copy_from_slice(&p.key.encode());
                    put_u64(buf, at + 17, p.bytenr);
                    put_u64(buf, at + 25, p.generation);
                }
                buf[HEADER_SIZE + ptrs.len() * PTR_SIZE..].fill(0);
            }
        }
        let csum = checksum(&buf[CSUM_SIZE..]);
        put_u32(buf, OFF_CSUM, csum);
        Ok(())
    }

    /// The form to keep in the node cache once this node is written as `buf` (its encoding by
    /// [`Node::encode_into`]): a leaf is packed from the encoding, so the cache holds only the
    /// bytes in use and no editing slack.
    pub fn cached_form(&self, buf: &[u8]) -> Node {
        let body = match &self.body {
            NodeBody::Leaf(leaf) => {
                let n = leaf.len();
                let values_start = buf.len() - (self.used - n * ITEM_HEADER_SIZE);
                NodeBody::Leaf(Leaf::packed_from(buf, n, values_start))
            }
            NodeBody::Internal(ptrs) => NodeBody::Internal(ptrs.clone()),
        };
        Node {
            bytenr: self.bytenr,
            generation: self.generation,
            owner: self.owner,
            level: self.level,
            body,
            used: self.used,
        }
    }

    /// Heap and inline bytes this decoded node takes, for the cache's bound.
    pub fn mem_bytes(&self) -> usize {
        std::mem::size_of::<Node>()
            + match &self.body {
                NodeBody::Leaf(leaf) => leaf.heap_bytes(),
                NodeBody::Internal(ptrs) => ptrs.capacity() * std::mem::size_of::<ChildPtr>(),
            }
    }

    /// Encodes into a new buffer of `node_size` bytes.
    pub fn encode(&self, fs_uuid: &[u8; 16], node_size: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; node_size];
        self.encode_into(fs_uuid, &mut buf)?;
        Ok(buf)
    }

    /// Decodes and checks a node read from `expect.bytenr`: checksum, version, uuid, address,
    /// generation, level, then every item (sorted keys, canonical packing of values, pointer
    /// fields). Never panics on any input. A leaf comes out packed (see [`Leaf`]): one copy of
    /// the bytes in use, so the read buffer can be reused.
    pub fn decode(buf: &[u8], expect: &Expect) -> Result<Node> {
        let (mut node, packing) = Node::check(buf, expect)?;
        if let (Some((n, values_start)), NodeBody::Leaf(leaf)) = (packing, &mut node.body) {
            *leaf = Leaf::packed_from(buf, n, values_start);
        }
        Ok(node)
    }

    /// [`Node::decode`] of a leaf that keeps `buf`, the whole block as read, as its storage: no
    /// copy, for a leaf used once and not kept (the node cache declined it). `buf` comes back
    /// through [`Node::into_read_buffer`]. Anything but a leaf is decoded as usual.
    pub fn decode_in_place(buf: Vec<u8>, expect: &Expect) -> Result<Node> {
        let (mut node, packing) = Node::check(&buf, expect)?;
        match (packing, &mut node.body) {
            (Some((n, values_start)), NodeBody::Leaf(leaf)) => {
                *leaf = Leaf {
                    slots: Vec::new(),
                    data: buf,
                    garbage: 0,
                    packed: n,
                    shift: 0,
                    hoff: HEADER_SIZE,
                    vstart: values_start,
                };
                Ok(node)
            }
            _ => Node::decode(&buf, expect),
        }
    }

    /// The block buffer of a leaf made by [`Node::decode_in_place`], to read the next block into.
    pub fn into_read_buffer(self) -> Option<Vec<u8>> {
        match self.body {
            NodeBody::Leaf(leaf) if leaf.packed > 0 && leaf.hoff == HEADER_SIZE => Some(leaf.data),
            _ => None,
        }
    }

    /// The checks of [`Node::decode`]. A leaf comes back empty, with its item count and where
    /// its values start, for the caller to fill in.
    fn check(buf: &[u8], expect: &Expect) -> Result<(Node, Option<(usize, usize)>)> {
        let bad = |reason: String| Error::BadNode {
            bytenr: expect.bytenr,
            reason,
        };
        let node_size = buf.len();
        if !(4096..=65536).contains(&node_size) || !node_size.is_power_of_two() {
            return Err(bad(format!("node size {node_size}")));
        }
        let stored = get_u32(buf, OFF_CSUM);
        let computed = checksum(&buf[CSUM_SIZE..]);
        if stored != computed {
            return Err(bad(format!(
                "checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
            )));
        }
        if buf[OFF_VERSION] != NODE_VERSION {
            return Err(bad(format!("node version {}", buf[OFF_VERSION])));
        }
        if buf[OFF_FLAGS] != 0
            || buf[OFF_RESERVED0] != 0
            || buf[OFF_RESERVED..HEADER_SIZE].iter().any(|&b| b != 0)
        {
            return Err(bad("unknown flags or non-zero reserved bytes".into()));
        }
        if buf[OFF_UUID..OFF_UUID + 16] != expect.fs_uuid {
            return Err(bad("belongs to another filesystem".into()));
        }
        let bytenr = get_u64(buf, OFF_BYTENR);
        if bytenr != expect.bytenr {
            return Err(bad(format!("records address {bytenr}: misdirected")));
        }
        let generation = get_u64(buf, OFF_GENERATION);
        if generation != expect.generation {
            return Err(bad(format!(
                "generation {generation}, the pointer expects {}",
                expect.generation
            )));
        }
        let level = buf[OFF_LEVEL];
        if level != expect.level || level >= MAX_TREE_LEVEL {
            return Err(bad(format!(
                "level {level}, the pointer expects {}",
                expect.level
            )));
        }
        let owner = get_u64(buf, OFF_OWNER);
        let nritems = get_u32(buf, OFF_NRITEMS) as usize;
        let mut packing = None;
        let (body, used) = if level == 0 {
            if nritems > (node_size - HEADER_SIZE) / ITEM_HEADER_SIZE {
                return Err(bad(format!("{nritems} items cannot fit")));
            }
            let headers_end = HEADER_SIZE + nritems * ITEM_HEADER_SIZE;
            let mut prev: Option<Key> = None;
            let mut data_end = node_size;
            for i in 0..nritems {
                let at = HEADER_SIZE + i * ITEM_HEADER_SIZE;
                let key = Key::decode(&buf[at..]).ok_or_else(|| bad("short item".into()))?;
                let start = get_u32(buf, at + 17) as usize;
                let size = get_u32(buf, at + 21) as usize;
                // Values are packed back to back from the end, item 0 last: anything else is
                // refused, so no two values overlap and none overlaps the headers.
                if start.checked_add(size) != Some(data_end) || start < headers_end {
                    return Err(bad(format!(
                        "item {i}: value at {start} size {size} is not packed (expected end {data_end})"
                    )));
                }
                if let Some(p) = prev
                    && p >= key
                {
                    return Err(bad(format!("item {i}: key {key:?} not above {p:?}")));
                }
                prev = Some(key);
                data_end = start;
            }
            // Headers and values: everything but the free gap.
            let used = nritems * ITEM_HEADER_SIZE + (node_size - data_end);
            packing = Some((nritems, data_end));
            (NodeBody::Leaf(Leaf::default()), used)
        } else {
            if nritems == 0 || nritems > max_ptrs(node_size) {
                return Err(bad(format!("internal node with {nritems} pointers")));
            }
            let mut ptrs: Vec<ChildPtr> = Vec::with_capacity(nritems);
            for i in 0..nritems {
                let at = HEADER_SIZE + i * PTR_SIZE;
                let key = Key::decode(&buf[at..]).ok_or_else(|| bad("short pointer".into()))?;
                let p = ChildPtr {
                    key,
                    bytenr: get_u64(buf, at + 17),
                    generation: get_u64(buf, at + 25),
                };
                if p.bytenr == 0 || !p.bytenr.is_multiple_of(4096) {
                    return Err(bad(format!("pointer {i}: child address {}", p.bytenr)));
                }
                if p.generation > generation {
                    return Err(bad(format!(
                        "pointer {i}: child generation {} is newer than the node",
                        p.generation
                    )));
                }
                if let Some(prev) = ptrs.last()
                    && prev.key >= key
                {
                    return Err(bad(format!(
                        "pointer {i}: key {key:?} not above {:?}",
                        prev.key
                    )));
                }
                ptrs.push(p);
            }
            let used = ptrs.len() * PTR_SIZE;
            (NodeBody::Internal(ptrs), used)
        };
        let node = Node {
            bytenr,
            generation,
            owner,
            level,
            body,
            used,
        };
        Ok((node, packing))
    }
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Callers bound `at + 4 <= b.len()` (header fields, or item headers inside `headers_end`).
fn get_u32(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const UUID: [u8; 16] = [9; 16];

    fn expect(n: &Node) -> Expect {
        Expect {
            fs_uuid: UUID,
            bytenr: n.bytenr,
            generation: n.generation,
            level: n.level,
        }
    }

    fn arb_leaf(node_size: usize) -> impl Strategy<Value = Node> {
        let maxv = max_value_size(node_size);
        proptest::collection::btree_map(
            (any::<u64>(), any::<u8>(), any::<u64>()),
            proptest::collection::vec(any::<u8>(), 0..maxv.min(300)),
            0..40,
        )
        .prop_map(move |m| {
            let mut n = Node::new_leaf(4096 * 7, 5, 256);
            for ((a, t, o), v) in m {
                if n.used() + ITEM_HEADER_SIZE + v.len() <= node_size - HEADER_SIZE {
                    n.leaf_insert(Key::new(a, t, o), &v);
                }
            }
            n
        })
    }

    fn arb_internal(node_size: usize) -> impl Strategy<Value = Node> {
        proptest::collection::btree_map(
            (any::<u64>(), any::<u8>(), any::<u64>()),
            (1u64..1 << 40, 0u64..=9),
            1..max_ptrs(node_size),
        )
        .prop_map(|m| {
            let ptrs = m
                .into_iter()
                .map(|((a, t, o), (b, g))| ChildPtr {
                    key: Key::new(a, t, o),
                    bytenr: b * 4096,
                    generation: g,
                })
                .collect();
            Node::new_internal(4096 * 9, 9, 2, 3, ptrs)
        })
    }

    proptest! {
        #[test]
        fn leaf_round_trips(n in arb_leaf(4096)) {
            let buf = n.encode(&UUID, 4096).unwrap();
            prop_assert_eq!(&Node::decode(&buf, &expect(&n)).unwrap(), &n);
            // The same leaf used in place of its block, then edited through a clone.
            let raw = Node::decode_in_place(buf.clone(), &expect(&n)).unwrap();
            prop_assert_eq!(&raw, &n);
            prop_assert_eq!(raw.used(), n.used());
            let mut edited = raw.clone();
            let mut want = n.clone();
            if n.used() + ITEM_HEADER_SIZE + 3 <= 4096 - HEADER_SIZE {
                edited.leaf_insert(Key::new(1, 2, 3), b"new");
                want.leaf_insert(Key::new(1, 2, 3), b"new");
            }
            prop_assert_eq!(&edited, &want);
            prop_assert_eq!(edited.encode(&UUID, 4096).unwrap(), want.encode(&UUID, 4096).unwrap());
            // (An empty leaf holds no buffer worth keeping.)
            let back = raw.into_read_buffer();
            prop_assert!(back.is_none() == n.is_empty() && back.is_none_or(|b| b == buf));
        }

        #[test]
        fn internal_round_trips(n in arb_internal(4096)) {
            let buf = n.encode(&UUID, 4096).unwrap();
            prop_assert_eq!(Node::decode(&buf, &expect(&n)).unwrap(), n);
        }

        #[test]
        fn random_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 4096), lvl in 0u8..3) {
            let e = Expect { fs_uuid: UUID, bytenr: 4096, generation: 1, level: lvl };
            prop_assert!(Node::decode(&b, &e).is_err());
        }

        #[test]
        fn random_bodies_behind_a_valid_header_never_panic(
            mut b in proptest::collection::vec(any::<u8>(), 4096),
            nritems in 0u32..200,
            level in 0u8..2,
        ) {
            // Forge a correct header and checksum so decoding reaches the body checks.
            b[..HEADER_SIZE].fill(0);
            b[OFF_VERSION] = NODE_VERSION;
            b[OFF_LEVEL] = level;
            b[OFF_UUID..OFF_UUID + 16].copy_from_slice(&UUID);
            put_u64(&mut b, OFF_BYTENR, 4096);
            put_u64(&mut b, OFF_GENERATION, 1);
            put_u32(&mut b, OFF_NRITEMS, nritems);
            let c = checksum(&b[CSUM_SIZE..]);
            put_u32(&mut b, OFF_CSUM, c);
            let e = Expect { fs_uuid: UUID, bytenr: 4096, generation: 1, level };
            if let Ok(n) = Node::decode(&b, &e) {
                // Whatever decodes re-encodes to a node that decodes to itself.
                let again = n.encode(&UUID, 4096).unwrap();
                prop_assert_eq!(Node::decode(&again, &e).unwrap(), n);
            }
        }
    }

    #[test]
    fn header_checks_refuse_wrong_blocks() {
        let mut n = Node::new_leaf(8192, 4, 256);
        n.leaf_insert(Key::new(1, 1, 1), b"one");
        let good = n.encode(&UUID, 4096).unwrap();
        let e = expect(&n);
        assert!(Node::decode(&good, &e).is_ok());
        let msg = |e: &Expect| Node::decode(&good, e).unwrap_err().to_string();
        assert!(msg(&Expect { bytenr: 4096, ..e }).contains("misdirected"));
        assert!(msg(&Expect { generation: 5, ..e }).contains("generation"));
        assert!(msg(&Expect { level: 1, ..e }).contains("level"));
        assert!(
            msg(&Expect {
                fs_uuid: [1; 16],
                ..e
            })
            .contains("another filesystem")
        );
        for bit in (0..4096 * 8).step_by(61) {
            let mut b = good.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(Node::decode(&b, &e).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn unsorted_or_overlapping_items_are_refused() {
        let mut n = Node::new_leaf(8192, 4, 256);
        n.leaf_insert(Key::new(1, 1, 1), b"aa");
        n.leaf_insert(Key::new(2, 1, 1), b"bb");
        let e = expect(&n);
        let mut b = n.encode(&UUID, 4096).unwrap();
        // Swap the two keys: now out of order.
        let k0 = HEADER_SIZE;
        let k1 = HEADER_SIZE + ITEM_HEADER_SIZE;
        let tmp: Vec<u8> = b[k0..k0 + 17].to_vec();
        b.copy_within(k1..k1 + 17, k0);
        b[k1..k1 + 17].copy_from_slice(&tmp);
        let c = checksum(&b[CSUM_SIZE..]);
        put_u32(&mut b, OFF_CSUM, c);
        assert!(
            Node::decode(&b, &e)
                .unwrap_err()
                .to_string()
                .contains("not above")
        );
        // A value pointing into the headers.
        let mut b = n.encode(&UUID, 4096).unwrap();
        put_u32(&mut b, HEADER_SIZE + 17, 10);
        let c = checksum(&b[CSUM_SIZE..]);
        put_u32(&mut b, OFF_CSUM, c);
        assert!(
            Node::decode(&b, &e)
                .unwrap_err()
                .to_string()
                .contains("not packed")
        );
    }

    proptest! {
        #[test]
        fn edited_leaves_encode_what_they_hold(
            ops in proptest::collection::vec((0u64..40, 0usize..120, any::<bool>()), 1..400),
        ) {
            let mut n = Node::new_leaf(4096, 3, 256);
            let mut model = std::collections::BTreeMap::new();
            for (k, len, del) in ops {
                let key = Key::new(k, 1, 0);
                if del {
                    prop_assert_eq!(n.leaf_remove(&key), model.remove(&key).is_some());
                } else if n.used() + ITEM_HEADER_SIZE + len <= 4096 - HEADER_SIZE - 200 {
                    let v = vec![len as u8; len];
                    prop_assert_eq!(n.leaf_insert(key, &v), model.insert(key, v).is_some());
                }
            }
            let want: Vec<(Key, &[u8])> = model.iter().map(|(k, v)| (*k, v.as_slice())).collect();
            let got: Vec<(Key, &[u8])> = n.leaf().unwrap().iter().collect();
            prop_assert_eq!(got, want);
            let used = n.used();
            n.recount();
            prop_assert_eq!(n.used(), used);
            let buf = n.encode(&UUID, 4096).unwrap();
            prop_assert_eq!(Node::decode(&buf, &expect(&n)).unwrap(), n);
        }
    }

    #[test]
    fn leaf_edits_keep_the_byte_count() {
        let mut n = Node::new_leaf(4096, 1, 256);
        assert!(!n.leaf_insert(Key::new(5, 0, 0), b"abc"));
        assert!(!n.leaf_insert(Key::new(3, 0, 0), b"z"));
        assert!(n.leaf_insert(Key::new(5, 0, 0), b"longer"));
        assert_eq!(n.used(), 2 * ITEM_HEADER_SIZE + 7);
        assert_eq!(n.leaf_get(&Key::new(5, 0, 0)), Some(&b"longer"[..]));
        assert_eq!(n.first_key(), Some(Key::new(3, 0, 0)));
        assert!(n.leaf_remove(&Key::new(3, 0, 0)));
        assert!(!n.leaf_remove(&Key::new(3, 0, 0)));
        assert_eq!(n.used(), ITEM_HEADER_SIZE + 6);
        let before = n.used();
        n.recount();
        assert_eq!(n.used(), before);
    }
}
