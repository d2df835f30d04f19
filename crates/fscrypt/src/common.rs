//! What inode and extent crypt state share: the policy in force and a pin on its master key.
//! Holding a [`CryptCommon`] keeps the master key usable (the keyring counts it as an open
//! user), which is how open files keep working while their key is being removed.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::keyring::UnlockedKey;
use crate::policy::PolicyV2;

/// The policy of an inode or extent, with a pin on the master key it names. Clones share the
/// one pin (it goes when the last clone does): an extent's crypt state made for every read
/// then costs a reference count, not a trip through the keyring's lock.
#[derive(Clone, Debug)]
pub struct CryptCommon(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    policy: PolicyV2,
    key: UnlockedKey,
}

impl CryptCommon {
    /// Pairs a policy with the unlocked master key it names.
    pub fn new(policy: PolicyV2, key: UnlockedKey) -> Result<Self> {
        if key.identifier() != *policy.master_key_identifier() {
            return Err(Error::invalid(
                "crypt state",
                "the unlocked key is not the policy's master key",
            ));
        }
        Ok(CryptCommon(Arc::new(Shared { policy, key })))
    }

    /// The policy.
    pub fn policy(&self) -> &PolicyV2 {
        &self.0.policy
    }

    /// The pinned master key.
    pub fn key(&self) -> &UnlockedKey {
        &self.0.key
    }
}
