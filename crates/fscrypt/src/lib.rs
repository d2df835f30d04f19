//! All of cowcrypt's cryptography, byte-compatible with Linux fscrypt wherever Linux defines the
//! result, and doing no I/O.
//!
//! One module per concern, named as in Linux's `fs/crypto/`:
//!
//! | module | owns |
//! |---|---|
//! | [`policy`] | v2 policies, modes, flags, Linux's validity rules |
//! | [`context`] | the 40-byte v2 inode context |
//! | [`master_key`], [`hkdf`] | master keys, identifiers, HKDF-SHA512 subkeys |
//! | [`keysetup`] | which subkey a policy, inode or extent uses |
//! | [`iv`] | IVs for each policy flag |
//! | [`xts`], [`contents`] | AES-256-XTS and data-unit encryption |
//! | [`cts`], [`hctr2`], [`fname`], [`nokey`], [`symlink`] | names and symlink targets |
//! | [`extent`], [`inode`], [`common`] | per-extent and per-inode crypt state |
//! | [`keyring`] | one filesystem's master keys, claims and removal states |
//!
//! Secrets live in [`secret`] types, which zeroize on drop and never print.
#![forbid(unsafe_code)]

pub mod common;
pub mod contents;
pub mod context;
pub mod cts;
pub mod error;
pub mod extent;
pub mod fname;
pub mod hctr2;
pub mod hkdf;
pub mod inode;
pub mod iv;
pub mod keyring;
pub mod keysetup;
pub mod master_key;
pub mod nokey;
pub mod policy;
pub mod secret;
pub mod symlink;
pub mod xts;

pub use error::{Error, Result};
pub use master_key::{KeyIdentifier, MasterKey};
pub use policy::{ContentsMode, FilenamesMode, Padding, PolicyV2};
