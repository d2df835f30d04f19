//! cowcrypt's storage engine: block devices, the superblock, copy-on-write B-trees of typed
//! items, transactions, and reference-counted data extents.
//!
//! The store knows nothing of files, names or keys. Data it is asked to encrypt goes through one
//! I/O path that takes an optional crypt context supplied by the
//! layer above, the way blk-crypto serves Linux filesystems.
#![forbid(unsafe_code)]

pub mod device;
pub mod error;

pub use device::{BlockDevice, FileDevice, MemDevice};
pub use error::{Error, Result};
