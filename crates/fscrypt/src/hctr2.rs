//! AES-256-HCTR2, the wide-block filenames mode 10 (Linux `hctr2(aes)`), built over the raw AES
//! block function with its own POLYVAL.
//!
//! HCTR2 (eprint 2021/1441) encrypts a message `P = M || N` (`M` the first 16 bytes) under a tweak
//! `T`, here the 32-byte fscrypt IV:
//!
//! * `hbar = AES_K(0^16)`, `L = AES_K(le128(1))`;
//! * `H(T, X) = POLYVAL(hbar, le128(2*8*|T| + 2 + [|X| % 16 != 0]) || pad(T) || pad(X || 0x01))`,
//!   where the `0x01` byte is appended only when `X` is not a whole number of blocks;
//! * `MM = M ^ H(T, N)`, `UU = AES_K(MM)`, `S = MM ^ UU ^ L`;
//! * `V = N ^ XCTR_K(S)`, XCTR block `i` (from 1) being `AES_K(S ^ le128(i))`;
//! * `U = UU ^ H(T, V)`; the output is `U || V`.
//!
//! Every ciphertext byte depends on every plaintext byte, so names sharing a prefix do not share
//! a ciphertext prefix (unlike CBC-CTS).

use aes::Aes256;
use aes::cipher::KeyInit;
use zeroize::Zeroize;

use crate::cts::BlockCipher16;
use crate::error::{Error, Result};

const BLOCK: usize = 16;

/// POLYVAL's field GF(2^128) modulo x^128 + x^127 + x^126 + x^121 + 1, elements stored as
/// little-endian u128s (bit i = coefficient of x^i). Multiplication is branch-free.
mod gf {
    /// The reduction of x^128: x^127 + x^126 + x^121 + 1.
    const R: u128 = (1 << 127) | (1 << 126) | (1 << 121) | 1;

    /// a * x.
    fn mul_x(a: u128) -> u128 {
        let carry = 0u128.wrapping_sub(a >> 127);
        (a << 1) ^ (R & carry)
    }

    /// a * x^-1.
    fn div_x(a: u128) -> u128 {
        let low = 0u128.wrapping_sub(a & 1);
        // Adding the modulus when a is odd makes it divisible by x; its x^128 term becomes x^127.
        ((a ^ (R & low)) >> 1) | ((1u128 << 127) & low)
    }

    /// a * b in the field.
    pub(super) fn mul(a: u128, b: u128) -> u128 {
        let mut acc = 0u128;
        let mut a = a;
        for i in 0..128 {
            acc ^= a & 0u128.wrapping_sub((b >> i) & 1);
            a = mul_x(a);
        }
        acc
    }

    /// a * x^-128, turning POLYVAL's `dot(a, b) = a*b*x^-128` into a plain product.
    pub(super) fn div_x128(mut a: u128) -> u128 {
        for _ in 0..128 {
            a = div_x(a);
        }
        a
    }
}

/// A POLYVAL accumulator. The key is stored premultiplied by x^-128.
struct Polyval {
    key: u128,
    acc: u128,
}

impl Polyval {
    fn new(h: &[u8; 16]) -> Self {
        Polyval {
            key: gf::div_x128(u128::from_le_bytes(*h)),
            acc: 0,
        }
    }

    fn block(&mut self, block: &[u8; 16]) {
        self.acc = gf::mul(self.acc ^ u128::from_le_bytes(*block), self.key);
    }

    /// Absorbs `data`, whose last partial block (if any) is zero-padded.
    fn update_padded(&mut self, data: &[u8]) {
        let mut chunks = data.chunks_exact(BLOCK);
        for chunk in &mut chunks {
            let mut b = [0u8; 16];
            b.copy_from_slice(chunk);
            self.block(&b);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 16];
            b[..rest.len()].copy_from_slice(rest);
            self.block(&b);
        }
    }

    fn digest(&self) -> [u8; 16] {
        self.acc.to_le_bytes()
    }
}

impl Drop for Polyval {
    fn drop(&mut self) {
        self.key.zeroize();
        self.acc.zeroize();
    }
}

/// One HCTR2 key: AES-256 plus the derived hash key and L.
struct Hctr2Key {
    aes: Aes256,
    hbar: [u8; 16],
    l: [u8; 16],
}

impl Hctr2Key {
    fn new(key: &[u8; 32]) -> Self {
        let aes = Aes256::new(key.into());
        let mut hbar = [0u8; 16];
        aes.encrypt16(&mut hbar);
        let mut l = [0u8; 16];
        l[0] = 1;
        aes.encrypt16(&mut l);
        Hctr2Key { aes, hbar, l }
    }

    /// POLYVAL state after the length block and the tweak, before the bulk data.
    fn hash_tweak(&self, tweak: &[u8], bulk_len: usize) -> Polyval {
        let partial = u128::from(!bulk_len.is_multiple_of(BLOCK));
        let len_block = (2 * 8 * tweak.len() as u128) + 2 + partial;
        let mut poly = Polyval::new(&self.hbar);
        poly.block(&len_block.to_le_bytes());
        poly.update_padded(tweak);
        poly
    }

    /// H(T, bulk), continuing from the tweak's state.
    fn hash_bulk(tweak_state: &Polyval, bulk: &[u8]) -> [u8; 16] {
        let mut poly = Polyval {
            key: tweak_state.key,
            acc: tweak_state.acc,
        };
        let whole = bulk.len() - bulk.len() % BLOCK;
        poly.update_padded(&bulk[..whole]);
        let rest = &bulk[whole..];
        if !rest.is_empty() {
            let mut b = [0u8; 16];
            b[..rest.len()].copy_from_slice(rest);
            b[rest.len()] = 1;
            poly.block(&b);
        }
        poly.digest()
    }

    /// XORs the XCTR keystream for seed `s` into `data`.
    fn xctr(&self, s: &[u8; 16], data: &mut [u8]) {
        for (i, chunk) in data.chunks_mut(BLOCK).enumerate() {
            let mut ks = *s;
            let counter = (i as u128 + 1).to_le_bytes();
            xor16(&mut ks, &counter);
            self.aes.encrypt16(&mut ks);
            for (d, k) in chunk.iter_mut().zip(ks) {
                *d ^= k;
            }
        }
    }

    fn crypt(&self, tweak: &[u8], data: &mut [u8], encrypt: bool) -> Result<()> {
        if data.len() < BLOCK {
            return Err(Error::invalid(
                "HCTR2 input",
                format!("{} bytes, at least {BLOCK} needed", data.len()),
            ));
        }
        let (head, bulk) = data.split_at_mut(BLOCK);
        let tweak_state = self.hash_tweak(tweak, bulk.len());
        let mut first = [0u8; 16];
        first.copy_from_slice(head);
        // Encryption hashes N before and V after the block cipher; decryption the reverse.
        let mut mm = first;
        xor16(&mut mm, &Self::hash_bulk(&tweak_state, bulk));
        let mut uu = mm;
        if encrypt {
            self.aes.encrypt16(&mut uu);
        } else {
            self.aes.decrypt16(&mut uu);
        }
        let mut s = mm;
        xor16(&mut s, &uu);
        xor16(&mut s, &self.l);
        self.xctr(&s, bulk);
        xor16(&mut uu, &Self::hash_bulk(&tweak_state, bulk));
        head.copy_from_slice(&uu);
        first.zeroize();
        mm.zeroize();
        s.zeroize();
        uu.zeroize();
        Ok(())
    }
}

impl Drop for Hctr2Key {
    fn drop(&mut self) {
        self.hbar.zeroize();
        self.l.zeroize();
    }
}

fn xor16(dst: &mut [u8; 16], src: &[u8; 16]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= s;
    }
}

/// Encrypts `data` (at least 16 bytes) in place with AES-256-HCTR2 under `tweak`.
pub fn encrypt(key: &[u8; 32], tweak: &[u8], data: &mut [u8]) -> Result<()> {
    Hctr2Key::new(key).crypt(tweak, data, true)
}

/// Decrypts `data` (at least 16 bytes) in place with AES-256-HCTR2 under `tweak`.
pub fn decrypt(key: &[u8; 32], tweak: &[u8], data: &mut [u8]) -> Result<()> {
    Hctr2Key::new(key).crypt(tweak, data, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(serde::Deserialize)]
    struct Kat {
        vectors: Vec<[String; 4]>,
    }

    #[test]
    fn polyval_rfc8452() {
        // RFC 8452 Appendix A: POLYVAL(H, X_1, X_2).
        let h: [u8; 16] = hex::decode("25629347589242761d31f826ba4b757b")
            .unwrap()
            .try_into()
            .unwrap();
        let mut p = Polyval::new(&h);
        p.update_padded(&hex::decode("4f4f95668c83dfb6401762bb2d01a262").unwrap());
        p.update_padded(&hex::decode("d1a24ddd2721d006bbe45f20d3c9f362").unwrap());
        assert_eq!(hex::encode(p.digest()), "f7a3b47b846119fae5b7866cf5e5b77e");
    }

    #[test]
    fn field_inverse_of_x() {
        for a in [1u128, 2, u128::MAX, 1 << 127, 0x1234_5678_9abc_def0] {
            let mut back = gf::div_x128(a);
            for _ in 0..128 {
                back = gf::mul(back, 2);
            }
            assert_eq!(back, a);
        }
    }

    #[test]
    fn google_kat_all_vectors() {
        let kat: Kat =
            serde_json::from_str(include_str!("../tests/data/hctr2_aes256_kat.json")).unwrap();
        assert!(kat.vectors.len() >= 7);
        for [key, tweak, pt, ct] in &kat.vectors {
            let key: [u8; 32] = hex::decode(key).unwrap().try_into().unwrap();
            let tweak = hex::decode(tweak).unwrap();
            let pt = hex::decode(pt).unwrap();
            let mut buf = pt.clone();
            encrypt(&key, &tweak, &mut buf).unwrap();
            assert_eq!(hex::encode(&buf), *ct, "encrypt, {} bytes", pt.len());
            decrypt(&key, &tweak, &mut buf).unwrap();
            assert_eq!(buf, pt, "decrypt, {} bytes", pt.len());
        }
    }

    #[test]
    fn short_input_is_rejected() {
        assert!(encrypt(&[0; 32], &[0; 32], &mut [0u8; 15]).is_err());
        assert!(decrypt(&[0; 32], &[0; 32], &mut []).is_err());
    }

    #[test]
    fn wide_block_diffusion() {
        // Changing the last byte changes the first block: HCTR2 is not a prefix-preserving mode.
        let mut a = [b'x'; 40];
        let mut b = a;
        b[39] = b'y';
        encrypt(&[5; 32], &[0; 32], &mut a).unwrap();
        encrypt(&[5; 32], &[0; 32], &mut b).unwrap();
        assert_ne!(a[..16], b[..16]);
    }

    proptest! {
        #[test]
        fn round_trip(key in any::<[u8; 32]>(), tweak in any::<[u8; 32]>(),
                      data in proptest::collection::vec(any::<u8>(), 16..300)) {
            let mut buf = data.clone();
            encrypt(&key, &tweak, &mut buf).unwrap();
            prop_assert_ne!(&buf, &data);
            decrypt(&key, &tweak, &mut buf).unwrap();
            prop_assert_eq!(buf, data);
        }
    }
}
