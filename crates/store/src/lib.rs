//! cowcrypt's storage engine: block devices, the superblock, copy-on-write B-trees of typed
//! items, transactions, and reference-counted data extents.
//!
//! The store knows nothing of files, names or keys. Data it is asked to encrypt goes through one
//! I/O path that takes an optional crypt context supplied by the
//! layer above, the way blk-crypto serves Linux filesystems.
// `unsafe` is allowed in one place alone: `sync_file_range` (FileDevice::start_writeback),
// which rustix does not wrap (and, in a test, `mincore` to see what the host's cache holds).
#![deny(unsafe_code)]

pub mod alloc;
pub mod btree;
pub mod cache;
pub mod checksum;
pub mod chunk;
pub mod crash;
pub mod data_io;
pub mod device;
pub mod error;
pub mod key;
pub mod node;
pub mod read_buf;
pub mod superblock;
pub mod txn;

pub use checksum::{CSUM_SIZE, checksum};
pub use chunk::{ChunkKind, ChunkMap, ChunkMapping};
pub use data_io::{CryptError, DataCrypt, DataIo, Written};
pub use device::{BlockDevice, FileDevice, MemDevice};
pub use error::{Error, Result};
pub use key::{Key, item_type, objectid, tree_id};
pub use read_buf::ReadBuf;
pub use superblock::{Superblock, TreeRoot, read_superblock, write_superblocks};
pub use txn::{
    CheckReport, DataExtent, DataRefOwner, DataRefs, DropProgress, ItemDataRef, MkfsOptions,
    PendingDeletion, ReadTxn, ResizeReport, RootItem, Stats, Store, WriteTxn,
};
