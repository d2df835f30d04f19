//! The v2 inode encryption context (40 bytes): the policy an inode was created under plus its own
//! random nonce. Linux stores it in an xattr ("c", index 9); cowcrypt stores it as an inode item.

use crate::error::{Error, Result};
use crate::policy::{POLICY_V2, PolicyV2};

/// Size of a v2 inode context.
pub const CONTEXT_V2_SIZE: usize = 40;
/// Size of an inode or extent nonce.
pub const NONCE_SIZE: usize = 16;

/// A fresh nonce from the OS CSPRNG. Nonces must never repeat under one master key, so nothing
/// weaker than the OS generator is acceptable here.
pub fn random_nonce() -> Result<[u8; NONCE_SIZE]> {
    let mut nonce = [0u8; NONCE_SIZE];
    getrandom::fill(&mut nonce).map_err(|_| Error::Rng)?;
    Ok(nonce)
}

/// An inode's encryption context: policy fields and the inode's nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InodeContext {
    policy: PolicyV2,
    nonce: [u8; NONCE_SIZE],
}

impl InodeContext {
    /// A context for a new inode under `policy`, with a fresh random nonce.
    pub fn new_random(policy: PolicyV2) -> Result<Self> {
        Ok(InodeContext {
            policy,
            nonce: random_nonce()?,
        })
    }

    /// A context with a given nonce (for tests and for decoding).
    pub fn with_nonce(policy: PolicyV2, nonce: [u8; NONCE_SIZE]) -> Self {
        InodeContext { policy, nonce }
    }

    /// Decodes a stored context. As in Linux's `fscrypt_context_is_valid`, only exactly 40 bytes
    /// with version 2 are accepted; the policy fields are then checked like a policy.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != CONTEXT_V2_SIZE {
            return Err(Error::BadLength {
                what: "inode context",
                got: bytes.len(),
                expected: CONTEXT_V2_SIZE,
            });
        }
        if bytes[0] != POLICY_V2 {
            return Err(Error::invalid(
                "inode context",
                format!("version {}", bytes[0]),
            ));
        }
        let policy = PolicyV2::decode_fields(&bytes[..24])?;
        let mut nonce = [0u8; NONCE_SIZE];
        nonce.copy_from_slice(&bytes[24..40]);
        Ok(InodeContext { policy, nonce })
    }

    /// The 40-byte encoding: the 24 policy bytes then the nonce.
    pub fn encode(&self) -> [u8; CONTEXT_V2_SIZE] {
        let mut out = [0u8; CONTEXT_V2_SIZE];
        out[..24].copy_from_slice(&self.policy.encode());
        out[24..].copy_from_slice(&self.nonce);
        out
    }

    /// The policy the inode was created under.
    pub fn policy(&self) -> &PolicyV2 {
        &self.policy
    }

    /// The inode's nonce.
    pub fn nonce(&self) -> &[u8; NONCE_SIZE] {
        &self.nonce
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master_key::KeyIdentifier;
    use crate::policy::{ContentsMode, FilenamesMode};
    use proptest::prelude::*;

    fn policy() -> PolicyV2 {
        PolicyV2::new(
            ContentsMode::Aes256Xts,
            FilenamesMode::Aes256Cts,
            2,
            0,
            KeyIdentifier([0xaa; 16]),
        )
        .unwrap()
    }

    #[test]
    fn layout_matches_xfstests_dump() {
        // xfstests common/encrypt: v2 = 02 01 04 02 00 00 00 00 <id16> <nonce16>
        let ctx = InodeContext::with_nonce(policy(), [0x55; 16]);
        let bytes = ctx.encode();
        assert_eq!(&bytes[..8], &[2, 1, 4, 2, 0, 0, 0, 0]);
        assert_eq!(&bytes[8..24], &[0xaa; 16]);
        assert_eq!(&bytes[24..], &[0x55; 16]);
        assert_eq!(InodeContext::decode(&bytes).unwrap(), ctx);
    }

    #[test]
    fn rejects_bad_contexts() {
        let bytes = InodeContext::with_nonce(policy(), [1; 16]).encode();
        assert!(InodeContext::decode(&bytes[..39]).is_err());
        let mut v1 = bytes;
        v1[0] = 1;
        assert!(InodeContext::decode(&v1).is_err());
        let mut long = bytes.to_vec();
        long.push(0);
        assert!(InodeContext::decode(&long).is_err());
    }

    #[test]
    fn nonces_are_fresh() {
        let a = InodeContext::new_random(policy()).unwrap();
        let b = InodeContext::new_random(policy()).unwrap();
        assert_ne!(a.nonce(), b.nonce());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(ctx) = InodeContext::decode(&bytes) {
                prop_assert_eq!(&ctx.encode()[..], &bytes[..]);
            }
        }
    }
}
