//! AES-256-XTS for file contents, as Linux fscrypt uses it (FSCRYPT_MODE_AES_256_XTS): a 64-byte
//! key whose first half encrypts the data and whose second half encrypts the tweak, one 16-byte
//! IV per data unit, and data units that are always whole multiples of 16 bytes, so ciphertext
//! stealing never occurs.
//!
//! # Implementation: aws-lc, with a pure-Rust engine beside it
//!
//! [`Aes256Xts::new`] runs on aws-lc's `EVP_aes_256_xts` (through the tiny `xts-sys` crate,
//! which holds the only `unsafe` FFI so that this crate stays `forbid(unsafe_code)`), because
//! its VAES/AVX-512 assembly is about twice as fast as the best pure-Rust XTS here. Measured by
//! `cargo bench -p cowcrypt-fscrypt --bench xts` on this machine (AMD EPYC with AES-NI, VAES,
//! AVX-512; single core; 4 KiB data units; GB/s, several runs on a shared 2-core machine):
//!
//! | implementation | one unit per call | 32 units per call |
//! |---|---|---|
//! | this module on aws-lc | 11.8-12.3 | 11.9-12.1 |
//! | aws-lc `EVP_aes_256_xts` called directly (reference, same work) | 12.1-12.7 | 11.9-12.1 |
//! | this module's pure-Rust engine (`aes` 0.9 + own XTS walk) | 5.1-6.4 | 6.8-8.1 |
//! | `openssl speed -evp aes-256-xts -bytes 4096` (system OpenSSL 3.0) | 5.8-6.8 | |
//! | `aes` 0.9 AES-256 ECB alone, 4 KiB per call | 5.9-6.9 | |
//! | `aes` 0.9 + `xts-mode` 0.6 (CRATES.md) | 0.68 | |
//!
//! So on aws-lc this module runs at 96-100% of the fastest implementation measured in the same
//! run (the rest is two atomic operations per call, see `xts-sys`), while the best pure-Rust
//! engine reaches about half of it.
//!
//! The pure-Rust engine matches or beats the `aes` crate's own ECB over the same data: it runs the
//! XTS walk inside the crate's backend closure (so it is compiled with VAES/AVX-512, chosen at run
//! time, no RUSTFLAGS needed), computes the tweaks as eight independent x^8 chains that vectorise,
//! and hands the block cipher 64 blocks at a time. What remains is the `aes` crate's VAES-512
//! loop itself and a fixed cost of about 75 ns per call (one-block calls such as the tweak
//! encryption cost that much), so it cannot meet the goal of 95% of the fastest; aws-lc does.
//!
//! The pure-Rust engine stays: it is tested against the same vectors, [`Aes256Xts::new`] falls
//! back to it for keys aws-lc refuses (equal halves, which HKDF output never has in practice) or
//! if aws-lc fails to allocate, and building without the default `aws-lc` feature uses it alone.
//! A new extent costs one HKDF expansion (1.6-2.0 M/s from HMAC kept keyed with the PRK) plus
//! key setup (6.1-7.4 M/s on aws-lc, which expands only the encryption schedule and leaves the
//! decryption one to its first use; 7.6-9.4 M/s pure Rust): 1.4-1.5 M new extent keys per
//! second, where the expansion dominates. Through `ExtentCryptInfo::new_extent` (fresh nonce,
//! key derived uncached, pin shared) with one 4 KiB unit encrypted, 0.43-0.50 M/s.

use aes::cipher::array::{Array, ArraySize};
use aes::cipher::consts::U16;
use aes::cipher::{
    BlockCipherDecBackend, BlockCipherDecClosure, BlockCipherDecrypt, BlockCipherEncBackend,
    BlockCipherEncClosure, BlockCipherEncrypt, BlockSizeUser, KeyInit,
};
use aes::{Aes256, Aes256Enc, Block};

use crate::error::{Error, Result};
use crate::secret::Secret;

/// Size of an AES-256-XTS key: K1 (data) then K2 (tweak), 32 bytes each.
pub const KEY_SIZE: usize = 64;
/// Size of an XTS IV (the tweak before encryption).
pub const IV_SIZE: usize = 16;
/// The AES block size; every data unit is a whole number of blocks.
const BLOCK: usize = 16;
/// Smallest data unit `*_data_units` accepts (Linux uses 512..=4096).
const MIN_DU_SIZE: usize = 16;
/// Largest data unit `*_data_units` accepts.
const MAX_DU_SIZE: usize = 65536;
/// The longest single data unit: 2^20 blocks (IEEE 1619-2018).
const MAX_UNIT_LEN: usize = 16 << 20;
/// How many data units' tweaks are encrypted with K2 in one batch.
const TWEAK_BATCH: usize = 64;

/// An expanded AES-256-XTS key. The key schedules are wiped on drop (aws-lc cleanses what it
/// frees; the pure-Rust engine uses the `aes` crate's `zeroize` feature) and `Debug` prints none
/// of them. Clones share the aws-lc key schedules, which are only ever read.
#[derive(Clone)]
pub struct Aes256Xts {
    engine: Engine,
}

#[derive(Clone)]
enum Engine {
    #[cfg(feature = "aws-lc")]
    AwsLc(std::sync::Arc<xts_sys::Key>),
    Rust(Box<RustXts>),
}

impl std::fmt::Debug for Aes256Xts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Aes256Xts({}, redacted)", self.implementation())
    }
}

impl Aes256Xts {
    /// Expands a 64-byte XTS key (K1 = bytes 0..32, K2 = bytes 32..64) for the fastest engine.
    /// Keys aws-lc refuses (equal halves, which HKDF output never has in practice) use the
    /// pure-Rust engine, which gives the same results.
    pub fn new(key: &Secret<KEY_SIZE>) -> Self {
        #[cfg(feature = "aws-lc")]
        if let Ok(k) = xts_sys::Key::new(key.expose()) {
            return Aes256Xts {
                engine: Engine::AwsLc(std::sync::Arc::new(k)),
            };
        }
        Self::new_pure_rust(key)
    }

    /// Expands a key for the pure-Rust engine only (for comparison and tests; [`Self::new`]
    /// picks the faster one).
    pub fn new_pure_rust(key: &Secret<KEY_SIZE>) -> Self {
        Aes256Xts {
            engine: Engine::Rust(Box::new(RustXts::new(key))),
        }
    }

    /// Expands a key given as a byte slice, which must be exactly 64 bytes.
    pub fn from_bytes(key: &[u8]) -> Result<Self> {
        let key = Secret::<KEY_SIZE>::from_slice(key).ok_or(Error::BadLength {
            what: "AES-256-XTS key",
            got: key.len(),
            expected: KEY_SIZE,
        })?;
        Ok(Self::new(&key))
    }

    /// Which engine this key runs on: `"aws-lc"` or `"pure Rust"`.
    pub fn implementation(&self) -> &'static str {
        match self.engine {
            #[cfg(feature = "aws-lc")]
            Engine::AwsLc(_) => "aws-lc",
            Engine::Rust(_) => "pure Rust",
        }
    }

    /// Encrypts one data unit in place with a raw 16-byte IV. The length must be a non-zero
    /// multiple of 16, at most 16 MiB.
    pub fn encrypt(&self, iv: &[u8; IV_SIZE], data: &mut [u8]) -> Result<()> {
        check_unit_len(data.len())?;
        match &self.engine {
            #[cfg(feature = "aws-lc")]
            Engine::AwsLc(k) => k
                .encrypt_units(data.len(), data, |_| *iv)
                .map_err(aws_lc_error),
            Engine::Rust(k) => {
                k.encrypt(iv, data);
                Ok(())
            }
        }
    }

    /// Decrypts one data unit in place with a raw 16-byte IV. The length must be a non-zero
    /// multiple of 16, at most 16 MiB.
    pub fn decrypt(&self, iv: &[u8; IV_SIZE], data: &mut [u8]) -> Result<()> {
        check_unit_len(data.len())?;
        match &self.engine {
            #[cfg(feature = "aws-lc")]
            Engine::AwsLc(k) => k
                .decrypt_units(data.len(), data, |_| *iv)
                .map_err(aws_lc_error),
            Engine::Rust(k) => {
                k.decrypt(iv, data);
                Ok(())
            }
        }
    }

    /// Encrypts consecutive data units of `du_size` bytes in place; unit `i` uses the IV
    /// `le64(first_index + i) || 0^8` (fscrypt's default IV). `du_size` must be a power of two
    /// in 16..=65536 and `data.len()` a multiple of it (zero units is a no-op).
    pub fn encrypt_data_units(
        &self,
        first_index: u64,
        du_size: usize,
        data: &mut [u8],
    ) -> Result<()> {
        check_data_units(first_index, du_size, data.len())?;
        match &self.engine {
            #[cfg(feature = "aws-lc")]
            Engine::AwsLc(k) => k
                .encrypt_units(du_size, data, |i| default_iv(first_index, i))
                .map_err(aws_lc_error),
            Engine::Rust(k) => {
                k.encrypt_data_units(first_index, du_size, data);
                Ok(())
            }
        }
    }

    /// Decrypts consecutive data units; the inverse of [`Aes256Xts::encrypt_data_units`].
    pub fn decrypt_data_units(
        &self,
        first_index: u64,
        du_size: usize,
        data: &mut [u8],
    ) -> Result<()> {
        check_data_units(first_index, du_size, data.len())?;
        match &self.engine {
            #[cfg(feature = "aws-lc")]
            Engine::AwsLc(k) => k
                .decrypt_units(du_size, data, |i| default_iv(first_index, i))
                .map_err(aws_lc_error),
            Engine::Rust(k) => {
                k.decrypt_data_units(first_index, du_size, data);
                Ok(())
            }
        }
    }
}

/// fscrypt's default IV of unit `i` of a run starting at `first_index`: le64(index) || 0^8.
/// `check_data_units` proved that the index fits in 64 bits.
fn default_iv(first_index: u64, i: usize) -> [u8; IV_SIZE] {
    let mut iv = [0u8; IV_SIZE];
    iv[..8].copy_from_slice(&first_index.wrapping_add(i as u64).to_le_bytes());
    iv
}

/// aws-lc failing on lengths we already checked means allocation or an internal error.
#[cfg(feature = "aws-lc")]
fn aws_lc_error(e: xts_sys::XtsError) -> Error {
    Error::invalid("AES-256-XTS operation", e.to_string())
}

/// The pure-Rust engine: the `aes` crate's block cipher (runtime-dispatched AES-NI, VAES-256 or
/// VAES-512) driven by our own XTS walk.
#[derive(Clone)]
struct RustXts {
    /// K1: encrypts and decrypts the data blocks.
    data_key: Aes256,
    /// K2: only ever encrypts IVs into tweaks.
    tweak_key: Aes256Enc,
}

impl RustXts {
    fn new(key: &Secret<KEY_SIZE>) -> Self {
        let (halves, _) = key.expose().as_chunks::<32>();
        // `halves` has exactly two elements: a 64-byte array in 32-byte chunks.
        let (k1, k2) = (&halves[0], &halves[1]);
        RustXts {
            data_key: Aes256::new(k1.into()),
            tweak_key: Aes256Enc::new(k2.into()),
        }
    }

    fn encrypt(&self, iv: &[u8; IV_SIZE], data: &mut [u8]) {
        let tweak = self.tweak_of(iv);
        let len = data.len();
        self.data_key.encrypt_with_backend(EncryptUnits {
            data,
            du_size: len,
            tweaks: std::slice::from_ref(&tweak),
        });
    }

    fn decrypt(&self, iv: &[u8; IV_SIZE], data: &mut [u8]) {
        let tweak = self.tweak_of(iv);
        let len = data.len();
        self.data_key.decrypt_with_backend(DecryptUnits {
            data,
            du_size: len,
            tweaks: std::slice::from_ref(&tweak),
        });
    }

    fn encrypt_data_units(&self, first_index: u64, du_size: usize, data: &mut [u8]) {
        self.for_unit_batches(first_index, du_size, data, |key, data, tweaks| {
            key.encrypt_with_backend(EncryptUnits {
                data,
                du_size,
                tweaks,
            })
        });
    }

    fn decrypt_data_units(&self, first_index: u64, du_size: usize, data: &mut [u8]) {
        self.for_unit_batches(first_index, du_size, data, |key, data, tweaks| {
            key.decrypt_with_backend(DecryptUnits {
                data,
                du_size,
                tweaks,
            })
        });
    }

    /// T = AES-K2(IV).
    fn tweak_of(&self, iv: &[u8; IV_SIZE]) -> Block {
        let mut tweak = Block::from(*iv);
        self.tweak_key.encrypt_block(&mut tweak);
        tweak
    }

    /// Splits `data` into batches of up to [`TWEAK_BATCH`] data units, encrypts the batch's IVs
    /// into tweaks with one K2 call, and hands each batch to `run` with K1.
    fn for_unit_batches(
        &self,
        first_index: u64,
        du_size: usize,
        data: &mut [u8],
        mut run: impl FnMut(&Aes256, &mut [u8], &[Block]),
    ) {
        let mut tweaks = [Block::default(); TWEAK_BATCH];
        for (b, batch) in data.chunks_mut(du_size * TWEAK_BATCH).enumerate() {
            let units = batch.len() / du_size;
            for (i, tweak) in tweaks[..units].iter_mut().enumerate() {
                *tweak = Block::from(default_iv(first_index, b * TWEAK_BATCH + i));
            }
            self.tweak_key.encrypt_blocks(&mut tweaks[..units]);
            run(&self.data_key, batch, &tweaks[..units]);
        }
    }
}

/// A single data unit must be a non-zero multiple of the AES block size (no stealing) and at
/// most 2^20 blocks, IEEE 1619-2018's limit, which aws-lc enforces.
fn check_unit_len(len: usize) -> Result<()> {
    if len == 0 || !len.is_multiple_of(BLOCK) || len > MAX_UNIT_LEN {
        return Err(Error::invalid(
            "XTS data unit",
            format!("length {len} is not a non-zero multiple of {BLOCK} up to {MAX_UNIT_LEN}"),
        ));
    }
    Ok(())
}

/// Checks a run of data units: the size, the total length, and that every index fits in 64 bits.
fn check_data_units(first_index: u64, du_size: usize, len: usize) -> Result<()> {
    if !du_size.is_power_of_two() || !(MIN_DU_SIZE..=MAX_DU_SIZE).contains(&du_size) {
        return Err(Error::invalid(
            "data unit size",
            format!("{du_size} is not a power of two in {MIN_DU_SIZE}..={MAX_DU_SIZE}"),
        ));
    }
    if !len.is_multiple_of(du_size) {
        return Err(Error::invalid(
            "XTS data",
            format!("length {len} is not a multiple of the data unit size {du_size}"),
        ));
    }
    let units = (len / du_size) as u64;
    if units > 0 && first_index.checked_add(units - 1).is_none() {
        return Err(Error::invalid(
            "data unit index",
            format!("{units} units from index {first_index} overflow 64 bits"),
        ));
    }
    Ok(())
}

/// T·x in GF(2^128), IEEE 1619's little-endian convention: shift left, fold the carry back
/// in as x^7 + x^2 + x + 1 (0x87).
#[inline(always)]
fn mul_x(t: u128) -> u128 {
    (t << 1) ^ (0x87 & 0u128.wrapping_sub(t >> 127))
}

/// Fills `tweaks` with t, t·x, t·x^2, ... (as little-endian blocks) and returns the tweak that
/// follows them.
///
/// A serial chain of doublings would dominate the cost (AES itself runs at several bytes per
/// cycle with VAES), so the tweaks are computed as eight independent chains: lane l holds
/// t·x^(8g + l) and every step multiplies all lanes by x^8. The lanes are kept as separate
/// low and high 64-bit halves so that each step is plain element-wise arithmetic on `[u64; 8]`,
/// which the compiler turns into single AVX-512 (or narrower) vector instructions.
#[inline(always)]
fn fill_tweaks(tweaks: &mut [Block], t: u128) -> u128 {
    let mut lo = [0u64; 8];
    let mut hi = [0u64; 8];
    let mut cur = t;
    for l in 0..8 {
        lo[l] = cur as u64;
        hi[l] = (cur >> 64) as u64;
        cur = mul_x(cur);
    }
    for group in tweaks.chunks_mut(8) {
        for (l, block) in group.iter_mut().enumerate() {
            let bytes: &mut [u8; 16] = block.as_mut();
            bytes[..8].copy_from_slice(&lo[l].to_le_bytes());
            bytes[8..].copy_from_slice(&hi[l].to_le_bytes());
        }
        // Multiply every lane by x^8: the top byte b of each tweak falls off and comes back
        // as b·(x^7 + x^2 + x + 1), of degree at most 14, so one fold is a full reduction.
        for l in 0..8 {
            let top = hi[l] >> 56;
            hi[l] = (hi[l] << 8) | (lo[l] >> 56);
            lo[l] = (lo[l] << 8) ^ top ^ (top << 1) ^ (top << 2) ^ (top << 7);
        }
    }
    match tweaks.last() {
        Some(last) => mul_x(u128::from_le_bytes((*last).into())),
        None => t,
    }
}

/// XORs each block with its tweak, as flat bytes so that it vectorises to full-width XORs.
#[inline(always)]
fn xor_tweaks(blocks: &mut [Block], tweaks: &[Block]) {
    let data = Block::slice_as_flattened_mut(blocks);
    let tweaks = Block::slice_as_flattened(tweaks);
    for (d, t) in data.iter_mut().zip(tweaks) {
        *d ^= t;
    }
}

/// The XTS walk shared by both directions, run inside the AES backend's closure so that it is
/// compiled with the backend's target features (VAES/AVX-512 where the CPU has them): for each
/// data unit, per batch of N blocks, compute N tweaks, XOR, run the block cipher over the whole
/// batch, XOR again. `par` takes a full batch, `tail` fewer than N blocks.
#[inline(always)]
fn crypt_units<N: ArraySize>(
    data: &mut [u8],
    du_size: usize,
    first_tweaks: &[Block],
    mut par: impl FnMut(&mut Array<Block, N>),
    mut tail: impl FnMut(&mut [Block]),
) {
    let (blocks, _) = Block::slice_as_chunks_mut(data);
    let mut tweaks: Array<Block, N> = Array::default();
    for (unit, first) in blocks.chunks_exact_mut(du_size / BLOCK).zip(first_tweaks) {
        let mut t = u128::from_le_bytes((*first).into());
        let (chunks, rest) = Array::<Block, N>::slice_as_chunks_mut(unit);
        for chunk in chunks {
            t = fill_tweaks(&mut tweaks, t);
            xor_tweaks(chunk, &tweaks);
            par(chunk);
            xor_tweaks(chunk, &tweaks);
        }
        if !rest.is_empty() {
            let tweaks = &mut tweaks[..rest.len()];
            fill_tweaks(tweaks, t);
            xor_tweaks(rest, tweaks);
            tail(rest);
            xor_tweaks(rest, tweaks);
        }
    }
}

/// Encrypts whole data units with K1; `tweaks[i]` is AES-K2(IV) of unit i.
struct EncryptUnits<'a> {
    data: &'a mut [u8],
    du_size: usize,
    tweaks: &'a [Block],
}

impl BlockSizeUser for EncryptUnits<'_> {
    type BlockSize = U16;
}

impl BlockCipherEncClosure for EncryptUnits<'_> {
    #[inline(always)]
    fn call<B: BlockCipherEncBackend<BlockSize = U16>>(self, backend: &B) {
        crypt_units::<B::ParBlocksSize>(
            self.data,
            self.du_size,
            self.tweaks,
            |chunk| backend.encrypt_par_blocks_inplace(chunk),
            |rest| backend.encrypt_tail_blocks_inplace(rest),
        );
    }
}

/// Decrypts whole data units with K1; `tweaks[i]` is AES-K2(IV) of unit i.
struct DecryptUnits<'a> {
    data: &'a mut [u8],
    du_size: usize,
    tweaks: &'a [Block],
}

impl BlockSizeUser for DecryptUnits<'_> {
    type BlockSize = U16;
}

impl BlockCipherDecClosure for DecryptUnits<'_> {
    #[inline(always)]
    fn call<B: BlockCipherDecBackend<BlockSize = U16>>(self, backend: &B) {
        crypt_units::<B::ParBlocksSize>(
            self.data,
            self.du_size,
            self.tweaks,
            |chunk| backend.decrypt_par_blocks_inplace(chunk),
            |rest| backend.decrypt_tail_blocks_inplace(rest),
        );
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::hkdf::{CONTEXT_PER_EXTENT_ENC_KEY, CONTEXT_PER_FILE_ENC_KEY};
    use crate::master_key::MasterKey;

    /// The plain definition, one block and one doubling at a time, to check the batched walk.
    fn reference(key: &[u8; 64], iv: &[u8; 16], data: &mut [u8], encrypt: bool) {
        let k1 = Aes256::new(key[..32].try_into().unwrap());
        let k2 = Aes256::new(key[32..].try_into().unwrap());
        let mut t = Block::from(*iv);
        k2.encrypt_block(&mut t);
        let mut t = u128::from_le_bytes(t.into());
        for block in data.chunks_exact_mut(16) {
            let x = u128::from_le_bytes(block.try_into().unwrap()) ^ t;
            let mut b = Block::from(x.to_le_bytes());
            if encrypt {
                k1.encrypt_block(&mut b);
            } else {
                k1.decrypt_block(&mut b);
            }
            block.copy_from_slice(&(u128::from_le_bytes(b.into()) ^ t).to_le_bytes());
            t = mul_x(t);
        }
    }

    fn iv_of(index: u64) -> [u8; 16] {
        default_iv(index, 0)
    }

    /// Both engines for one key: the default one (aws-lc when built in) and pure Rust.
    fn engines(key: &[u8]) -> [Aes256Xts; 2] {
        let secret = Secret::<64>::from_slice(key).unwrap();
        let default = Aes256Xts::new(&secret);
        #[cfg(feature = "aws-lc")]
        if key[..32] != key[32..] {
            assert_eq!(default.implementation(), "aws-lc");
        }
        let rust = Aes256Xts::new_pure_rust(&secret);
        assert_eq!(rust.implementation(), "pure Rust");
        [default, rust]
    }

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// IEEE 1619-2007 annex B: XTS-AES-256 vectors 10 and 11 (512-byte data units, plaintext
    /// 00..ff twice, data unit sequence numbers 0xff and 0xffff).
    #[test]
    fn ieee1619_vectors() {
        let key = unhex(concat!(
            "2718281828459045235360287471352662497757247093699959574966967627",
            "3141592653589793238462643383279502884197169399375105820974944592",
        ));
        let plain: Vec<u8> = (0..512).map(|i| i as u8).collect();
        let vectors: [(u64, &str); 2] = [(0xff, VECTOR_10), (0xffff, VECTOR_11)];
        for xts in engines(&key) {
            for (dusn, want) in vectors {
                let want = unhex(want);
                let mut data = plain.clone();
                xts.encrypt(&iv_of(dusn), &mut data).unwrap();
                assert_eq!(data, want, "vector with DUSN {dusn:#x}");
                xts.decrypt(&iv_of(dusn), &mut data).unwrap();
                assert_eq!(data, plain);
                // The same unit through the data-unit API.
                let mut data = plain.clone();
                xts.encrypt_data_units(dusn, 512, &mut data).unwrap();
                assert_eq!(data, want);
                xts.decrypt_data_units(dusn, 512, &mut data).unwrap();
                assert_eq!(data, plain);
            }
        }
    }

    const VECTOR_10: &str = concat!(
        "1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b",
        "5d31e276f8fe4a8d66b317f9ac683f44680a86ac35adfc3345befecb4bb188fd",
        "5776926c49a3095eb108fd1098baec70aaa66999a72a82f27d848b21d4a741b0",
        "c5cd4d5fff9dac89aeba122961d03a757123e9870f8acf1000020887891429ca",
        "2a3e7a7d7df7b10355165c8b9a6d0a7de8b062c4500dc4cd120c0f7418dae3d0",
        "b5781c34803fa75421c790dfe1de1834f280d7667b327f6c8cd7557e12ac3a0f",
        "93ec05c52e0493ef31a12d3d9260f79a289d6a379bc70c50841473d1a8cc81ec",
        "583e9645e07b8d9670655ba5bbcfecc6dc3966380ad8fecb17b6ba02469a020a",
        "84e18e8f84252070c13e9f1f289be54fbc481457778f616015e1327a02b140f1",
        "505eb309326d68378f8374595c849d84f4c333ec4423885143cb47bd71c5edae",
        "9be69a2ffeceb1bec9de244fbe15992b11b77c040f12bd8f6a975a44a0f90c29",
        "a9abc3d4d893927284c58754cce294529f8614dcd2aba991925fedc4ae74ffac",
        "6e333b93eb4aff0479da9a410e4450e0dd7ae4c6e2910900575da401fc07059f",
        "645e8b7e9bfdef33943054ff84011493c27b3429eaedb4ed5376441a77ed4385",
        "1ad77f16f541dfd269d50d6a5f14fb0aab1cbb4c1550be97f7ab4066193c4caa",
        "773dad38014bd2092fa755c824bb5e54c4f36ffda9fcea70b9c6e693e148c151",
    );

    const VECTOR_11: &str = concat!(
        "77a31251618a15e6b92d1d66dffe7b50b50bad552305ba0217a610688eff7e11",
        "e1d0225438e093242d6db274fde801d4cae06f2092c728b2478559df58e837c2",
        "469ee4a4fa794e4bbc7f39bc026e3cb72c33b0888f25b4acf56a2a9804f1ce6d",
        "3d6e1dc6ca181d4b546179d55544aa7760c40d06741539c7e3cd9d2f6650b201",
        "3fd0eeb8c2b8e3d8d240ccae2d4c98320a7442e1c8d75a42d6e6cfa4c2eca179",
        "8d158c7aecdf82490f24bb9b38e108bcda12c3faf9a21141c3613b58367f922a",
        "aa26cd22f23d708dae699ad7cb40a8ad0b6e2784973dcb605684c08b8d6998c6",
        "9aac049921871ebb65301a4619ca80ecb485a31d744223ce8ddc2394828d6a80",
        "470c092f5ba413c3378fa6054255c6f9df4495862bbb3287681f931b687c888a",
        "bf844dfc8fc28331e579928cd12bd2390ae123cf03818d14dedde5c0c24c8ab0",
        "18bfca75ca096f2d531f3d1619e785f1ada437cab92e980558b3dce1474afb75",
        "bfedbf8ff54cb2618e0244c9ac0d3c66fb51598cd2db11f9be39791abe447c63",
        "094f7c453b7ff87cb5bb36b7c79efb0872d17058b83b15ab0866ad8a58656c5a",
        "7e20dbdf308b2461d97c0ec0024a2715055249cf3b478ddd4740de654f75ca68",
        "6e0d7345c69ed50cdc2a8b332b1f8824108ac937eb050585608ee734097fc090",
        "54fbff89eeaeea791f4a7ab1f9868294a4f9e27b42af8100cb9d59cef9645803",
    );

    /// FSCRYPT.md §10.2: per-file and per-extent keys of master key 01..40 and nonce 00..0f,
    /// then XTS of 4096 zero bytes.
    #[test]
    fn fscrypt_regression_vectors() {
        let raw: Vec<u8> = (1..=64).collect();
        let mk = MasterKey::from_raw(&raw).unwrap();
        let nonce: Vec<u8> = (0..16).collect();

        let mut file_key = Secret::<64>::zeroed();
        mk.hkdf()
            .expand(CONTEXT_PER_FILE_ENC_KEY, &nonce, file_key.expose_mut());
        assert_eq!(
            hex::encode(file_key.expose()),
            concat!(
                "badfbae70512e3d28b99414b7887741d848f9283e09b7f59e8cbe78a2b2c05cb",
                "9fee965f0eb2096b15b28c46cfc02a975bfbce9d34ade6ab28417d4e49df2470"
            )
        );
        for xts in engines(file_key.expose()) {
            let mut units = vec![0u8; 2 * 4096];
            xts.encrypt_data_units(0, 4096, &mut units).unwrap();
            assert_eq!(
                hex::encode(&units[..32]),
                "7d7f037e7866ebac38b5f612f2fe8ee971722d935da2ab1a45048c74c07560fb"
            );
            assert_eq!(
                hex::encode(&units[4096..4096 + 32]),
                "b9fee355f9a56eb4597996484442613d8678e1a3aac3f3642b731e4e8e7d0134"
            );
            let mut one = vec![0u8; 4096];
            xts.encrypt(&iv_of(1), &mut one).unwrap();
            assert_eq!(one, units[4096..]);
        }

        let mut extent_key = Secret::<64>::zeroed();
        mk.hkdf()
            .expand(CONTEXT_PER_EXTENT_ENC_KEY, &nonce, extent_key.expose_mut());
        assert_eq!(
            hex::encode(extent_key.expose()),
            concat!(
                "a8c26f6033618f12cb6107c62d18d50e2b35239dc6e7351e238894be44d523e1",
                "86f908b107f42992cb3d964fda4ed7e280584a1e41c945c059f77b13461e84b4"
            )
        );
        for xts in engines(extent_key.expose()) {
            let mut unit = vec![0u8; 4096];
            xts.encrypt_data_units(0, 4096, &mut unit).unwrap();
            assert_eq!(
                hex::encode(&unit[..32]),
                "9fccad452b7932f9f87c5ebd9cbd29c8f73fe97e77e662469992898950e60fef"
            );
        }
    }

    /// Plaintext of the kernel-vector files: zero except `segments`, where the byte at file
    /// offset p is SHA-256(seed || be64(p / 32))[p % 32] (the generator's rule).
    #[allow(
        clippy::big_endian_bytes,
        reason = "the vector generator's rule is big-endian"
    )]
    fn kernel_plaintext(
        seed: &str,
        segments: &[(usize, usize)],
        start: usize,
        len: usize,
    ) -> Vec<u8> {
        use sha2::{Digest, Sha256};
        let mut out = vec![0u8; len];
        for (p, byte) in (start..start + len).zip(out.iter_mut()) {
            if segments.iter().any(|&(off, n)| p >= off && p < off + n) {
                let mut h = Sha256::new();
                h.update(seed.as_bytes());
                h.update(((p / 32) as u64).to_be_bytes());
                *byte = h.finalize()[p % 32];
            }
        }
        out
    }

    /// Ciphertext that Linux 6.18 wrote to ext4 (tests/data/kernel-vectors.json): decrypting it
    /// gives the generated plaintext, and encrypting that gives the kernel's bytes back.
    #[test]
    fn kernel_written_units() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/kernel-vectors.json"
        );
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mk = MasterKey::from_raw(&unhex(json["master_key"].as_str().unwrap())).unwrap();
        let cases = [
            ("xts_cts_pad32", ["c_five_blocks", "c_hole", "c_far"]),
            (
                "xts_cts_pad32_du512",
                ["c_partial", "c_lead_hole", "c_tiny"],
            ),
        ];
        let mut checked = 0;
        for (policy_name, objects) in cases {
            let policy = json["policies"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == policy_name)
                .unwrap();
            let du = policy["data_unit_size"].as_u64().unwrap() as usize;
            for object in policy["objects"].as_array().unwrap() {
                let path = object["path"].as_str().unwrap();
                if !objects.iter().any(|o| path.ends_with(&format!("/{o}"))) {
                    continue;
                }
                let contents = &object["contents"];
                let seed = contents["seed"].as_str().unwrap();
                let segments: Vec<(usize, usize)> = contents["segments"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| {
                        (
                            s[0].as_u64().unwrap() as usize,
                            s[1].as_u64().unwrap() as usize,
                        )
                    })
                    .collect();
                let mut key = Secret::<64>::zeroed();
                mk.hkdf().expand(
                    CONTEXT_PER_FILE_ENC_KEY,
                    &unhex(object["nonce"].as_str().unwrap()),
                    key.expose_mut(),
                );
                for unit in contents["units"].as_array().unwrap() {
                    let index = unit["index"].as_u64().unwrap();
                    let cipher = unhex(unit["ciphertext"].as_str().unwrap());
                    assert_eq!(cipher.len(), du);
                    let plain = kernel_plaintext(seed, &segments, index as usize * du, du);
                    for xts in engines(key.expose()) {
                        let what = xts.implementation();
                        let mut data = cipher.clone();
                        xts.decrypt_data_units(index, du, &mut data).unwrap();
                        assert!(
                            data == plain,
                            "{what}: {path} unit {index} decrypts wrongly"
                        );
                        xts.encrypt_data_units(index, du, &mut data).unwrap();
                        assert!(
                            data == cipher,
                            "{what}: {path} unit {index} encrypts wrongly"
                        );
                    }
                    checked += 1;
                }
            }
        }
        // 5 + 3 + 1 units of 4096 bytes; 24 + 8 + 8 units of 512 bytes (whole 4096-byte blocks).
        assert_eq!(checked, 49);
    }

    #[test]
    fn bad_lengths_are_rejected() {
        let key: [u8; 64] = std::array::from_fn(|i| i as u8 ^ 9);
        for xts in engines(&key) {
            bad_lengths_for(&xts);
        }
        for len in [0usize, 32, 63, 65, 128] {
            assert_eq!(
                Aes256Xts::from_bytes(&vec![1u8; len]).unwrap_err(),
                Error::BadLength {
                    what: "AES-256-XTS key",
                    got: len,
                    expected: 64
                }
            );
        }
    }

    fn bad_lengths_for(xts: &Aes256Xts) {
        let iv = [0u8; 16];
        for len in [0usize, 1, 15, 17, 4095, MAX_UNIT_LEN + 16] {
            let mut data = vec![0u8; len];
            assert!(
                matches!(xts.encrypt(&iv, &mut data), Err(Error::Invalid { .. })),
                "{len}"
            );
            assert!(
                matches!(xts.decrypt(&iv, &mut data), Err(Error::Invalid { .. })),
                "{len}"
            );
            assert!(
                data.iter().all(|&b| b == 0),
                "rejected data must be untouched"
            );
        }
        for (du, len) in [
            (0, 0),
            (8, 16),
            (24, 48),
            (4096, 4095),
            (4096, 6144),
            (131072, 131072),
        ] {
            let mut data = vec![0u8; len];
            let r = xts.encrypt_data_units(0, du, &mut data);
            assert!(
                matches!(r, Err(Error::Invalid { .. })),
                "du {du} len {len}: {r:?}"
            );
            let r = xts.decrypt_data_units(0, du, &mut data);
            assert!(
                matches!(r, Err(Error::Invalid { .. })),
                "du {du} len {len}: {r:?}"
            );
        }
        // The last index must fit in 64 bits.
        let mut two = vec![0u8; 32];
        assert!(xts.encrypt_data_units(u64::MAX, 16, &mut two).is_err());
        assert!(xts.encrypt_data_units(u64::MAX - 1, 16, &mut two).is_ok());
        assert!(xts.encrypt_data_units(u64::MAX, 16, &mut two[..16]).is_ok());
        // No units at all is nothing to do.
        assert!(xts.encrypt_data_units(5, 4096, &mut []).is_ok());
    }

    #[test]
    fn key_halves_have_their_roles() {
        // K1 and K2 swapped must change the ciphertext, and both engines follow the definition.
        let key: [u8; 64] = std::array::from_fn(|i| i as u8);
        let mut swapped = [0u8; 64];
        swapped[..32].copy_from_slice(&key[32..]);
        swapped[32..].copy_from_slice(&key[..32]);
        let mut expected = vec![0u8; 64];
        reference(&key, &[1; 16], &mut expected, true);
        for (xts, other) in engines(&key).into_iter().zip(engines(&swapped)) {
            let (mut a, mut b) = (vec![0u8; 64], vec![0u8; 64]);
            xts.encrypt(&[1; 16], &mut a).unwrap();
            other.encrypt(&[1; 16], &mut b).unwrap();
            assert_eq!(a, expected, "{}", xts.implementation());
            assert_ne!(a, b);
        }
    }

    /// aws-lc refuses keys with equal halves; such a key still works, on the pure-Rust engine.
    #[test]
    fn equal_halves_fall_back_to_pure_rust() {
        let key = [0x77u8; 64];
        let xts = Aes256Xts::from_bytes(&key).unwrap();
        assert_eq!(xts.implementation(), "pure Rust");
        let mut data = vec![0u8; 4096];
        xts.encrypt_data_units(3, 4096, &mut data).unwrap();
        let mut want = vec![0u8; 4096];
        reference(&key, &iv_of(3), &mut want, true);
        assert_eq!(data, want);
    }

    #[test]
    fn debug_send_sync_clone() {
        fn assert_traits<T: Send + Sync + Clone>() {}
        assert_traits::<Aes256Xts>();
        let key = [0xabu8; 32]
            .into_iter()
            .chain([0xcd; 32])
            .collect::<Vec<_>>();
        for xts in engines(&key) {
            let text = format!("{xts:?}");
            assert_eq!(
                text,
                format!("Aes256Xts({}, redacted)", xts.implementation())
            );
            assert!(!text.to_lowercase().contains("ab") && !text.contains("171"));
            let copy = xts.clone();
            drop(xts);
            let mut a = vec![3u8; 48];
            copy.encrypt(&[5; 16], &mut a).unwrap();
            copy.decrypt(&[5; 16], &mut a).unwrap();
            assert_eq!(a, vec![3u8; 48]);
            let mut want = vec![3u8; 48];
            reference(
                key.as_slice().try_into().unwrap(),
                &[5; 16],
                &mut want,
                true,
            );
            copy.encrypt(&[5; 16], &mut a).unwrap();
            assert_eq!(a, want);
        }
    }

    proptest! {
        /// The batched tweak chains equal repeated doubling.
        #[test]
        fn tweak_chains_match_doubling(t in any::<u128>(), n in 0usize..200) {
            let mut tweaks = vec![Block::default(); n];
            let next = fill_tweaks(&mut tweaks, t);
            let mut cur = t;
            for block in &tweaks {
                prop_assert_eq!(u128::from_le_bytes((*block).into()), cur);
                cur = mul_x(cur);
            }
            prop_assert_eq!(next, cur);
        }

        /// Any length of whole blocks (crossing every backend's batch size) matches the plain
        /// definition and decrypts back.
        #[test]
        fn matches_reference_and_round_trips(
            key in prop::array::uniform32(any::<u8>()).prop_flat_map(|a| {
                prop::array::uniform32(any::<u8>()).prop_map(move |b| {
                    let mut k = [0u8; 64];
                    k[..32].copy_from_slice(&a);
                    k[32..].copy_from_slice(&b);
                    k
                })
            }),
            iv in prop::array::uniform16(any::<u8>()),
            blocks in 1usize..300,
            fill in any::<u8>(),
        ) {
            for xts in engines(&key) {
            let plain: Vec<u8> = (0..blocks * 16).map(|i| (i as u8).wrapping_mul(fill) ^ fill).collect();
            let mut data = plain.clone();
            xts.encrypt(&iv, &mut data).unwrap();
            let mut want = plain.clone();
            reference(&key, &iv, &mut want, true);
            prop_assert_eq!(&data, &want);
            xts.decrypt(&iv, &mut data).unwrap();
            prop_assert_eq!(&data, &plain);
            reference(&key, &iv, &mut want, false);
            prop_assert_eq!(&want, &plain);
            }
        }

        /// The data-unit API equals one `encrypt` per unit with fscrypt's default IV, across
        /// tweak batches (more than 64 units) and any power-of-two unit size.
        #[test]
        fn data_units_match_single_units(
            seed in any::<u8>(),
            first in any::<u64>(),
            log2_du in 4u32..=13,
            units in 0usize..150,
        ) {
            let du = 1usize << log2_du;
            let units = units.min((1 << 16) / du); // keep each case small
            let first = first.min(u64::MAX - units as u64);
            let key: [u8; 64] = std::array::from_fn(|i| (i as u8) ^ seed);
            for xts in engines(&key) {
            let plain: Vec<u8> = (0..units * du).map(|i| (i * 31) as u8 ^ seed).collect();
            let mut data = plain.clone();
            xts.encrypt_data_units(first, du, &mut data).unwrap();
            for (i, (unit, p)) in data.chunks(du).zip(plain.chunks(du)).enumerate() {
                let mut one = p.to_vec();
                xts.encrypt(&iv_of(first + i as u64), &mut one).unwrap();
                prop_assert_eq!(unit, &one[..]);
            }
            xts.decrypt_data_units(first, du, &mut data).unwrap();
            prop_assert_eq!(data, plain);
            }
        }
    }
}
