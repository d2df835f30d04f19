//! AES-CBC with ciphertext stealing in the CS3 convention, Linux's `cts(cbc(aes))`: filenames
//! and symlink targets of the AES-256-CTS (4) and AES-128-CTS (6) modes.
//!
//! CS3 (the RFC 3962 Kerberos convention) always swaps the last two ciphertext blocks once the
//! input is longer than one block, even when its length is a multiple of 16. CS1 and CS2, which
//! many libraries implement, do not swap in that case and would produce names Linux cannot read,
//! so the mode is built here by hand over the raw AES block functions.
//!
//! Layout for `n > 16` bytes, with `off = 16 * floor((n - 1) / 16)` and `fb = n - off`:
//! CBC over the first `off` bytes gives `C_1 .. C_m`; then `E = AES(C_m ^ pad16(P_last))`; the
//! output is `C_1 .. C_{m-1} || E || C_m[..fb]`. Exactly 16 bytes is one plain CBC block.

use aes::cipher::{Array, BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use aes::{Aes128, Aes256};

use crate::error::{Error, Result};

/// The AES block size, which is also the shortest input CTS accepts.
pub const BLOCK_SIZE: usize = 16;

/// One AES key schedule seen as a 16-byte block permutation (shared with [`crate::hctr2`]).
pub(crate) trait BlockCipher16 {
    fn encrypt16(&self, block: &mut [u8; 16]);
    fn decrypt16(&self, block: &mut [u8; 16]);
}

impl<C> BlockCipher16 for C
where
    C: BlockCipherEncrypt
        + BlockCipherDecrypt
        + aes::cipher::BlockSizeUser<BlockSize = aes::cipher::consts::U16>,
{
    fn encrypt16(&self, block: &mut [u8; 16]) {
        let b: &mut Array<u8, _> = block.into();
        self.encrypt_block(b);
    }

    fn decrypt16(&self, block: &mut [u8; 16]) {
        let b: &mut Array<u8, _> = block.into();
        self.decrypt_block(b);
    }
}

/// Encrypts `data` (at least 16 bytes) in place with AES-256-CBC-CS3.
pub fn encrypt_aes256(key: &[u8; 32], iv: &[u8; 16], data: &mut [u8]) -> Result<()> {
    encrypt_with(&Aes256::new(key.into()), iv, data)
}

/// Decrypts `data` (at least 16 bytes) in place with AES-256-CBC-CS3.
pub fn decrypt_aes256(key: &[u8; 32], iv: &[u8; 16], data: &mut [u8]) -> Result<()> {
    decrypt_with(&Aes256::new(key.into()), iv, data)
}

/// Encrypts `data` (at least 16 bytes) in place with AES-128-CBC-CS3.
pub fn encrypt_aes128(key: &[u8; 16], iv: &[u8; 16], data: &mut [u8]) -> Result<()> {
    encrypt_with(&Aes128::new(key.into()), iv, data)
}

/// Decrypts `data` (at least 16 bytes) in place with AES-128-CBC-CS3.
pub fn decrypt_aes128(key: &[u8; 16], iv: &[u8; 16], data: &mut [u8]) -> Result<()> {
    decrypt_with(&Aes128::new(key.into()), iv, data)
}

fn check_len(data: &[u8]) -> Result<()> {
    if data.len() < BLOCK_SIZE {
        return Err(Error::invalid(
            "CBC-CTS input",
            format!("{} bytes, at least {BLOCK_SIZE} needed", data.len()),
        ));
    }
    Ok(())
}

/// Where the stolen tail starts: the offset of the last (possibly partial) block.
fn tail_offset(n: usize) -> usize {
    BLOCK_SIZE * ((n - 1) / BLOCK_SIZE)
}

fn xor_into(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= s;
    }
}

/// Plain CBC encryption of whole blocks in place.
fn cbc_encrypt(cipher: &impl BlockCipher16, iv: &[u8; 16], data: &mut [u8]) {
    let mut chain = *iv;
    for chunk in data.chunks_exact_mut(BLOCK_SIZE) {
        xor_into(&mut chain, chunk);
        cipher.encrypt16(&mut chain);
        chunk.copy_from_slice(&chain);
    }
}

/// Plain CBC decryption of whole blocks in place.
fn cbc_decrypt(cipher: &impl BlockCipher16, iv: &[u8; 16], data: &mut [u8]) {
    let mut chain = *iv;
    let mut block = [0u8; 16];
    for chunk in data.chunks_exact_mut(BLOCK_SIZE) {
        block.copy_from_slice(chunk);
        let next_chain = block;
        cipher.decrypt16(&mut block);
        xor_into(&mut block, &chain);
        chunk.copy_from_slice(&block);
        chain = next_chain;
    }
}

pub(crate) fn encrypt_with(
    cipher: &impl BlockCipher16,
    iv: &[u8; 16],
    data: &mut [u8],
) -> Result<()> {
    check_len(data)?;
    let n = data.len();
    if n == BLOCK_SIZE {
        cbc_encrypt(cipher, iv, data);
        return Ok(());
    }
    let off = tail_offset(n);
    let fb = n - off;
    cbc_encrypt(cipher, iv, &mut data[..off]);
    let mut last_full = [0u8; 16];
    last_full.copy_from_slice(&data[off - BLOCK_SIZE..off]);
    // E = AES(C_m ^ (P_last zero-padded)).
    let mut stolen = last_full;
    xor_into(&mut stolen[..fb], &data[off..]);
    cipher.encrypt16(&mut stolen);
    data[off - BLOCK_SIZE..off].copy_from_slice(&stolen);
    data[off..].copy_from_slice(&last_full[..fb]);
    Ok(())
}

pub(crate) fn decrypt_with(
    cipher: &impl BlockCipher16,
    iv: &[u8; 16],
    data: &mut [u8],
) -> Result<()> {
    check_len(data)?;
    let n = data.len();
    if n == BLOCK_SIZE {
        cbc_decrypt(cipher, iv, data);
        return Ok(());
    }
    let off = tail_offset(n);
    let fb = n - off;
    // D(E) = C_m ^ pad16(P_last). The padding is zero, so bytes fb.. of D(E) are C_m's own.
    let mut x = [0u8; 16];
    x.copy_from_slice(&data[off - BLOCK_SIZE..off]);
    cipher.decrypt16(&mut x);
    let mut last_full = x;
    last_full[..fb].copy_from_slice(&data[off..]);
    let mut tail = [0u8; 16];
    tail[..fb].copy_from_slice(&x[..fb]);
    xor_into(&mut tail[..fb], &last_full[..fb]);
    data[off - BLOCK_SIZE..off].copy_from_slice(&last_full);
    data[off..].copy_from_slice(&tail[..fb]);
    cbc_decrypt(cipher, iv, &mut data[..off]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const RFC3962_KEY: &[u8; 16] = b"chicken teriyaki";

    /// RFC 3962 Appendix B: every vector encrypts a prefix of this text with IV 0.
    const RFC3962_PLAINTEXT: &[u8; 64] =
        b"I would like the General Gau's Chicken, please, and wonton soup.";

    fn vectors() -> Vec<(usize, &'static str)> {
        vec![
            (17, "c6353568f2bf8cb4d8a580362da7ff7f97"),
            (
                31,
                "fc00783e0efdb2c1d445d4c8eff7ed2297687268d6ecccc0c07b25e25ecfe5",
            ),
            (
                32,
                "39312523a78662d5be7fcbcc98ebf5a897687268d6ecccc0c07b25e25ecfe584",
            ),
            (
                47,
                "97687268d6ecccc0c07b25e25ecfe584b3fffd940c16a18c1b5549d2f838029e\
                 39312523a78662d5be7fcbcc98ebf5",
            ),
            (
                48,
                "97687268d6ecccc0c07b25e25ecfe5849dad8bbb96c4cdc03bc103e1a194bbd8\
                 39312523a78662d5be7fcbcc98ebf5a8",
            ),
            (
                64,
                "97687268d6ecccc0c07b25e25ecfe58439312523a78662d5be7fcbcc98ebf5a8\
                 4807efe836ee89a526730dbc2f7bc8409dad8bbb96c4cdc03bc103e1a194bbd8",
            ),
        ]
    }

    #[test]
    fn rfc3962_vectors_both_ways() {
        let plaintext = RFC3962_PLAINTEXT;
        for (len, expected) in vectors() {
            let expected = hex::decode(expected).unwrap();
            assert_eq!(expected.len(), len, "vector length {len}");
            let mut buf = plaintext[..len].to_vec();
            encrypt_aes128(RFC3962_KEY, &[0; 16], &mut buf).unwrap();
            assert_eq!(hex::encode(&buf), hex::encode(&expected), "encrypt {len}");
            decrypt_aes128(RFC3962_KEY, &[0; 16], &mut buf).unwrap();
            assert_eq!(buf, plaintext[..len], "decrypt {len}");
        }
    }

    #[test]
    fn one_block_is_plain_cbc() {
        let key = [7u8; 32];
        let iv = [9u8; 16];
        let mut a = *b"exactly16bytes!!";
        encrypt_aes256(&key, &iv, &mut a).unwrap();
        let mut b = *b"exactly16bytes!!";
        xor_into(&mut b, &iv);
        Aes256::new((&key).into()).encrypt16(&mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn short_input_is_rejected() {
        let mut buf = [0u8; 15];
        assert!(matches!(
            encrypt_aes256(&[0; 32], &[0; 16], &mut buf),
            Err(Error::Invalid { .. })
        ));
        assert!(decrypt_aes128(&[0; 16], &[0; 16], &mut []).is_err());
    }

    #[test]
    fn iv_changes_output() {
        let mut a = [1u8; 40];
        let mut b = [1u8; 40];
        encrypt_aes256(&[3; 32], &[0; 16], &mut a).unwrap();
        encrypt_aes256(&[3; 32], &[1; 16], &mut b).unwrap();
        assert_ne!(a, b);
    }

    proptest! {
        #[test]
        fn round_trip(key in any::<[u8; 32]>(), iv in any::<[u8; 16]>(),
                      data in proptest::collection::vec(any::<u8>(), 16..300)) {
            let mut buf = data.clone();
            encrypt_aes256(&key, &iv, &mut buf).unwrap();
            prop_assert_ne!(&buf, &data);
            decrypt_aes256(&key, &iv, &mut buf).unwrap();
            prop_assert_eq!(buf, data);
        }
    }
}
