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
