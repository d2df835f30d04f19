//! The store: opening and creating a filesystem, write transactions, read views, commit, and
//! shared tree blocks with lazy reference counts.
//!
//! One writer at a time (a transaction takes the writer state and puts it back when it ends, so
//! it may be owned and outlive a borrow) and any number of readers. A reader holds the committed
//! roots of one generation; blocks it may still read are not reused while it lives. A write
//! transaction copies every node it changes to a new address ([`crate::btree`]) and holds those
//! dirty nodes until commit. Commit writes them, flushes, writes the superblock copies, flushes
//! again: a crash at any point leaves the previous generation intact, and space freed by the
//! transaction becomes allocatable only after that.
//!
//! Sharing follows Rodeh ("B-trees, Shadowing, and Clones", 2008). A snapshot is a new root item
//! pointing at the same root node, whose reference count goes up by one. Counts live in the extent
//! tree (an absent item means one). Copying a shared node gives each of its children one more
//! reference and takes one from the node; dropping a tree takes one from its root and recurses
//! only into blocks whose count reaches zero. Count changes are collected in memory during the
//! transaction (delayed refs) and applied at commit in a loop, so changing the extent tree never
//! recurses into itself; only subvolume trees are ever shared, so the store's own trees never
//! produce count changes.

mod drop;
mod extent;
mod resize;
mod writeback;

pub use drop::{DROP_ITEM_SIZE, DROP_ITEM_VERSION, DropProgress, PendingDeletion};
pub use extent::{DataExtent, DataRefOwner, DataRefs, EXTENT_FLAG_DATA, ItemDataRef, owner_hash};
pub use resize::ResizeReport;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::{Bound, RangeBounds};
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Condvar, Mutex, RwLock};

use crate::alloc::{Allocator, RangeSet, SpaceStats};
use crate::btree::{self, NodeRead, NodeStore, Range};
use crate::cache::NodeCache;
use crate::chunk::{
    CHUNK_ALIGN, ChunkKind, ChunkMap, ChunkMapping, FIRST_LOGICAL, PHYSICAL_START, chunk_size_for,
};
use crate::device::BlockDevice;
use crate::error::{Error, Result};
use crate::key::{Key, item_type, tree_id};
use crate::node::{Expect, Node};
use crate::superblock::{
    DEFAULT_NODE_SIZE, SECTOR_SIZE, SUPERBLOCK_OFFSETS, SUPERBLOCK_SIZE, Superblock, TreeRoot,
    read_superblock, write_superblocks,
};

/// How to make a new filesystem.
#[derive(Debug, Clone)]
pub struct MkfsOptions {
    /// A power of two in 4096..=65536.
    pub node_size: u32,
    /// Share of the device given to metadata chunks, in percent (1..=90).
    pub metadata_percent: u8,
    pub fs_uuid: [u8; 16],
    pub label: String,
    /// Bytes of decoded nodes the cache may hold.
    pub cache_bytes: usize,
}

impl Default for MkfsOptions {
    fn default() -> Self {
        MkfsOptions {
            node_size: DEFAULT_NODE_SIZE,
            metadata_percent: 10,
            fs_uuid: [0x5a; 16],
            label: String::new(),
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

/// The node cache's default bound.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

/// A tree's entry in the root tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RootItem {
    pub root: TreeRoot,
    /// Reserved for the layer above (read-only subvolume and the like).
    pub flags: u64,
}

impl RootItem {
    /// Bytes of an encoded root item.
    pub const ENCODED_SIZE: usize = 32;

    /// bytenr (u64), generation (u64), level (u8), 7 zero bytes, flags (u64); little-endian.
    pub fn encode(&self) -> [u8; Self::ENCODED_SIZE] {
        let mut b = [0u8; Self::ENCODED_SIZE];
        b[0..8].copy_from_slice(&self.root.bytenr.to_le_bytes());
        b[8..16].copy_from_slice(&self.root.generation.to_le_bytes());
        b[16] = self.root.level;
        b[24..32].copy_from_slice(&self.flags.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self> {
        if b.len() != Self::ENCODED_SIZE || b[17..24].iter().any(|&x| x != 0) {
            return Err(Error::Corrupt(format!("root item of {} bytes", b.len())));
        }
        Ok(RootItem {
            root: TreeRoot {
                bytenr: le64(&b[0..8]),
                generation: le64(&b[8..16]),
                level: b[16],
            },
            flags: le64(&b[24..32]),
        })
    }
}

pub(crate) fn le64(b: &[u8]) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[..8]);
    u64::from_le_bytes(v)
}

fn shareable(tree: u64) -> bool {
    tree >= tree_id::FIRST_SUBVOL_TREE
}

/// What readers see: the roots of one committed generation.
#[derive(Debug)]
struct Committed {
    generation: u64,
    root_tree: TreeRoot,
    chunk_tree: TreeRoot,
    roots: BTreeMap<u64, RootItem>,
}

struct Writer {
    sb: Superblock,
    alloc: Allocator,
    /// Set when a commit failed part way: the in-memory state may disagree with the device.
    broken: Option<String>,
}

struct Shared {
    dev: Arc<dyn BlockDevice>,
    chunks: ChunkMap,
    fs_uuid: [u8; 16],
    node_size: usize,
    cache: NodeCache,
    committed: RwLock<Arc<Committed>>,
    /// The writer state; `None` while a write transaction has it.
    writer: Mutex<Option<Writer>>,
    /// Signalled when a write transaction puts the writer state back.
    writer_free: Condvar,
    /// generation -> number of live readers of it
    readers: Mutex<BTreeMap<u64, usize>>,
    /// The layer above's parser of data-referencing items.
    data_refs: RwLock<Option<Arc<dyn DataRefs>>>,
}

/// Reads nodes through a chunk map, optionally through the cache.
struct DevReader<'a> {
    dev: &'a dyn BlockDevice,
    chunks: &'a ChunkMap,
    fs_uuid: [u8; 16],
    node_size: usize,
    cache: Option<&'a NodeCache>,
}

impl NodeRead for DevReader<'_> {
    fn node_size(&self) -> usize {
        self.node_size
    }

    fn read(&self, bytenr: u64, generation: u64, level: u8) -> Result<Arc<Node>> {
        if let Some(n) = self.cache.and_then(|c| c.get(bytenr, generation, level)) {
            return Ok(n);
        }
        let physical = self.chunks.to_physical(bytenr, self.node_size as u64)?;
        let expect = Expect {
            fs_uuid: self.fs_uuid,
            bytenr,
            generation,
            level,
        };
        let mut buf = crate::cache::take_read_buffer(self.node_size);
        self.dev.read_at(&mut buf, physical)?;
        let keep = self.cache.is_some_and(|c| c.admits(level));
        if keep || level > 0 {
            let n = Node::decode(&buf, &expect);
            crate::cache::give_back_read_buffer(buf);
            let n = Arc::new(n?);
            if let (true, Some(c)) = (keep, self.cache) {
                c.insert(n.clone());
            }
            return Ok(n);
        }
        // A leaf the cache declines is used in place of the read buffer, and handed back.
        Ok(Arc::new(Node::decode_in_place(buf, &expect)?))
    }
}

impl Shared {
    fn reader(&self) -> DevReader<'_> {
        DevReader {
            dev: &*self.dev,
            chunks: &self.chunks,
            fs_uuid: self.fs_uuid,
            node_size: self.node_size,
            cache: Some(&self.cache),
        }
    }

    /// Takes the writer state out of the store, waiting while a write transaction holds it.
    fn take_writer(self: &Arc<Self>) -> WriterGuard {
        let mut slot = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(w) = slot.take() {
                return WriterGuard {
                    shared: self.clone(),
                    w: Some(w),
                };
            }
            slot = self
                .writer_free
                .wait(slot)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    fn data_io(&self) -> Result<crate::data_io::DataIo<'_>> {
        crate::data_io::DataIo::new(&*self.dev, &self.chunks, SECTOR_SIZE)
    }

    fn committed(&self) -> Arc<Committed> {
        self.committed
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Generations live readers look at.
    fn live_readers(&self) -> Vec<u64> {
        let readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        readers.keys().copied().collect()
    }
}

/// Space figures per kind of chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub generation: u64,
    pub system: SpaceStats,
    pub metadata: SpaceStats,
    pub data: SpaceStats,
    /// Metadata bytes kept back for deletes and commits.
    pub metadata_reserve: u64,
}

/// What the consistency checker found (it returns an error on the first inconsistency).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub generation: u64,
    pub trees: usize,
    /// Distinct tree blocks reachable.
    pub nodes: u64,
    /// Blocks referenced from more than one place.
    pub shared_nodes: u64,
    /// Items over all trees, shared items counted once per tree.
    pub items: u64,
    pub data_extents: u64,
    pub free_bytes: u64,
}

/// An open filesystem's storage.
pub struct Store {
    shared: Arc<Shared>,
}

impl Store {
    /// Makes a new filesystem on `dev` and opens it.
    pub fn create(dev: Arc<dyn BlockDevice>, opts: MkfsOptions) -> Result<Store> {
        let ns = opts.node_size;
        if !ns.is_power_of_two() || !(4096..=65536).contains(&ns) {
            return Err(Error::InvalidRequest(format!("node size {ns}")));
        }
        if !(1..=90).contains(&opts.metadata_percent) {
            return Err(Error::InvalidRequest(format!(
                "metadata share {}%",
                opts.metadata_percent
            )));
        }
        let layout = chunk_layout(dev.size(), opts.metadata_percent)?;
        let mut chunks = ChunkMap::new();
        let mut spaces = Vec::new();
        for m in &layout {
            chunks.insert(*m)?;
            let mut free = RangeSet::new();
            free.insert(m.logical, m.length)?;
            spaces.push((*m, free));
        }
        let mut sb = Superblock::new(opts.fs_uuid, dev.size());
        sb.node_size = ns;
        sb.label = opts.label.clone();
        sb.system_chunks = layout
            .iter()
            .filter(|m| m.kind == ChunkKind::System)
            .copied()
            .collect();
        let mut alloc = Allocator::new(spaces, u64::from(ns), u64::from(sb.sector_size))?;
        alloc.forget_on_disk();
        let store = Store::assemble(
            dev,
            chunks,
            sb,
            alloc,
            TreeRoot::default(),
            BTreeMap::new(),
            opts.cache_bytes,
        )?;
        let mut txn = store.begin()?;
        for m in &layout {
            let key = Key::new(m.logical, item_type::CHUNK_ITEM, m.length);
            txn.insert(tree_id::CHUNK_TREE, key, &m.encode())?;
        }
        for id in [
            tree_id::EXTENT_TREE,
            tree_id::FREE_SPACE_TREE,
            tree_id::CSUM_TREE,
        ] {
            txn.create_tree(id)?;
        }
        txn.commit()?;
        Ok(store)
    }

    /// Opens the filesystem on `dev`.
    pub fn open(dev: Arc<dyn BlockDevice>) -> Result<Store> {
        Store::open_with_cache(dev, DEFAULT_CACHE_BYTES)
    }

    /// Opens with a node cache of `cache_bytes`.
    pub fn open_with_cache(dev: Arc<dyn BlockDevice>, cache_bytes: usize) -> Result<Store> {
        let sb = read_superblock(&*dev)?;
        sb.check_writable()?;
        let boot = sb.bootstrap_chunk_map()?;
        let node_size = sb.node_size as usize;
        let reader = |chunks| DevReader {
            dev: &*dev,
            chunks,
            fs_uuid: sb.fs_uuid,
            node_size,
            cache: None,
        };
        // The chunk tree, read through the bootstrap mappings, gives the whole map.
        let mut chunks = ChunkMap::new();
        let boot_reader = reader(&boot);
        for item in btree::range(
            &boot_reader,
            &sb.chunk_tree,
            Bound::Unbounded,
            Bound::Unbounded,
        )? {
            let (key, value) = item?;
            if key.item_type != item_type::CHUNK_ITEM {
                return Err(Error::Corrupt(format!("chunk tree holds item {key:?}")));
            }
            let m = ChunkMapping::decode(&value)?;
            if m.logical != key.objectid || m.length != key.offset {
                return Err(Error::Corrupt(format!(
                    "chunk item {key:?} disagrees with its key"
                )));
            }
            chunks.insert(m)?;
        }
        for m in &sb.system_chunks {
            if chunks.lookup(m.logical) != Some(m) {
                return Err(Error::Corrupt(format!(
                    "system chunk {} missing from the chunk tree",
                    m.logical
                )));
            }
        }
        let r = reader(&chunks);
        let mut roots = BTreeMap::new();
        for item in btree::range(&r, &sb.root_tree, Bound::Unbounded, Bound::Unbounded)? {
            let (key, value) = item?;
            if drop::is_drop_key(&key) {
                // A tree being dropped in the background: checked now, resumed by later
                // transactions.
                drop::DropItem::decode(&key, &value)?;
                continue;
            }
            if key.item_type != item_type::ROOT_ITEM || key.offset != 0 {
                return Err(Error::Corrupt(format!("root tree holds item {key:?}")));
            }
            roots.insert(key.objectid, RootItem::decode(&value)?);
        }
        let fst = roots
            .get(&tree_id::FREE_SPACE_TREE)
            .ok_or(Error::Corrupt("no free-space tree".into()))?
            .root;
        let mut free: BTreeMap<u64, RangeSet> = chunks
            .iter()
            .map(|m| (m.logical, RangeSet::new()))
            .collect();
        for item in btree::range(&r, &fst, Bound::Unbounded, Bound::Unbounded)? {
            let (key, _) = item?;
            let m = chunks
                .lookup(key.objectid)
                .ok_or_else(|| Error::Corrupt(format!("free space {key:?} in no chunk")))?;
            let inside = key
                .objectid
                .checked_add(key.offset)
                .is_some_and(|end| end <= m.logical_end());
            if key.item_type != item_type::FREE_SPACE_EXTENT || key.offset == 0 || !inside {
                return Err(Error::Corrupt(format!(
                    "free-space tree holds item {key:?}"
                )));
            }
            let set = free.entry(m.logical).or_default();
            set.insert(key.objectid, key.offset)?;
        }
        let spaces: Vec<_> = chunks
            .iter()
            .map(|m| (*m, free.remove(&m.logical).unwrap_or_default()))
            .collect();
        let alloc = Allocator::new(spaces, u64::from(sb.node_size), u64::from(sb.sector_size))?;
        let root_tree = sb.root_tree;
        Store::assemble(dev, chunks, sb, alloc, root_tree, roots, cache_bytes)
    }

    fn assemble(
        dev: Arc<dyn BlockDevice>,
        chunks: ChunkMap,
        sb: Superblock,
        alloc: Allocator,
        root_tree: TreeRoot,
        roots: BTreeMap<u64, RootItem>,
        cache_bytes: usize,
    ) -> Result<Store> {
        let node_size = sb.node_size as usize;
        let committed = Committed {
            generation: sb.generation,
            root_tree,
            chunk_tree: sb.chunk_tree,
            roots,
        };
        Ok(Store {
            shared: Arc::new(Shared {
                dev,
                chunks,
                fs_uuid: sb.fs_uuid,
                node_size,
                cache: NodeCache::new(cache_bytes, node_size),
                committed: RwLock::new(Arc::new(committed)),
                writer: Mutex::new(Some(Writer {
                    sb,
                    alloc,
                    broken: None,
                })),
                writer_free: Condvar::new(),
                readers: Mutex::new(BTreeMap::new()),
                data_refs: RwLock::new(None),
            }),
        })
    }

    /// Starts the write transaction (waits for the running one to end).
    pub fn begin(&self) -> Result<WriteTxn<'_>> {
        self.begin_owned()
    }

    /// Starts the write transaction like [`Store::begin`], as a value that owns its share of the
    /// store: the layer above keeps one open across many operations and threads.
    pub fn begin_owned(&self) -> Result<WriteTxn<'static>> {
        let mut w = self.shared.take_writer();
        if let Some(why) = &w.broken {
            return Err(Error::Corrupt(format!(
                "store must be reopened after a failed commit: {why}"
            )));
        }
        let c = self.shared.committed();
        w.alloc
            .release_pinned(c.generation, &self.shared.live_readers())?;
        let alloc = w.alloc.clone();
        Ok(WriteTxn {
            shared: self.shared.clone(),
            _store: std::marker::PhantomData,
            generation: c.generation + 1,
            root_tree: c.root_tree,
            chunk_tree: c.chunk_tree,
            roots: c.roots.clone(),
            written_roots: c.roots.clone(),
            w,
            alloc,
            dirty: HashMap::new(),
            delayed: HashMap::new(),
            use_reserve: false,
            in_op: false,
            poisoned: false,
            data_refs: self
                .shared
                .data_refs
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            new_data: HashSet::new(),
        })
    }

    /// A read view of the last committed generation.
    pub fn read(&self) -> ReadTxn {
        // Register under the readers lock, taken before the roots are read: a commit publishes
        // its roots before it looks at the readers, so it either sees this reader or this reader
        // sees its roots, and never frees blocks this reader is about to read.
        let mut readers = self
            .shared
            .readers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let state = self.shared.committed();
        *readers.entry(state.generation).or_default() += 1;
        drop(readers);
        ReadTxn {
            shared: self.shared.clone(),
            state,
        }
    }

    /// The last committed generation.
    pub fn generation(&self) -> u64 {
        self.shared.committed().generation
    }

    /// Space figures of the committed state plus what the allocator holds now.
    pub fn stats(&self) -> Stats {
        let w = self.shared.take_writer();
        Stats {
            generation: w.sb.generation,
            system: w.alloc.stats(ChunkKind::System),
            metadata: w.alloc.stats(ChunkKind::Metadata),
            data: w.alloc.stats(ChunkKind::Data),
            metadata_reserve: w.alloc.meta_reserve(),
        }
    }

    /// Checks the committed state end to end; see [`ReadTxn::check`].
    pub fn check(&self) -> Result<CheckReport> {
        self.read().check()
    }

    /// Registers the parser of leaf items that reference data extents, so back-references stay
    /// exact across snapshots (see [`DataRefs`]). Set it before the first transaction.
    pub fn set_data_refs(&self, parser: Arc<dyn DataRefs>) {
        *self
            .shared
            .data_refs
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(parser);
    }

    /// The data path over this store's device and chunk map.
    pub fn data_io(&self) -> Result<crate::data_io::DataIo<'_>> {
        self.shared.data_io()
    }

    /// The logical-to-physical chunk map (fixed while the store is open).
    pub fn chunk_map(&self) -> &ChunkMap {
        &self.shared.chunks
    }

    /// Bytes the node cache holds now.
    pub fn cache_bytes(&self) -> usize {
        self.shared.cache.bytes()
    }
}

/// The chunks of a new filesystem: one system chunk, metadata chunks for `metadata_percent` of
/// the device, data chunks for the rest, skipping every superblock copy.
fn chunk_layout(dev_size: u64, metadata_percent: u8) -> Result<Vec<ChunkMapping>> {
    const MIB: u64 = 1 << 20;
    let usable = dev_size.saturating_sub(PHYSICAL_START);
    let meta_target = (usable / 100 * u64::from(metadata_percent)).max(2 * MIB) / MIB * MIB;
    let mut out = Vec::new();
    let mut physical = PHYSICAL_START;
    let mut logical = FIRST_LOGICAL;
    let mut meta = 0;
    let mut place = |kind: ChunkKind, want: u64| -> Option<ChunkMapping> {
        loop {
            let mut len = want.min(dev_size.saturating_sub(physical) / CHUNK_ALIGN * CHUNK_ALIGN);
            len = len / MIB * MIB;
            if len == 0 {
                return None;
            }
            let hit = SUPERBLOCK_OFFSETS
                .iter()
                .find(|&&sb| physical < sb + SUPERBLOCK_SIZE as u64 && sb < physical + len);
            if let Some(&sb) = hit {
                if physical < sb {
                    len = (sb - physical) / MIB * MIB;
                }
                if len == 0 || physical >= sb {
                    physical = (sb + SUPERBLOCK_SIZE as u64).next_multiple_of(MIB);
                    continue;
                }
            }
            let m = ChunkMapping {
                logical,
                length: len,
                physical,
                kind,
            };
            physical += len;
            logical += len;
            return Some(m);
        }
    };
    out.push(place(ChunkKind::System, MIB).ok_or(Error::NoSpace {
        kind: "system",
        needed: MIB,
    })?);
    let meta_chunk = chunk_size_for(ChunkKind::Metadata, dev_size);
    while meta < meta_target {
        let Some(m) = place(ChunkKind::Metadata, meta_chunk.min(meta_target - meta)) else {
            break;
        };
        meta += m.length;
        out.push(m);
    }
    if meta < 2 * MIB {
        return Err(Error::NoSpace {
            kind: "metadata",
            needed: 2 * MIB,
        });
    }
    let data_chunk = chunk_size_for(ChunkKind::Data, dev_size);
    while let Some(m) = place(ChunkKind::Data, data_chunk) {
        out.push(m);
    }
    Ok(out)
}

/// A pending change of one tree block's reference count.
#[derive(Debug, Clone, Copy)]
struct DelayedRef {
    delta: i64,
    generation: u64,
    level: u8,
}

/// The writer state a write transaction holds; put back into the store when dropped.
struct WriterGuard {
    shared: Arc<Shared>,
    /// `Some` from creation until `drop`.
    w: Option<Writer>,
}

impl Deref for WriterGuard {
    type Target = Writer;
    fn deref(&self) -> &Writer {
        // Invariant: `w` is taken only in `drop`.
        self.w.as_ref().expect("writer state present until drop")
    }
}

impl DerefMut for WriterGuard {
    fn deref_mut(&mut self) -> &mut Writer {
        // Invariant: `w` is taken only in `drop`.
        self.w.as_mut().expect("writer state present until drop")
    }
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        let mut slot = self.shared.writer.lock().unwrap_or_else(|p| p.into_inner());
        *slot = self.w.take();
        drop(slot);
        self.shared.writer_free.notify_one();
    }
}

/// The write transaction. Dropping it without [`WriteTxn::commit`] discards every change. It
/// owns its share of the store (`'a` only ties a [`Store::begin`] transaction to its store).
pub struct WriteTxn<'a> {
    shared: Arc<Shared>,
    _store: std::marker::PhantomData<&'a Store>,
    w: WriterGuard,
    /// The allocator as this transaction changes it; written back at commit.
    alloc: Allocator,
    generation: u64,
    root_tree: TreeRoot,
    chunk_tree: TreeRoot,
    roots: BTreeMap<u64, RootItem>,
    /// What the root tree holds (as changed so far in this transaction).
    written_roots: BTreeMap<u64, RootItem>,
    dirty: HashMap<u64, Arc<Node>>,
    delayed: HashMap<u64, DelayedRef>,
    /// Set for deletes: may use the metadata reserve.
    use_reserve: bool,
    /// Inside one tree operation whose space was checked up front.
    in_op: bool,
    /// A tree operation failed part way; only dropping the transaction is allowed.
    poisoned: bool,
    data_refs: Option<Arc<dyn DataRefs>>,
    /// Data extents allocated by this transaction (freed at once if dropped again).
    new_data: HashSet<u64>,
}

impl NodeRead for WriteTxn<'_> {
    fn node_size(&self) -> usize {
        self.shared.node_size
    }

    fn read(&self, bytenr: u64, generation: u64, level: u8) -> Result<Arc<Node>> {
        if let Some(n) = self.dirty.get(&bytenr) {
            if n.generation != generation || n.level != level {
                return Err(Error::BadNode {
                    bytenr,
                    reason: format!(
                        "dirty node has generation {} level {}, pointer expects {generation} {level}",
                        n.generation, n.level
                    ),
                });
            }
            return Ok(n.clone());
        }
        self.shared.reader().read(bytenr, generation, level)
    }
}

impl NodeStore for WriteTxn<'_> {
    fn generation(&self) -> u64 {
        self.generation
    }

    fn cow(&mut self, bytenr: u64, generation: u64, level: u8, owner: u64) -> Result<u64> {
        let is_dirty = self.dirty.contains_key(&bytenr);
        if is_dirty && (!shareable(owner) || !self.delayed.contains_key(&bytenr)) {
            return Ok(bytenr);
        }
        let count = if shareable(owner) {
            self.refcount(bytenr)?
        } else {
            1
        };
        if is_dirty && count == 1 {
            return Ok(bytenr);
        }
        let old = self.read(bytenr, generation, level)?;
        let nb = self.alloc_block(owner)?;
        let mut copy = (*old).clone();
        copy.bytenr = nb;
        copy.generation = self.generation;
        copy.owner = owner;
        self.dirty.insert(nb, Arc::new(copy));
        if count > 1 {
            // The copy takes a reference on every child; the old node loses this tree's.
            for p in old.ptrs() {
                self.add_delayed(p.bytenr, p.generation, level - 1, 1);
            }
            self.add_delayed(bytenr, generation, level, -1);
            if level == 0 && self.data_refs.is_some() {
                self.data_refs_for_shared_copy(&old, owner)?;
            }
        } else {
            self.free_block(bytenr, generation)?;
            if level == 0 && shareable(owner) && self.data_refs.is_some() {
                self.data_refs_move(&old, owner)?;
            }
        }
        Ok(nb)
    }

    fn node_mut(&mut self, bytenr: u64) -> Result<&mut Node> {
        self.dirty
            .get_mut(&bytenr)
            .map(Arc::make_mut)
            .ok_or_else(|| Error::Corrupt(format!("node {bytenr} changed without a copy")))
    }

    fn alloc(&mut self, owner: u64, level: u8) -> Result<u64> {
        let b = self.alloc_block(owner)?;
        let n = if level == 0 {
            Node::new_leaf(b, self.generation, owner)
        } else {
            Node::new_internal(b, self.generation, owner, level, Vec::new())
        };
        self.dirty.insert(b, Arc::new(n));
        Ok(b)
    }

    fn discard(&mut self, bytenr: u64) -> Result<()> {
        // Only private nodes are discarded: made by this transaction.
        self.free_block(bytenr, self.generation)
    }
}

impl<'a> WriteTxn<'a> {
    /// Whether the data extent at `bytenr` was allocated by this (uncommitted) transaction:
    /// if it is freed again before the commit, its space is reusable at once, so only extents
    /// of committed generations may be read outside the caller's lock under a [`ReadTxn`]
    /// (which keeps freed committed extents pinned while it lives).
    pub fn is_new_data(&self, bytenr: u64) -> bool {
        self.new_data.contains(&bytenr)
    }

    /// The data path over this store's device and chunk map, for extents this transaction
    /// allocated.
    pub fn data_io(&self) -> Result<crate::data_io::DataIo<'_>> {
        self.shared.data_io()
    }

    /// Space figures as this transaction sees them (what [`Store::stats`] would show after its
    /// commit), without waiting for the writer.
    pub fn stats(&self) -> Stats {
        Stats {
            generation: self.w.sb.generation,
            system: self.alloc.stats(ChunkKind::System),
            metadata: self.alloc.stats(ChunkKind::Metadata),
            data: self.alloc.stats(ChunkKind::Data),
            metadata_reserve: self.alloc.meta_reserve(),
        }
    }

    /// The largest item value a node holds.
    pub fn max_value_size(&self) -> usize {
        crate::node::max_value_size(self.shared.node_size)
    }

    /// The generation this transaction commits as.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Lets this transaction use the metadata reserve: for deletes, which must work on a full
    /// filesystem.
    pub fn allow_reserve(&mut self) {
        self.use_reserve = true;
    }

    /// Whether the leaf holding `key` in `tree` is shared with another tree (some node on the
    /// path from the root has more than one reference): its items then stand for files of
    /// several trees (for `du`'s exclusive and shared bytes).
    pub fn path_shared(&self, tree: u64, key: &Key) -> Result<bool> {
        let root = self.root_of(tree)?;
        if root.bytenr == 0 {
            return Ok(false);
        }
        let mut node = self.read(root.bytenr, root.generation, root.level)?;
        loop {
            if self.refcount(node.bytenr)? > 1 {
                return Ok(true);
            }
            if node.level == 0 {
                return Ok(false);
            }
            let p = node.ptrs()[node.child_index(key)];
            node = self.read(p.bytenr, p.generation, node.level - 1)?;
        }
    }

    /// Every chunk with its space figures as this transaction sees them (for balance).
    pub fn chunk_usage(&self) -> Vec<(ChunkMapping, SpaceStats)> {
        self.alloc
            .chunks()
            .map(|c| {
                (
                    c.mapping,
                    SpaceStats {
                        total: c.mapping.length,
                        free: c.free.total(),
                        pinned: c.pinned.total(),
                    },
                )
            })
            .collect()
    }

    /// Keeps every allocation of this transaction out of the chunk at `logical` (balance empties
    /// it). Undo with [`WriteTxn::clear_excluded_chunks`] before committing.
    pub fn exclude_chunk(&mut self, logical: u64) {
        self.alloc.exclude(logical);
    }

    /// Lets allocations use every chunk again.
    pub fn clear_excluded_chunks(&mut self) {
        self.alloc.clear_excluded();
    }

    fn add_delayed(&mut self, bytenr: u64, generation: u64, level: u8, delta: i64) {
        let e = self.delayed.entry(bytenr).or_insert(DelayedRef {
            delta: 0,
            generation,
            level,
        });
        e.delta += delta;
        if e.delta == 0 {
            self.delayed.remove(&bytenr);
        }
    }

    /// The stored count of a tree block (absent item: one) plus pending changes.
    fn refcount(&self, bytenr: u64) -> Result<i64> {
        let stored = self.stored_refcount(bytenr)?;
        Ok(stored as i64 + self.delayed.get(&bytenr).map_or(0, |d| d.delta))
    }

    fn stored_refcount(&self, bytenr: u64) -> Result<u64> {
        let root = self.root_of(tree_id::EXTENT_TREE)?;
        match btree::get(self, &root, &Key::new(bytenr, item_type::TREE_BLOCK_REF, 0))? {
            None => Ok(1),
            Some(v) if v.len() == 8 => Ok(le64(&v)),
            Some(v) => Err(Error::Corrupt(format!(
                "refcount item of block {bytenr} has {} bytes",
                v.len()
            ))),
        }
    }

    fn alloc_block(&mut self, owner: u64) -> Result<u64> {
        let kind = if owner == tree_id::CHUNK_TREE {
            ChunkKind::System
        } else {
            ChunkKind::Metadata
        };
        let b = self.alloc.alloc(
            kind,
            self.shared.node_size as u64,
            self.use_reserve || self.in_op,
        )?;
        Ok(b)
    }

    /// A block leaves every tree: returned at once if this transaction made it, else pinned.
    fn free_block(&mut self, bytenr: u64, created: u64) -> Result<()> {
        let len = self.shared.node_size as u64;
        if self.dirty.remove(&bytenr).is_some() {
            self.alloc.free_now(bytenr, len)
        } else {
            self.alloc.pin(bytenr, len, self.generation, created)
        }
    }

    fn root_of(&self, tree: u64) -> Result<TreeRoot> {
        match tree {
            tree_id::ROOT_TREE => Ok(self.root_tree),
            tree_id::CHUNK_TREE => Ok(self.chunk_tree),
            _ => self
                .roots
                .get(&tree)
                .map(|r| r.root)
                .ok_or(Error::NoSuchTree(tree)),
        }
    }

    fn set_root(&mut self, tree: u64, root: TreeRoot) {
        match tree {
            tree_id::ROOT_TREE => self.root_tree = root,
            tree_id::CHUNK_TREE => self.chunk_tree = root,
            _ => {
                if let Some(r) = self.roots.get_mut(&tree) {
                    r.root = root;
                }
            }
        }
    }

    /// Runs one tree change: checks space up front (so it cannot run out part way), and poisons
    /// the transaction if it fails part way anyway.
    fn tree_op<T>(
        &mut self,
        tree: u64,
        f: impl FnOnce(&mut Self, &mut TreeRoot) -> Result<T>,
    ) -> Result<T> {
        if self.poisoned {
            return Err(Error::InvalidRequest(
                "transaction failed earlier; drop it".into(),
            ));
        }
        let mut root = self.root_of(tree)?;
        if !self.use_reserve && !self.in_op && tree != tree_id::CHUNK_TREE {
            // Worst case: every level copied and split, plus a new root.
            let need = 2 * (u64::from(root.level) + 2) * self.shared.node_size as u64;
            if self.alloc.free_bytes(ChunkKind::Metadata) < need + self.alloc.meta_reserve() {
                return Err(Error::NoSpace {
                    kind: "metadata",
                    needed: need,
                });
            }
        }
        let was = self.in_op;
        self.in_op = true;
        let r = f(self, &mut root);
        self.in_op = was;
        match r {
            Ok(v) => {
                self.set_root(tree, root);
                Ok(v)
            }
            Err(e) => {
                self.poisoned = true;
                Err(e)
            }
        }
    }

    /// Inserts or replaces an item.
    pub fn insert(&mut self, tree: u64, key: Key, value: &[u8]) -> Result<()> {
        let max = crate::node::max_value_size(self.shared.node_size);
        if value.len() > max {
            return Err(Error::ItemTooLarge {
                size: value.len(),
                max,
            });
        }
        self.tree_op(tree, |t, root| btree::insert(t, root, tree, key, value))
    }

    /// Deletes an item; returns whether it existed.
    pub fn delete(&mut self, tree: u64, key: &Key) -> Result<bool> {
        let root = self.root_of(tree)?;
        if btree::get(self, &root, key)?.is_none() {
            return Ok(false);
        }
        self.tree_op(tree, |t, root| btree::delete(t, root, tree, key))
    }

    /// The value of an item.
    pub fn get(&self, tree: u64, key: &Key) -> Result<Option<Vec<u8>>> {
        btree::get(self, &self.root_of(tree)?, key)
    }

    /// Items of `tree` with keys in `range`, as a double-ended iterator.
    pub fn range(&self, tree: u64, range: impl RangeBounds<Key>) -> Result<Range<'_, Self>> {
        btree::range(
            self,
            &self.root_of(tree)?,
            range.start_bound().cloned(),
            range.end_bound().cloned(),
        )
    }

    /// Whether a tree exists.
    pub fn has_tree(&self, tree: u64) -> bool {
        matches!(tree, tree_id::ROOT_TREE | tree_id::CHUNK_TREE) || self.roots.contains_key(&tree)
    }

    /// Ids of all trees with a root item.
    pub fn tree_ids(&self) -> Vec<u64> {
        self.roots.keys().copied().collect()
    }

    /// Creates an empty tree.
    pub fn create_tree(&mut self, tree: u64) -> Result<()> {
        if self.has_tree(tree) {
            return Err(Error::TreeExists(tree));
        }
        self.roots.insert(tree, RootItem::default());
        Ok(())
    }

    /// Makes `dst` a snapshot of `src`: O(1), sharing every block. Both must be subvolume trees.
    pub fn snapshot_tree(&mut self, src: u64, dst: u64) -> Result<()> {
        if !shareable(src) || !shareable(dst) {
            return Err(Error::InvalidRequest(format!(
                "only subvolume trees (id >= {}) can be snapshotted",
                tree_id::FIRST_SUBVOL_TREE
            )));
        }
        let item = *self.roots.get(&src).ok_or(Error::NoSuchTree(src))?;
        if self.has_tree(dst) {
            return Err(Error::TreeExists(dst));
        }
        if item.root.bytenr != 0 {
            self.add_delayed(item.root.bytenr, item.root.generation, item.root.level, 1);
        }
        self.roots.insert(dst, item);
        Ok(())
    }

    /// Deletes a subvolume tree. Its blocks are freed at commit, those shared with other trees
    /// excepted.
    pub fn drop_tree(&mut self, tree: u64) -> Result<()> {
        if !shareable(tree) {
            return Err(Error::InvalidRequest(format!(
                "tree {tree} cannot be dropped"
            )));
        }
        let item = self.roots.remove(&tree).ok_or(Error::NoSuchTree(tree))?;
        if item.root.bytenr != 0 {
            self.add_delayed(item.root.bytenr, item.root.generation, item.root.level, -1);
        }
        Ok(())
    }

    /// Sets a tree's root item flags.
    pub fn set_tree_flags(&mut self, tree: u64, flags: u64) -> Result<()> {
        self.roots
            .get_mut(&tree)
            .ok_or(Error::NoSuchTree(tree))?
            .flags = flags;
        Ok(())
    }

    /// A tree's root item flags.
    pub fn tree_flags(&self, tree: u64) -> Result<u64> {
        self.roots
            .get(&tree)
            .map(|r| r.flags)
            .ok_or(Error::NoSuchTree(tree))
    }

    /// Applies pending reference-count changes to the extent tree until none are left.
    fn run_delayed_refs(&mut self) -> Result<()> {
        while !self.delayed.is_empty() {
            let mut batch: Vec<(u64, DelayedRef)> = self.delayed.drain().collect();
            batch.sort_by_key(|(b, _)| *b);
            for (bytenr, d) in batch {
                let stored = self.stored_refcount(bytenr)?;
                let now = stored as i64 + d.delta;
                let key = Key::new(bytenr, item_type::TREE_BLOCK_REF, 0);
                if now < 0 {
                    return Err(Error::Corrupt(format!(
                        "block {bytenr} reference count below zero"
                    )));
                }
                if stored != 1 {
                    self.tree_op(tree_id::EXTENT_TREE, |t, r| {
                        btree::delete(t, r, tree_id::EXTENT_TREE, &key)
                    })?;
                }
                if now == 0 {
                    // The last reference: children lose the one this block held.
                    let node = self.read(bytenr, d.generation, d.level)?;
                    for p in node.ptrs() {
                        self.add_delayed(p.bytenr, p.generation, d.level - 1, -1);
                    }
                    self.free_block(bytenr, d.generation)?;
                    if d.level == 0 && self.data_refs.is_some() {
                        self.data_refs_for_freed_leaf(&node)?;
                    }
                } else if now > 1 {
                    let v = (now as u64).to_le_bytes();
                    self.tree_op(tree_id::EXTENT_TREE, |t, r| {
                        btree::insert(t, r, tree_id::EXTENT_TREE, key, &v)
                    })?;
                }
            }
        }
        Ok(())
    }

    /// Brings root items in the root tree in line with the roots in memory.
    fn sync_root_items(&mut self) -> Result<bool> {
        let mut changed = false;
        let gone: Vec<u64> = self
            .written_roots
            .keys()
            .filter(|id| !self.roots.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            let key = Key::new(id, item_type::ROOT_ITEM, 0);
            self.tree_op(tree_id::ROOT_TREE, |t, r| {
                btree::delete(t, r, tree_id::ROOT_TREE, &key)
            })?;
            self.written_roots.remove(&id);
            changed = true;
        }
        let stale: Vec<(u64, RootItem)> = self
            .roots
            .iter()
            .filter(|(id, item)| self.written_roots.get(id) != Some(item))
            .map(|(id, item)| (*id, *item))
            .collect();
        for (id, item) in stale {
            let key = Key::new(id, item_type::ROOT_ITEM, 0);
            let v = item.encode();
            self.tree_op(tree_id::ROOT_TREE, |t, r| {
                btree::insert(t, r, tree_id::ROOT_TREE, key, &v)
            })?;
            self.written_roots.insert(id, item);
            changed = true;
        }
        Ok(changed)
    }

    /// Brings the free-space tree in line with the allocator.
    fn sync_free_space(&mut self) -> Result<()> {
        let (del, ins) = self.alloc.fst_changes();
        for (s, l) in del {
            let key = Key::new(s, item_type::FREE_SPACE_EXTENT, l);
            self.tree_op(tree_id::FREE_SPACE_TREE, |t, r| {
                btree::delete(t, r, tree_id::FREE_SPACE_TREE, &key)
            })?;
        }
        for (s, l) in ins {
            let key = Key::new(s, item_type::FREE_SPACE_EXTENT, l);
            self.tree_op(tree_id::FREE_SPACE_TREE, |t, r| {
                btree::insert(t, r, tree_id::FREE_SPACE_TREE, key, &[])
            })?;
        }
        Ok(())
    }

    /// Makes every change durable as one new generation and returns it.
    pub fn commit(mut self) -> Result<u64> {
        if self.poisoned {
            return Err(Error::InvalidRequest(
                "transaction failed earlier; drop it".into(),
            ));
        }
        // Commit-time changes may use the reserve: a commit must not fail for space.
        self.use_reserve = true;
        let mut settled = false;
        for _ in 0..64 {
            self.run_delayed_refs()?;
            let roots_changed = self.sync_root_items()?;
            self.sync_free_space()?;
            if !roots_changed
                && self.delayed.is_empty()
                && !self.alloc.has_dirty()
                && self.roots == self.written_roots
            {
                settled = true;
                break;
            }
        }
        if !settled {
            return Err(Error::Corrupt(
                "commit did not settle the space trees".into(),
            ));
        }
        let r = self.write_out();
        if let Err(e) = &r {
            self.w.broken = Some(e.to_string());
        }
        r
    }

    fn write_out(&mut self) -> Result<u64> {
        let shared = self.shared.clone();
        let ns = shared.node_size;
        let nodes: Vec<Arc<Node>> = self.dirty.drain().map(|(_, n)| n).collect();
        let nodes =
            writeback::write_nodes(&*shared.dev, &shared.chunks, &shared.fs_uuid, ns, nodes)?;
        shared.dev.flush()?;
        let mut sb = self.w.sb.clone();
        sb.generation = self.generation;
        sb.root_tree = self.root_tree;
        sb.chunk_tree = self.chunk_tree;
        let st =
            [ChunkKind::System, ChunkKind::Metadata, ChunkKind::Data].map(|k| self.alloc.stats(k));
        sb.bytes_used = st.iter().map(|s| s.used()).sum();
        write_superblocks(&*shared.dev, &sb)?;
        shared.dev.flush()?;
        // Durable: publish. Blocks this commit freed leave the cache first: only old readers
        // still want them (and read them from disk), so the bound goes to live nodes.
        for b in self.alloc.freed_in(self.generation) {
            shared.cache.remove(b);
        }
        for n in nodes {
            shared.cache.insert(n);
        }
        let committed = Arc::new(Committed {
            generation: self.generation,
            root_tree: self.root_tree,
            chunk_tree: self.chunk_tree,
            roots: std::mem::take(&mut self.roots),
        });
        *shared.committed.write().unwrap_or_else(|p| p.into_inner()) = committed;
        self.alloc
            .release_pinned(self.generation, &shared.live_readers())?;
        self.w.sb = sb;
        self.w.alloc = self.alloc.clone();
        Ok(self.generation)
    }
}

/// A read view of one committed generation. Its blocks stay allocated while it lives.
pub struct ReadTxn {
    shared: Arc<Shared>,
    state: Arc<Committed>,
}

impl Drop for ReadTxn {
    fn drop(&mut self) {
        let mut readers = self
            .shared
            .readers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = readers.get_mut(&self.state.generation) {
            *n -= 1;
            if *n == 0 {
                readers.remove(&self.state.generation);
            }
        }
    }
}

impl NodeRead for ReadTxn {
    fn node_size(&self) -> usize {
        self.shared.node_size
    }

    fn read(&self, bytenr: u64, generation: u64, level: u8) -> Result<Arc<Node>> {
        self.shared.reader().read(bytenr, generation, level)
    }
}

impl ReadTxn {
    /// The generation this view shows.
    pub fn generation(&self) -> u64 {
        self.state.generation
    }

    fn root_of(&self, tree: u64) -> Result<TreeRoot> {
        match tree {
            tree_id::ROOT_TREE => Ok(self.state.root_tree),
            tree_id::CHUNK_TREE => Ok(self.state.chunk_tree),
            _ => self
                .state
                .roots
                .get(&tree)
                .map(|r| r.root)
                .ok_or(Error::NoSuchTree(tree)),
        }
    }

    /// The value of an item.
    pub fn get(&self, tree: u64, key: &Key) -> Result<Option<Vec<u8>>> {
        btree::get(self, &self.root_of(tree)?, key)
    }

    /// Items of `tree` with keys in `range`, as a double-ended iterator.
    pub fn range(&self, tree: u64, range: impl RangeBounds<Key>) -> Result<Range<'_, Self>> {
        btree::range(
            self,
            &self.root_of(tree)?,
            range.start_bound().cloned(),
            range.end_bound().cloned(),
        )
    }

    /// Ids of all trees with a root item.
    pub fn tree_ids(&self) -> Vec<u64> {
        self.state.roots.keys().copied().collect()
    }

    /// The extent item at `bytenr`.
    pub fn data_extent(&self, bytenr: u64) -> Result<Option<DataExtent>> {
        extent::find_extent(self, &self.root_of(tree_id::EXTENT_TREE)?, bytenr)
    }

    /// Every owner of the extent at `bytenr`, with its count.
    pub fn data_backrefs(&self, bytenr: u64) -> Result<Vec<(DataRefOwner, u64)>> {
        extent::backrefs(self, &self.root_of(tree_id::EXTENT_TREE)?, bytenr)
    }

    /// A tree's root item flags.
    pub fn tree_flags(&self, tree: u64) -> Result<u64> {
        self.state
            .roots
            .get(&tree)
            .map(|r| r.flags)
            .ok_or(Error::NoSuchTree(tree))
    }

    /// Checks this generation end to end: every tree's structure and checksums; every block's
    /// reference count recomputed from all trees equals the stored one; no block is used twice
    /// or by both a tree and a data extent; and the free-space tree is exactly the complement of
    /// the space in use. Returns the first inconsistency as an error.
    pub fn check(&self) -> Result<CheckReport> {
        let mut report = CheckReport {
            generation: self.state.generation,
            ..CheckReport::default()
        };
        let mut refs: HashMap<u64, u64> = HashMap::new();
        let mut leaves: Vec<Arc<Node>> = Vec::new();
        let mut trees: Vec<(u64, TreeRoot)> = vec![
            (tree_id::ROOT_TREE, self.state.root_tree),
            (tree_id::CHUNK_TREE, self.state.chunk_tree),
        ];
        trees.extend(self.state.roots.iter().map(|(id, r)| (*id, r.root)));
        report.trees = trees.len();
        for (id, root) in &trees {
            let mut first_visit = HashSet::new();
            report.items += btree::check(self, root, |b, _| {
                first_visit.insert(b);
                Ok(())
            })
            .map_err(|e| Error::Corrupt(format!("tree {id}: {e}")))?;
            if root.bytenr != 0 {
                self.count_refs(root, shareable(*id), &mut refs, &mut leaves)?;
            }
            if !shareable(*id)
                && first_visit
                    .iter()
                    .any(|b| refs.get(b).copied().unwrap_or(0) > 1)
            {
                return Err(Error::Corrupt(format!(
                    "tree {id} shares blocks but may not"
                )));
            }
        }
        // Trees dropped in the background still hold what they have not released.
        self.count_drop_refs(&mut refs, &mut leaves)?;
        report.nodes = refs.len() as u64;
        report.shared_nodes = refs.values().filter(|&&c| c > 1).count() as u64;
        // Stored counts against recomputed ones.
        let extent = self.root_of(tree_id::EXTENT_TREE)?;
        let mut stored: HashMap<u64, u64> = HashMap::new();
        let mut used = RangeSet::new();
        let mut data_owners: BTreeMap<(u64, DataRefOwner), (u64, u64)> = BTreeMap::new();
        for item in btree::range(self, &extent, Bound::Unbounded, Bound::Unbounded)? {
            let (key, value) = item?;
            match key.item_type {
                item_type::TREE_BLOCK_REF => {
                    if value.len() != 8 || le64(&value) < 2 {
                        return Err(Error::Corrupt(format!("bad refcount item {key:?}")));
                    }
                    stored.insert(key.objectid, le64(&value));
                }
                item_type::EXTENT_ITEM => {
                    report.data_extents += 1;
                    let e = extent::find_extent(self, &extent, key.objectid)?
                        .ok_or_else(|| Error::Corrupt(format!("extent {key:?} vanished")))?;
                    let m = self.shared.chunks.lookup(key.objectid);
                    if m.is_none_or(|m| {
                        m.kind != ChunkKind::Data
                            || key
                                .objectid
                                .checked_add(key.offset)
                                .is_none_or(|end| end > m.logical_end())
                    }) {
                        return Err(Error::Corrupt(format!(
                            "data extent {key:?} is not inside one data chunk"
                        )));
                    }
                    let owners = extent::backrefs(self, &extent, key.objectid)?;
                    let sum: u64 = owners.iter().map(|(_, n)| n).sum();
                    if sum != e.refs {
                        return Err(Error::Corrupt(format!(
                            "extent {key:?} counts {} references, its back-references {sum}",
                            e.refs
                        )));
                    }
                    for (o, n) in owners {
                        data_owners.insert((key.objectid, o), (key.offset, n));
                    }
                    used.insert(key.objectid, key.offset).map_err(|_| {
                        Error::Corrupt(format!("data extent {key:?} overlaps another"))
                    })?;
                }
                item_type::EXTENT_DATA_REF
                    if extent::find_extent(self, &extent, key.objectid)?.is_none() =>
                {
                    return Err(Error::Corrupt(format!(
                        "back-reference {key:?} without its extent"
                    )));
                }
                _ => {}
            }
        }
        let ns = self.shared.node_size as u64;
        for (&b, &n) in &refs {
            let s = stored.remove(&b).unwrap_or(1);
            if s != n {
                return Err(Error::Corrupt(format!(
                    "block {b}: stored count {s}, referenced {n} times"
                )));
            }
            used.insert(b, ns)
                .map_err(|_| Error::Corrupt(format!("block {b} overlaps other used space")))?;
        }
        if let Some((b, _)) = stored.into_iter().next() {
            return Err(Error::Corrupt(format!(
                "refcount item for unreferenced block {b}"
            )));
        }
        // With the layer above's parser, every back-reference is accounted for by leaf items.
        let parser = self
            .shared
            .data_refs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(p) = parser {
            let want = extent::expected_backrefs(&*p, &leaves);
            if want != data_owners {
                let diff: Vec<_> = want
                    .iter()
                    .filter(|(k, v)| data_owners.get(k) != Some(v))
                    .chain(data_owners.iter().filter(|(k, v)| want.get(k) != Some(v)))
                    .take(4)
                    .collect();
                return Err(Error::Corrupt(format!(
                    "data back-references differ from the items that hold them: {diff:?}"
                )));
            }
        }
        // The free-space tree must be exactly the complement of the used space, per chunk.
        let fst = self.root_of(tree_id::FREE_SPACE_TREE)?;
        let mut free: HashMap<u64, RangeSet> = HashMap::new();
        for item in btree::range(self, &fst, Bound::Unbounded, Bound::Unbounded)? {
            let (key, _) = item?;
            let m = self
                .shared
                .chunks
                .lookup(key.objectid)
                .filter(|m| {
                    key.objectid
                        .checked_add(key.offset)
                        .is_some_and(|end| end <= m.logical_end())
                })
                .ok_or_else(|| {
                    Error::Corrupt(format!("free space {key:?} is not inside one chunk"))
                })?;
            report.free_bytes += key.offset;
            free.entry(m.logical)
                .or_default()
                .insert(key.objectid, key.offset)
                .map_err(|_| {
                    Error::Corrupt(format!("free space {key:?} overlaps other free space"))
                })?;
        }
        for m in self.shared.chunks.iter() {
            let mut want = RangeSet::new();
            let mut at = m.logical;
            // Used ranges are coalesced across chunks; clip them to this one.
            let in_chunk: Vec<(u64, u64)> = used
                .iter()
                .filter(|&(s, l)| s < m.logical_end() && s + l > m.logical)
                .map(|(s, l)| (s.max(m.logical), (s + l).min(m.logical_end())))
                .collect();
            for (s, e) in in_chunk {
                want.insert(at, s - at)?;
                at = e;
            }
            want.insert(at, m.logical_end() - at)?;
            let have: Vec<(u64, u64)> =
                free.remove(&m.logical).unwrap_or_default().iter().collect();
            let want: Vec<(u64, u64)> = want.iter().collect();
            if have != want {
                return Err(Error::Corrupt(format!(
                    "free space of chunk {} is {have:?}, the complement of used space is {want:?}",
                    m.logical
                )));
            }
        }
        Ok(report)
    }

    fn count_refs(
        &self,
        root: &TreeRoot,
        keep_leaves: bool,
        refs: &mut HashMap<u64, u64>,
        leaves: &mut Vec<Arc<Node>>,
    ) -> Result<()> {
        let mut stack = vec![(root.bytenr, root.generation, root.level)];
        while let Some((b, g, l)) = stack.pop() {
            let n = refs.entry(b).or_insert(0);
            *n += 1;
            if *n > 1 {
                continue;
            }
            if l == 0 {
                if keep_leaves {
                    leaves.push(self.read(b, g, l)?);
                }
                continue;
            }
            let node = self.read(b, g, l)?;
            stack.extend(node.ptrs().iter().map(|p| (p.bytenr, p.generation, l - 1)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::MemDevice;

    const MIB: usize = 1 << 20;

    fn small_opts() -> MkfsOptions {
        MkfsOptions {
            node_size: 4096,
            metadata_percent: 30,
            ..MkfsOptions::default()
        }
    }

    fn k(i: u64) -> Key {
        Key::new(i, 1, i * 3)
    }

    #[test]
    fn data_survives_close_and_open() {
        let dev = Arc::new(MemDevice::new(32 * MIB));
        let store = Store::create(dev.clone(), small_opts()).unwrap();
        store.check().unwrap();
        let mut t = store.begin().unwrap();
        t.create_tree(256).unwrap();
        for i in 0..3000 {
            t.insert(256, k(i), format!("value {i}").as_bytes())
                .unwrap();
        }
        let g = t.commit().unwrap();
        let mut t = store.begin().unwrap();
        for i in (0..3000).step_by(3) {
            assert!(t.delete(256, &k(i)).unwrap());
        }
        t.insert(256, k(1), b"changed").unwrap();
        assert_eq!(t.commit().unwrap(), g + 1);
        let report = store.check().unwrap();
        assert!(report.nodes > 10, "{report:?}");
        drop(store);
        let store = Store::open(dev).unwrap();
        assert_eq!(store.generation(), g + 1);
        let r = store.read();
        assert_eq!(r.get(256, &k(1)).unwrap().as_deref(), Some(&b"changed"[..]));
        assert_eq!(r.get(256, &k(3)).unwrap(), None);
        assert_eq!(r.get(256, &k(4)).unwrap().as_deref(), Some(&b"value 4"[..]));
        assert_eq!(r.range(256, ..).unwrap().count(), 2000);
        let last = r.range(256, ..).unwrap().next_back().unwrap().unwrap();
        assert_eq!(last.0, k(2999));
        store.check().unwrap();
    }

    /// Options under which freed blocks are soon reused: little metadata, a tiny cache.
    fn tight_opts() -> MkfsOptions {
        MkfsOptions {
            node_size: 4096,
            metadata_percent: 30,
            cache_bytes: 0,
            ..MkfsOptions::default()
        }
    }

    #[test]
    fn readers_keep_their_generation_during_commits() {
        let dev = Arc::new(MemDevice::new(8 * MIB));
        let store = Store::create(dev, tight_opts()).unwrap();
        let mut t = store.begin().unwrap();
        t.create_tree(256).unwrap();
        for i in 0..3000 {
            t.insert(256, k(i), b"old").unwrap();
        }
        t.commit().unwrap();
        // The reader holds its generation's blocks while next-fit allocation wraps around the
        // small metadata space several times.
        let reader = store.read();
        for round in 0..20 {
            let mut t = store.begin().unwrap();
            for i in 0..3000 {
                t.insert(256, k(i), format!("new {round}").as_bytes())
                    .unwrap();
            }
            t.commit().unwrap();
        }
        // Every block the reader needs is still intact.
        assert_eq!(
            reader
                .range(256, ..)
                .unwrap()
                .filter(|r| r.as_ref().unwrap().1 == b"old")
                .count(),
            3000
        );
        reader.check().unwrap();
        drop(reader);
        // With the reader gone its space is reused: many more rounds fit.
        for round in 20..40 {
            let mut t = store.begin().unwrap();
            for i in 0..3000 {
                t.insert(256, k(i), format!("new {round}").as_bytes())
                    .unwrap();
            }
            t.commit().unwrap();
        }
        assert_eq!(
            store.read().get(256, &k(7)).unwrap().as_deref(),
            Some(&b"new 39"[..])
        );
        store.check().unwrap();
    }

    /// An owned transaction moves to another thread; a second writer waits until it ends.
    #[test]
    fn owned_transaction_moves_between_threads() {
        let dev = Arc::new(MemDevice::new(16 * MIB));
        let store = Arc::new(Store::create(dev, small_opts()).unwrap());
        let mut t = store.begin_owned().unwrap();
        t.create_tree(256).unwrap();
        let waiter = {
            let store = store.clone();
            std::thread::spawn(move || {
                let t = store.begin().unwrap();
                t.get(256, &k(1)).unwrap()
            })
        };
        let t = std::thread::spawn(move || {
            let mut t = t;
            t.insert(256, k(1), b"owned").unwrap();
            t
        })
        .join()
        .unwrap();
        t.commit().unwrap();
        assert_eq!(waiter.join().unwrap().as_deref(), Some(&b"owned"[..]));
        // A dropped owned transaction hands the writer back too.
        drop(store.begin_owned().unwrap());
        store.begin().unwrap().commit().unwrap();
        store.check().unwrap();
    }

    #[test]
    fn dropped_transaction_changes_nothing() {
        let dev = Arc::new(MemDevice::new(16 * MIB));
        let store = Store::create(dev, small_opts()).unwrap();
        let before = store.stats();
        let mut t = store.begin().unwrap();
        t.create_tree(300).unwrap();
        for i in 0..1000 {
            t.insert(300, k(i), &[1; 50]).unwrap();
        }
        drop(t);
        assert_eq!(store.stats(), before);
        assert!(matches!(
            store.read().get(300, &k(1)),
            Err(Error::NoSuchTree(300))
        ));
        store.check().unwrap();
    }

    fn env_scale(default: u64) -> u64 {
        std::env::var("COWCRYPT_SNAPSHOT_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    /// Snapshots of snapshots, writes to every tree, drops in random order: every commit passes
    /// the checker (recomputed refcounts equal stored ones, free space is the exact complement of
    /// used space), each tree keeps its own contents, and when every tree is gone the used
    /// metadata returns to exactly its figure before the first tree was made.
    #[test]
    fn snapshots_share_then_free_exactly() {
        use crate::crash::SplitMix64;
        for seed in 0..env_scale(3) {
            let mut rng = SplitMix64::new(seed);
            let dev = Arc::new(MemDevice::new(48 * MIB));
            let store = Store::create(dev.clone(), small_opts()).unwrap();
            let before = store.stats();
            let mut models: BTreeMap<u64, BTreeMap<Key, Vec<u8>>> = BTreeMap::new();
            let mut t = store.begin().unwrap();
            t.create_tree(256).unwrap();
            let mut m = BTreeMap::new();
            for i in 0..2000 {
                let v = vec![(i % 251) as u8; 20 + (i % 60) as usize];
                t.insert(256, k(i), &v).unwrap();
                m.insert(k(i), v);
            }
            models.insert(256, m);
            t.commit().unwrap();
            for (round, next_id) in (0..8).zip(257u64..) {
                let mut t = store.begin().unwrap();
                // Snapshot a random existing tree (sometimes one changed in this transaction).
                let ids: Vec<u64> = models.keys().copied().collect();
                let src = ids[rng.below(ids.len() as u64) as usize];
                if round % 2 == 1 {
                    t.insert(src, k(5000 + round), b"before snapshot").unwrap();
                    models
                        .get_mut(&src)
                        .unwrap()
                        .insert(k(5000 + round), b"before snapshot".to_vec());
                }
                t.snapshot_tree(src, next_id).unwrap();
                let copy = models[&src].clone();
                models.insert(next_id, copy);
                // Write to every tree.
                for (&id, m) in models.iter_mut() {
                    for _ in 0..40 {
                        let i = rng.below(2500);
                        if rng.below(3) == 0 {
                            assert_eq!(t.delete(id, &k(i)).unwrap(), m.remove(&k(i)).is_some());
                        } else {
                            let v = format!("t{id} r{round} {i}").into_bytes();
                            t.insert(id, k(i), &v).unwrap();
                            m.insert(k(i), v);
                        }
                    }
                }
                t.commit().unwrap();
                let report = store.check().unwrap();
                assert!(report.shared_nodes > 0, "{report:?}");
            }
            // Each tree holds exactly its own model.
            let r = store.read();
            for (&id, m) in &models {
                let got: Vec<(Key, Vec<u8>)> =
                    r.range(id, ..).unwrap().map(|x| x.unwrap()).collect();
                let want: Vec<(Key, Vec<u8>)> = m.iter().map(|(k, v)| (*k, v.clone())).collect();
                assert!(got == want, "tree {id} differs from its model");
            }
            drop(r);
            // Drop every tree in random order, a commit (and a check) after each.
            let mut ids: Vec<u64> = models.keys().copied().collect();
            while !ids.is_empty() {
                let id = ids.remove(rng.below(ids.len() as u64) as usize);
                let mut t = store.begin().unwrap();
                t.drop_tree(id).unwrap();
                t.commit().unwrap();
                store.check().unwrap();
                let r = store.read();
                for &other in &ids {
                    assert_eq!(r.range(other, ..).unwrap().count(), models[&other].len());
                }
            }
            let after = store.stats();
            assert_eq!(after.metadata.used(), before.metadata.used(), "seed {seed}");
            assert_eq!(after.metadata.free, before.metadata.free, "seed {seed}");
            // And the free-space tree on disk says the same after a reopen.
            drop(store);
            let store = Store::open(dev).unwrap();
            assert_eq!(store.stats().metadata, after.metadata);
            store.check().unwrap();
        }
    }

    /// Metadata filled to ENOSPC: ordinary inserts get a clean error and change nothing, the
    /// commit still works, deletes use the reserve, and afterwards inserts work again.
    #[test]
    fn full_metadata_gives_enospc_and_deletes_still_work() {
        let dev = Arc::new(MemDevice::new(12 * MIB));
        let opts = MkfsOptions {
            node_size: 4096,
            metadata_percent: 20,
            ..MkfsOptions::default()
        };
        let store = Store::create(dev.clone(), opts).unwrap();
        let mut t = store.begin().unwrap();
        t.create_tree(256).unwrap();
        t.commit().unwrap();
        let mut n = 0u64;
        let mut full = false;
        while !full {
            let mut t = store.begin().unwrap();
            for _ in 0..400 {
                match t.insert(256, k(n), &[7; 200]) {
                    Ok(()) => n += 1,
                    Err(Error::NoSpace {
                        kind: "metadata", ..
                    }) => {
                        full = true;
                        break;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            t.commit().unwrap();
        }
        assert!(n > 1000, "only {n} items fit");
        let st = store.stats();
        assert!(
            st.metadata.free <= st.metadata_reserve + 16 * 4096,
            "{st:?}"
        );
        // The refused insert left nothing behind.
        assert_eq!(store.read().get(256, &k(n)).unwrap(), None);
        store.check().unwrap();
        // Ordinary deletes may fail; with the reserve they work, in small transactions.
        for round in 0..20u64 {
            let mut t = store.begin().unwrap();
            t.allow_reserve();
            for i in round * 100..round * 100 + 100 {
                assert!(t.delete(256, &k(i)).unwrap());
            }
            t.commit().unwrap();
        }
        store.check().unwrap();
        let mut t = store.begin().unwrap();
        for i in 0..50 {
            t.insert(256, k(i), b"room again").unwrap();
        }
        t.commit().unwrap();
        drop(store);
        let store = Store::open(dev).unwrap();
        assert_eq!(
            store.read().range(256, ..).unwrap().count() as u64,
            n - 2000 + 50
        );
        store.check().unwrap();
    }

    #[test]
    fn data_space_runs_out_cleanly() {
        let dev = Arc::new(MemDevice::new(16 * MIB));
        let store = Store::create(dev, small_opts()).unwrap();
        let total = store.stats().data.free;
        let owner = DataRefOwner {
            root: 256,
            inode: 257,
            offset: 0,
        };
        let mut t = store.begin().unwrap();
        let mut got = 0;
        loop {
            match t.alloc_data_extent(1 << 20, owner) {
                Ok(_) => got += 1 << 20,
                Err(Error::NoSpace { kind: "data", .. }) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(got > 0 && got <= total && total - got < 1 << 20);
        t.commit().unwrap();
        store.check().unwrap();
        assert_eq!(store.stats().data.free, total - got);
    }

    /// A reader thread scans its generation over and over while the writer commits rewrites of
    /// every item: the reader always sees its own generation whole.
    #[test]
    fn readers_work_during_commits_on_other_threads() {
        let dev = Arc::new(MemDevice::new(8 * MIB));
        let store = Arc::new(Store::create(dev, tight_opts()).unwrap());
        let mut t = store.begin().unwrap();
        t.create_tree(256).unwrap();
        for i in 0..2500 {
            t.insert(256, k(i), b"gen0").unwrap();
        }
        t.commit().unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut scans = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || scans < 3 {
                    let r = store.read();
                    let items: Vec<_> = r.range(256, ..).unwrap().map(|x| x.unwrap()).collect();
                    assert_eq!(items.len(), 2500);
                    // One generation: every value the same.
                    assert!(
                        items.iter().all(|(_, v)| *v == items[0].1),
                        "mixed generations"
                    );
                    scans += 1;
                }
                scans
            })
        };
        for round in 1..=40 {
            let mut t = store.begin().unwrap();
            for i in 0..2500 {
                t.insert(256, k(i), format!("gen{round}").as_bytes())
                    .unwrap();
            }
            t.commit().unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() >= 3);
        store.check().unwrap();
    }
}
