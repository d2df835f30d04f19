//! Which key encrypts what: every subkey Linux derives from a v2 master key, and the one the btrfs
//! v7 series adds for extents. Each function here is one HKDF-SHA512 expansion with a fixed context
//! byte (see [`crate::hkdf`]); the results are secrets that wipe themselves.

use siphasher::sip::SipHasher24;
use std::hash::Hasher;

use crate::context::NONCE_SIZE;
use crate::error::{Error, Result};
use crate::hkdf::{
    CONTEXT_DIRECT_KEY, CONTEXT_DIRHASH_KEY, CONTEXT_INODE_HASH_KEY, CONTEXT_IV_INO_LBLK_32_KEY,
    CONTEXT_IV_INO_LBLK_64_KEY, CONTEXT_PER_EXTENT_ENC_KEY, CONTEXT_PER_FILE_ENC_KEY,
    COWCRYPT_CONTEXT_EXTENT_MAC_KEY,
};
use crate::master_key::MasterKey;
use crate::policy::ModeInfo;
use crate::secret::{Secret, SecretVec};

/// Size of a filesystem UUID as fscrypt mixes it into per-mode keys.
pub const FS_UUID_SIZE: usize = 16;

/// A raw derived encryption key, as long as its mode's key size.
pub type RawKey = SecretVec;

/// Linux refuses to set up a file's key when the master key is weaker than the mode
/// (`fscrypt_valid_master_key_size`: v2 needs at least the mode's security strength).
fn check_strength(master: &MasterKey, mode: &ModeInfo) -> Result<()> {
    if master.raw_size() < mode.security_strength {
        return Err(Error::NoKey);
    }
    Ok(())
}

fn expand(master: &MasterKey, mode: &ModeInfo, context: u8, info: &[u8]) -> Result<RawKey> {
    check_strength(master, mode)?;
    let mut out = Secret::<64>::zeroed();
    let key = &mut out.expose_mut()[..mode.key_size];
    master.hkdf().expand(context, info, key);
    Ok(SecretVec::from_slice(key))
}

/// The per-file key of an inode (contents key of a regular file, filenames key of a directory
/// or symlink): HKDF context 2 over the inode's nonce.
pub fn per_file_key(
    master: &MasterKey,
    mode: &ModeInfo,
    nonce: &[u8; NONCE_SIZE],
) -> Result<RawKey> {
    expand(master, mode, CONTEXT_PER_FILE_ENC_KEY, nonce)
}

/// The key of one extent (btrfs v7, cowcrypt): HKDF context 9 over the extent's nonce.
pub fn per_extent_key(
    master: &MasterKey,
    mode: &ModeInfo,
    nonce: &[u8; NONCE_SIZE],
) -> Result<RawKey> {
    expand(master, mode, CONTEXT_PER_EXTENT_ENC_KEY, nonce)
}

/// Size of an extent's MAC key (an AES-256-GMAC key).
pub const EXTENT_MAC_KEY_SIZE: usize = 32;

/// The MAC key of one authenticated extent (cowcrypt's own, not Linux's): HKDF-SHA512 with the
/// `"cowcrypt"` prefix, context 1, over the extent's nonce. A key separate from the contents key,
/// so the MAC and the cipher never share key material.
pub fn extent_mac_key(
    master: &MasterKey,
    nonce: &[u8; NONCE_SIZE],
) -> Result<Secret<EXTENT_MAC_KEY_SIZE>> {
    // The same strength rule as AES-256-XTS: a 32-byte security strength.
    if master.raw_size() < 32 {
        return Err(Error::NoKey);
    }
    let mut out = Secret::<EXTENT_MAC_KEY_SIZE>::zeroed();
    master
        .hkdf()
        .expand_cowcrypt(COWCRYPT_CONTEXT_EXTENT_MAC_KEY, nonce, out.expose_mut());
    Ok(out)
}

/// The DIRECT_KEY per-mode key: HKDF context 3 over the mode number.
pub fn direct_key(master: &MasterKey, mode: &ModeInfo) -> Result<RawKey> {
    expand(master, mode, CONTEXT_DIRECT_KEY, &[mode.number])
}

fn mode_and_uuid(mode: &ModeInfo, fs_uuid: &[u8; FS_UUID_SIZE]) -> [u8; 1 + FS_UUID_SIZE] {
    let mut info = [0u8; 1 + FS_UUID_SIZE];
    info[0] = mode.number;
    info[1..].copy_from_slice(fs_uuid);
    info
}

/// The IV_INO_LBLK_64 key of a mode on one filesystem: HKDF context 4 over mode || UUID.
pub fn ino_lblk_64_key(
    master: &MasterKey,
    mode: &ModeInfo,
    fs_uuid: &[u8; FS_UUID_SIZE],
) -> Result<RawKey> {
    expand(
        master,
        mode,
        CONTEXT_IV_INO_LBLK_64_KEY,
        &mode_and_uuid(mode, fs_uuid),
    )
}

/// The IV_INO_LBLK_32 key of a mode on one filesystem: HKDF context 6 over mode || UUID.
pub fn ino_lblk_32_key(
    master: &MasterKey,
    mode: &ModeInfo,
    fs_uuid: &[u8; FS_UUID_SIZE],
) -> Result<RawKey> {
    expand(
        master,
        mode,
        CONTEXT_IV_INO_LBLK_32_KEY,
        &mode_and_uuid(mode, fs_uuid),
    )
}

/// A SipHash-2-4 key. Linux reads the 16 derived bytes as two little-endian words.
#[derive(Clone)]
pub struct SipHashKey(Secret<16>);

impl SipHashKey {
    fn derive(master: &MasterKey, context: u8, info: &[u8]) -> Self {
        let mut key = Secret::<16>::zeroed();
        master.hkdf().expand(context, info, key.expose_mut());
        SipHashKey(key)
    }

    fn hasher(&self) -> SipHasher24 {
        let k = self.0.expose();
        let mut k0 = [0u8; 8];
        let mut k1 = [0u8; 8];
        k0.copy_from_slice(&k[..8]);
        k1.copy_from_slice(&k[8..]);
        SipHasher24::new_with_keys(u64::from_le_bytes(k0), u64::from_le_bytes(k1))
    }

    /// SipHash-2-4 of `data` under this key.
    pub fn hash(&self, data: &[u8]) -> u64 {
        let mut h = self.hasher();
        h.write(data);
        h.finish()
    }
}

impl std::fmt::Debug for SipHashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SipHashKey(redacted)")
    }
}

/// The key that hashes inode numbers for IV_INO_LBLK_32: HKDF context 7, no info.
pub fn inode_hash_key(master: &MasterKey) -> SipHashKey {
    SipHashKey::derive(master, CONTEXT_INODE_HASH_KEY, &[])
}

/// Linux's `hashed_ino`: the low 32 bits of SipHash-2-4 over the little-endian inode number.
pub fn hashed_ino(key: &SipHashKey, ino: u64) -> u32 {
    key.hash(&ino.to_le_bytes()) as u32
}

/// The dirhash key of a casefolded encrypted directory: HKDF context 5 over its nonce.
pub fn dirhash_key(master: &MasterKey, dir_nonce: &[u8; NONCE_SIZE]) -> SipHashKey {
    SipHashKey::derive(master, CONTEXT_DIRHASH_KEY, dir_nonce)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::ContentsMode;

    fn mk() -> MasterKey {
        let raw: Vec<u8> = (1..=64).collect();
        MasterKey::from_raw(&raw).unwrap()
    }

    const NONCE: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
    const UUID: [u8; 16] = [
        0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e,
        0x1f,
    ];

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    // Regression vectors of FSCRYPT.md section 10.2 (computed from RFC 5869 as Linux applies it).
    #[test]
    fn derived_keys_match_reference() {
        let xts = ContentsMode::Aes256Xts.info();
        assert_eq!(
            hex(per_file_key(&mk(), &xts, &NONCE).unwrap().expose()),
            "badfbae70512e3d28b99414b7887741d848f9283e09b7f59e8cbe78a2b2c05cb\
             9fee965f0eb2096b15b28c46cfc02a975bfbce9d34ade6ab28417d4e49df2470"
        );
        assert_eq!(
            hex(per_extent_key(&mk(), &xts, &NONCE).unwrap().expose()),
            "a8c26f6033618f12cb6107c62d18d50e2b35239dc6e7351e238894be44d523e1\
             86f908b107f42992cb3d964fda4ed7e280584a1e41c945c059f77b13461e84b4"
        );
        assert_eq!(
            hex(ino_lblk_64_key(&mk(), &xts, &UUID).unwrap().expose()),
            "3e9337eeb0990dd9b3b85bbbfbbbe6039e7dfc21b74e4e8802ef5889288b8ed2\
             1dfa67ee5d0af61dd0fbf1832b52763385c3368e9579dc269fc257a274e3df3d"
        );
        assert_eq!(
            hex(ino_lblk_32_key(&mk(), &xts, &UUID).unwrap().expose()),
            "5d0d5c84a31a25cacf2b368a6c038330b41cba9f79fb250efc7bb7d5bade8c8f\
             95f3bfd9c09ffad4700c9891810f9b5e1ede0338f158f84d3674887ac2dd048b"
        );
        let adiantum = ContentsMode::Adiantum.info();
        assert_eq!(
            hex(direct_key(&mk(), &adiantum).unwrap().expose()),
            "119cdfc84d03a78e39bf41d4f29f6d76db9636f6fce4da764411d8f77e31b19e"
        );
        let ih = inode_hash_key(&mk());
        assert_eq!(hex(ih.0.expose()), "47646c0b607504d327bc9a6569f9a372");
        assert_eq!(hashed_ino(&ih, 12), 0xb1d67186);
        let dh = dirhash_key(&mk(), &NONCE);
        assert_eq!(hex(dh.0.expose()), "56a94d5d52f8532a98e25757f4979543");
        assert_eq!(dh.hash(b"hello"), 0x604c4f9cfbffdb49);
    }

    #[test]
    fn siphash_paper_vector() {
        // SipHash-2-4 paper: key 00..0f, message 00..0e -> a129ca6149be45e5.
        let key = SipHashKey(Secret::from_slice(&NONCE).unwrap());
        let msg: Vec<u8> = (0..15).collect();
        assert_eq!(key.hash(&msg), 0xa129ca6149be45e5);
    }

    #[test]
    fn weak_master_key_is_refused() {
        let short = MasterKey::from_raw(&[7; 16]).unwrap();
        let xts = ContentsMode::Aes256Xts.info();
        assert_eq!(
            per_file_key(&short, &xts, &NONCE).unwrap_err(),
            Error::NoKey
        );
        let ok = MasterKey::from_raw(&[7; 32]).unwrap();
        assert_eq!(per_file_key(&ok, &xts, &NONCE).unwrap().expose().len(), 64);
    }
}
