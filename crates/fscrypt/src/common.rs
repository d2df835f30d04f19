//! What inode and extent crypt state share: the policy in force and a pin on its master key.
//! Holding a [`CryptCommon`] keeps the master key usable (the keyring counts it as an open
//! user), which is how open files keep working while their key is being removed.

use crate::error::{Error, Result};
use crate::keyring::UnlockedKey;
use crate::policy::PolicyV2;

/// The policy of an inode or extent, with a pin on the master key it names.
#[derive(Clone, Debug)]
pub struct CryptCommon {
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
        Ok(CryptCommon { policy, key })
    }

    /// The policy.
    pub fn policy(&self) -> &PolicyV2 {
        &self.policy
    }

    /// The pinned master key.
    pub fn key(&self) -> &UnlockedKey {
        &self.key
    }
}
