//! The IV of a data unit, filename or symlink target: Linux's `union fscrypt_iv` (32 bytes, of
//! which a mode uses its `iv_size`). Each policy flag forms it differently; with per-extent
//! encryption the index is the data unit's position inside its extent, never in the file.

/// Linux's 32-byte IV buffer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FscryptIv(pub [u8; 32]);

impl FscryptIv {
    /// Default v2 policy (per-file or per-extent key): le64(index), rest zero.
    pub fn from_index(index: u64) -> Self {
        let mut iv = [0u8; 32];
        iv[..8].copy_from_slice(&index.to_le_bytes());
        FscryptIv(iv)
    }

    /// DIRECT_KEY: le64(index) then the file's 16-byte nonce.
    pub fn direct_key(index: u64, nonce: &[u8; 16]) -> Self {
        let mut iv = Self::from_index(index);
        iv.0[8..24].copy_from_slice(nonce);
        iv
    }

    /// IV_INO_LBLK_64: le32(index) then le32(inode number).
    pub fn ino_lblk_64(index: u32, ino: u32) -> Self {
        let mut iv = [0u8; 32];
        iv[..4].copy_from_slice(&index.to_le_bytes());
        iv[4..8].copy_from_slice(&ino.to_le_bytes());
        FscryptIv(iv)
    }

    /// IV_INO_LBLK_32: le32((hashed inode + index) mod 2^32), rest zero.
    pub fn ino_lblk_32(hashed_ino: u32, index: u32) -> Self {
        let mut iv = [0u8; 32];
        iv[..4].copy_from_slice(&hashed_ino.wrapping_add(index).to_le_bytes());
        FscryptIv(iv)
    }

    /// The first 16 bytes, the tweak of 16-byte-IV modes (XTS, CBC, CTS).
    pub fn first16(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out.copy_from_slice(&self.0[..16]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        assert_eq!(FscryptIv::from_index(0x0102).0[..3], [2, 1, 0]);
        let iv = FscryptIv::ino_lblk_64(0, 12);
        assert_eq!(iv.0[..8], [0, 0, 0, 0, 12, 0, 0, 0]);
        let iv = FscryptIv::ino_lblk_32(u32::MAX, 2);
        assert_eq!(iv.0[..8], [1, 0, 0, 0, 0, 0, 0, 0]);
        let iv = FscryptIv::direct_key(1, &[7; 16]);
        assert_eq!(iv.0[8..24], [7; 16]);
        assert_eq!(iv.0[24..], [0; 8]);
    }
}
