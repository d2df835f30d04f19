//! The fscrypt crate's error type. Each variant maps to the errno Linux returns for the same
//! condition, so the filesystem can answer exactly as the kernel would.

/// Errors of fscrypt operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A policy, context or argument that Linux would reject with EINVAL.
    #[error("invalid {what}: {why}")]
    Invalid { what: &'static str, why: String },
    /// An encoded structure has the wrong length.
    #[error("{what} has length {got}, expected {expected}")]
    BadLength {
        what: &'static str,
        got: usize,
        expected: usize,
    },
    /// A master key of a size Linux does not accept (16 to 64 bytes).
    #[error("master key must be 16 to 64 bytes, got {0}")]
    BadKeySize(usize),
    /// An encryption mode this crate does not implement, or that is invalid in this place.
    #[error("unsupported encryption mode {0}")]
    UnsupportedMode(u8),
    /// The key needed is not available (ENOKEY).
    #[error("required key is not available")]
    NoKey,
    /// A name or target longer than allowed (ENAMETOOLONG).
    #[error("name too long: {len} bytes, at most {max}")]
    NameTooLong { len: usize, max: usize },
    /// Stored encrypted data that cannot be valid (EUCLEAN in Linux).
    #[error("corrupt encrypted data: {0}")]
    Corrupt(String),
    /// The caller lacks the privilege for this operation (EACCES).
    #[error("permission denied: {0}")]
    PermissionDenied(&'static str),
    /// The user's key quota is exhausted (EDQUOT).
    #[error("key quota exceeded")]
    QuotaExceeded,
    /// The OS random number generator failed.
    #[error("random number generator failed")]
    Rng,
    /// A data unit's MAC does not match its ciphertext (EIO): tampered or misplaced data.
    #[error("data unit {data_unit} of the extent failed authentication")]
    AuthenticationFailed { data_unit: u64 },
}

/// Result alias of the fscrypt crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn invalid(what: &'static str, why: impl Into<String>) -> Self {
        Error::Invalid {
            what,
            why: why.into(),
        }
    }

    /// The errno Linux returns for this condition.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Invalid { .. } | Error::BadLength { .. } | Error::BadKeySize(_) => 22, // EINVAL
            Error::UnsupportedMode(_) => 22,                                              // EINVAL
            Error::NoKey => 126,                                                          // ENOKEY
            Error::NameTooLong { .. } => 36,         // ENAMETOOLONG
            Error::Corrupt(_) => 117,                // EUCLEAN
            Error::PermissionDenied(_) => 13,        // EACCES
            Error::QuotaExceeded => 122,             // EDQUOT
            Error::Rng => 5,                         // EIO
            Error::AuthenticationFailed { .. } => 5, // EIO
        }
    }
}
