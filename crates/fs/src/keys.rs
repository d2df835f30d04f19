//! The filesystem's fscrypt keyring, with the kernel's semantics (FSCRYPT.md section 7): adding
//! a key claims it for the calling uid and returns its identifier; removing drops one's own
//! claim (or, for root, every claim) and reports OTHER_USERS or FILES_BUSY; status reports
//! PRESENT, INCOMPLETELY_REMOVED or ABSENT with the user count. The keyring itself is the
//! fscrypt crate's; this maps callers and errors and is what the control channel calls.

use fscrypt::keyring::{self, KeyState, RemovalScope};
use fscrypt::{KeyIdentifier, MasterKey};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::types::Caller;

/// A raw master key in transit (a control request): wiped on drop, never printed. Decoded
/// into room for the largest key from the start: a vector grown byte by byte would leave the
/// smaller copies it outgrew, each holding the key's first bytes, in freed memory.
#[derive(Clone, PartialEq, Eq, Serialize, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
#[serde(transparent)]
pub struct RawKey(pub Vec<u8>);

impl<'de> Deserialize<'de> for RawKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct KeyBytes;
        impl<'de> serde::de::Visitor<'de> for KeyBytes {
            type Value = RawKey;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "a master key of at most {} bytes", fscrypt::MAX_KEY_SIZE)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<RawKey, A::Error> {
                // Wiped on drop, also when an error below abandons it half read.
                let mut key = RawKey(Vec::with_capacity(fscrypt::MAX_KEY_SIZE));
                while let Some(byte) = seq.next_element::<u8>()? {
                    if key.0.len() == fscrypt::MAX_KEY_SIZE {
                        return Err(serde::de::Error::invalid_length(key.0.len() + 1, &self));
                    }
                    key.0.push(byte);
                }
                Ok(key)
            }
        }
        d.deserialize_seq(KeyBytes)
    }
}

impl std::fmt::Debug for RawKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawKey({} bytes, not shown)", self.0.len())
    }
}

/// What `key status` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyPresence {
    Present,
    IncompletelyRemoved,
    Absent,
}

/// FS_IOC_GET_ENCRYPTION_KEY_STATUS's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyStatusReport {
    pub state: KeyPresence,
    /// Users holding a claim (0 unless present).
    pub user_count: u32,
    /// The caller holds a claim.
    pub added_by_self: bool,
}

/// FS_IOC_REMOVE_ENCRYPTION_KEY's status flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRemoval {
    /// Only the caller's claim went; others still hold the key (OTHER_USERS).
    pub other_users: bool,
    /// No claims are left but open files still use the key (FILES_BUSY): it is incompletely
    /// removed until they are closed.
    pub files_busy: bool,
}

fn key_caller(c: &Caller) -> keyring::Caller {
    keyring::Caller {
        uid: c.uid,
        is_admin: c.uid == 0,
    }
}

/// The errno a keyring refusal means, as the kernel answers it.
fn key_error(e: fscrypt::Error) -> Error {
    match e {
        fscrypt::Error::NoKey => Error::NoKey,
        fscrypt::Error::PermissionDenied(_) => Error::Access,
        fscrypt::Error::QuotaExceeded => Error::Quota,
        fscrypt::Error::BadKeySize(_) => Error::Invalid("a master key is 16 to 64 bytes"),
        _ => Error::Invalid("key refused"),
    }
}

/// Parses a key identifier as 32 hexadecimal digits.
pub fn parse_identifier(text: &str) -> Result<KeyIdentifier> {
    text.parse()
        .map_err(|_| Error::Invalid("a key identifier is 32 hexadecimal digits"))
}

pub(crate) fn add_key(ring: &keyring::Keyring, raw: &[u8], c: &Caller) -> Result<KeyIdentifier> {
    let key = MasterKey::from_raw(raw).map_err(key_error)?;
    ring.add_key(key, key_caller(c)).map_err(key_error)
}

pub(crate) fn remove_key(
    ring: &keyring::Keyring,
    id: &KeyIdentifier,
    all_users: bool,
    c: &Caller,
) -> Result<KeyRemoval> {
    let scope = if all_users {
        RemovalScope::AllUsers
    } else {
        RemovalScope::OwnClaim
    };
    let r = ring
        .remove_key(id, key_caller(c), scope)
        .map_err(key_error)?;
    Ok(KeyRemoval {
        other_users: r.other_users,
        files_busy: r.files_busy,
    })
}

pub(crate) fn key_status(
    ring: &keyring::Keyring,
    id: &KeyIdentifier,
    c: &Caller,
) -> KeyStatusReport {
    let s = ring.key_status(id, key_caller(c));
    KeyStatusReport {
        state: match s.state {
            KeyState::Present => KeyPresence::Present,
            KeyState::IncompletelyRemoved => KeyPresence::IncompletelyRemoved,
            KeyState::Absent => KeyPresence::Absent,
        },
        user_count: s.user_count,
        added_by_self: s.added_by_self,
    }
}
