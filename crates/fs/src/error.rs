//! The filesystem's error type and the one place errors become errno values.

/// Errors of filesystem operations. Each maps to the errno POSIX asks for ([`Error::errno`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("permission denied")]
    Access,
    #[error("operation not permitted")]
    Perm,
    #[error("name too long")]
    NameTooLong,
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("cross-device link")]
    CrossDevice,
    #[error("no space left on device")]
    NoSpace,
    #[error("read-only filesystem")]
    ReadOnly,
    #[error("file too large")]
    TooBig,
    #[error("too many links")]
    TooManyLinks,
    #[error("no such attribute")]
    NoData,
    #[error("result too large for the buffer")]
    Range,
    #[error("value too large to store")]
    ValueTooBig,
    #[error("bad file handle")]
    BadHandle,
    #[error("no data or hole past end of file")]
    NoSuchOffset,
    #[error("operation not supported")]
    NotSupported,
    #[error("too many levels of symbolic links")]
    Loop,
    #[error("device or resource busy")]
    Busy,
    #[error("quota exceeded")]
    Quota,
    /// Encrypted data and no key to read it with (encryption arrives in a later issue).
    #[error("required key not available")]
    NoKey,
    /// A control frame of another protocol version.
    #[error("control protocol version {0} not spoken here")]
    Protocol(u32),
    /// An earlier operation failed part way; no change is accepted until a remount.
    #[error("filesystem stopped after an error ({0}); remount to recover")]
    Stopped(String),
    /// An on-disk item failed its checks.
    #[error("corrupt item {key}: {reason}")]
    Corrupt { key: String, reason: String },
    /// The storage layer failed.
    #[error(transparent)]
    Store(#[from] store::Error),
}

impl Error {
    /// The errno value for this error.
    pub fn errno(&self) -> i32 {
        match self {
            Error::NotFound => libc::ENOENT,
            Error::Exists => libc::EEXIST,
            Error::NotDir => libc::ENOTDIR,
            Error::IsDir => libc::EISDIR,
            Error::NotEmpty => libc::ENOTEMPTY,
            Error::Access => libc::EACCES,
            Error::Perm => libc::EPERM,
            Error::NameTooLong => libc::ENAMETOOLONG,
            Error::Invalid(_) => libc::EINVAL,
            Error::CrossDevice => libc::EXDEV,
            Error::NoSpace => libc::ENOSPC,
            Error::ReadOnly => libc::EROFS,
            Error::TooBig => libc::EFBIG,
            Error::TooManyLinks => libc::EMLINK,
            Error::Busy => libc::EBUSY,
            Error::Quota => libc::EDQUOT,
            Error::NoData => libc::ENODATA,
            Error::Range => libc::ERANGE,
            Error::ValueTooBig => libc::E2BIG,
            Error::BadHandle => libc::EBADF,
            Error::NoSuchOffset => libc::ENXIO,
            Error::NotSupported => libc::EOPNOTSUPP,
            Error::Loop => libc::ELOOP,
            Error::NoKey => libc::ENOKEY,
            Error::Protocol(_) => libc::EPROTO,
            Error::Corrupt { .. } | Error::Stopped(_) => libc::EIO,
            Error::Store(store::Error::NoSpace { .. }) => libc::ENOSPC,
            Error::Store(store::Error::ItemTooLarge { .. }) => libc::E2BIG,
            Error::Store(_) => libc::EIO,
        }
    }

    pub(crate) fn corrupt(key: &store::Key, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            key: format!("{key:?}"),
            reason: reason.into(),
        }
    }
}

/// Result alias of the filesystem.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_map_to_eio_or_enospc() {
        let e: Error = store::Error::NoSpace {
            kind: "data",
            needed: 1,
        }
        .into();
        assert_eq!(e.errno(), libc::ENOSPC);
        let e: Error = store::Error::Corrupt("x".into()).into();
        assert_eq!(e.errno(), libc::EIO);
        // Transparent: the cause prints once.
        assert_eq!(e.to_string(), "inconsistent filesystem: x");
        assert_eq!(Error::NameTooLong.errno(), libc::ENAMETOOLONG);
    }
}
