//! The store's error type. Every decoder and every I/O path returns these; nothing that input can
//! reach panics.

use std::io;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The device failed an I/O request.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// A request addressed bytes outside the device.
    #[error("access beyond end of device: offset {offset} length {len}, device size {size}")]
    OutOfRange { offset: u64, len: u64, size: u64 },

    // --- Device-level half (store-dev): superblock, chunk map, data I/O. Add-only. ---
    /// One superblock copy failed a check (magic, checksum, placement, or a field).
    #[error("superblock at {offset}: {reason}")]
    BadSuperblock { offset: u64, reason: String },
    /// No superblock copy on the device passed its checks; `tried` lists each copy's failure.
    #[error("no valid superblock ({tried})")]
    NoValidSuperblock { tried: String },
    /// The image was written by a newer on-disk format than this build reads.
    #[error(
        "image has on-disk format version {found}, this build reads versions up to {supported}: \
         upgrade cowcrypt to open it"
    )]
    UnsupportedFormatVersion { found: u32, supported: u32 },
    /// The image uses incompatible features this build does not know; opening it at all could
    /// misread it.
    #[error(
        "image uses incompatible features {unknown:#x} that this build does not know: upgrade \
         cowcrypt to open it"
    )]
    UnsupportedIncompatFeatures { unknown: u64 },
    /// The image uses read-only-compatible features this build does not know: it may be read
    /// but not written.
    #[error(
        "image uses read-only-compatible features {unknown:#x} that this build does not know: it \
         can be opened read-only only"
    )]
    UnsupportedRoCompatFeatures { unknown: u64 },
    /// A chunk mapping failed a check when decoded or inserted.
    #[error("invalid chunk mapping: {reason}")]
    BadChunkMapping { reason: String },
    /// A chunk mapping overlaps one already in the map.
    #[error("chunk at logical {logical} overlaps the chunk at logical {existing} in {space} space")]
    ChunkOverlap {
        space: &'static str,
        logical: u64,
        existing: u64,
    },
    /// A logical range is not inside one mapped chunk.
    #[error("logical range {logical}+{len} is not inside one mapped chunk")]
    Unmapped { logical: u64, len: u64 },
    /// Bytes read from the device do not match their checksum.
    #[error(
        "checksum mismatch at logical {logical}: expected {expected:#010x}, found {found:#010x}"
    )]
    ChecksumMismatch {
        logical: u64,
        expected: u32,
        found: u32,
    },
    /// Data whose checksums match failed its crypt context's authentication: tampered with, or
    /// moved from another place (an attack, not bit rot).
    #[error("authentication failed at logical {logical}: the data was altered or misplaced")]
    AuthenticationFailed { logical: u64 },
    /// The crypt context supplied by the layer above failed.
    #[error("data unit encryption: {0}")]
    Crypt(#[from] crate::data_io::CryptError),
    /// A request broke a rule of the API (alignment, length), not a fault of the image.
    #[error("invalid request: {0}")]
    InvalidRequest(String),

    // --- Tree half (store-tree): nodes, trees, allocator, transactions. Add-only. ---
    /// A tree node failed a check when read (checksum, address, generation, level, layout).
    #[error("tree node at {bytenr}: {reason}")]
    BadNode { bytenr: u64, reason: String },
    /// An item value is larger than a node can hold.
    #[error("item value of {size} bytes exceeds the maximum {max}")]
    ItemTooLarge { size: usize, max: usize },
    /// No space left of the asked kind (ENOSPC). Deletes may still use the metadata reserve.
    #[error("no space left for {kind}: {needed} bytes needed")]
    NoSpace { kind: &'static str, needed: u64 },
    /// The tree id names no tree.
    #[error("no tree with id {0}")]
    NoSuchTree(u64),
    /// A tree with that id already exists.
    #[error("tree {0} already exists")]
    TreeExists(u64),
    /// The on-disk structures contradict each other (found by a read or by the checker).
    #[error("inconsistent filesystem: {0}")]
    Corrupt(String),
}

/// Result alias of the store.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
