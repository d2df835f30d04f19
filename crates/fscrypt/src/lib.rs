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
//!
//! # Modes
//!
//! | Linux mode | number | policies (decode, validate) | encryption here |
//! |---|---|---|---|
//! | AES-256-XTS (contents) | 1 | yes | yes: [`xts`], data units of 512 to 4096 bytes, every IV flag |
//! | AES-256-CTS (names) | 4 | yes | yes: [`cts`], CS3 as Linux (last two blocks always swapped) |
//! | AES-128-CBC-ESSIV / AES-128-CTS | 5 / 6 | yes | no: decoded and refused with `UnsupportedMode` |
//! | SM4-XTS / SM4-CTS | 7 / 8 | yes | no |
//! | Adiantum | 9 | yes | no |
//! | AES-256-HCTR2 (names) | 10 | yes | yes: [`hctr2`], with its own POLYVAL |
//!
//! AES-128-CTS names (mode 6) are implemented in [`cts`] for completeness, but only as the
//! partner of ESSIV contents, which is not. Policies with DIRECT_KEY, IV_INO_LBLK_64 and
//! IV_INO_LBLK_32 are implemented for Linux's per-inode scheme ([`contents::LinuxFileContents`],
//! checked against the kernel) but refused for cowcrypt's per-extent contents, exactly as the
//! btrfs extent-encryption series refuses them.
//!
//! # Crates, and why
//!
//! Contents run on aws-lc's AES-256-XTS (VAES/AVX-512 assembly) through the one-file FFI crate
//! `xts-sys`, because it is the fastest implementation on this hardware: the pure-Rust engine
//! beside it (the `aes` crate's block cipher with our own XTS tweak walk) reaches about half of
//! aws-lc's throughput, and `aes` + `xts-mode` about a twentieth; see [`xts`] for the figures and
//! `benches/xts.rs`, which measures them against `openssl speed` in the same run. HKDF-SHA512 is
//! RustCrypto's `hkdf` + `sha2` (the PRK is extracted once per master key); names use the `aes`
//! block cipher with our own CBC-CTS and HCTR2, both checked against RFC 3962, the HCTR2
//! reference vectors and the kernel.
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
pub use master_key::{KeyIdentifier, MAX_KEY_SIZE, MasterKey};
pub use policy::{ContentsMode, FilenamesMode, Padding, PolicyV2};
