//! A safe wrapper over aws-lc's AES-256-XTS (`EVP_aes_256_xts`), whose VAES/AVX-512 assembly is
//! the fastest XTS available to cowcrypt (see `fscrypt::xts` for the figures), and over its
//! AES-256-GCM used as GMAC ([`Gmac`]: a tag over data, nothing encrypted) for authenticated
//! extents. This crate holds the only `unsafe` FFI of the crypto stack, so that `fscrypt` can
//! stay `forbid(unsafe_code)`.
//!
//! A [`Key`] keeps the 64-byte raw key in a heap box that is wiped on drop, and per direction
//! at most one spare keyed context. XTS keeps the IV in the context, so a call needs a context
//! of its own: it takes its direction's spare (an atomic swap), or, when there is none (first
//! use of that direction, or another thread holds it), keys a fresh context from the raw key.
//! It then sets each data unit's IV and runs one update per unit, and puts the context back as
//! the spare (or frees it if another one got there first). aws-lc cleanses key schedules when
//! it frees them.
//!
//! Contexts are made lazily because most keys are used once in one direction: a flush derives
//! a new key for every new extent, encrypts it, and drops the key, usually without ever
//! decrypting through it. [`Key::new`] therefore keys only the encryption context (which also
//! checks the key, so refusals are reported there) and keeps it as the encryption spare; the
//! decryption direction costs nothing until it is first used.

use std::fmt;
use std::os::raw::c_int;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicPtr, Ordering};

use aws_lc_sys as sys;
use zeroize::Zeroize;

/// Why aws-lc refused a key or an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XtsError {
    /// aws-lc rejects XTS keys whose two halves are equal (its FIPS rule); callers must use
    /// another implementation for such keys.
    DuplicatedKeyHalves,
    /// Lengths this wrapper does not accept: data not a multiple of the unit size, or a unit
    /// that is not a non-zero multiple of 16 bytes or does not fit in an `int`.
    BadLength,
    /// Any other aws-lc failure (allocation, internal error).
    Failed(&'static str),
}

impl fmt::Display for XtsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XtsError::DuplicatedKeyHalves => f.write_str("XTS key halves are equal"),
            XtsError::BadLength => f.write_str("bad XTS data or data unit length"),
            XtsError::Failed(what) => write!(f, "aws-lc {what} failed"),
        }
    }
}

impl std::error::Error for XtsError {}

/// A keyed EVP context owned by us, freed (and its key schedule cleansed) on drop.
struct Ctx(NonNull<sys::EVP_CIPHER_CTX>);

impl Ctx {
    fn new_keyed(key: &[u8; 64], encrypt: bool) -> Result<Ctx, XtsError> {
        // SAFETY: plain constructor; null is checked right after.
        let raw = unsafe { sys::EVP_CIPHER_CTX_new() };
        let ctx = Ctx(NonNull::new(raw).ok_or(XtsError::Failed("EVP_CIPHER_CTX_new"))?);
        // SAFETY: `ctx` is a fresh context we own; the cipher is a static table; `key` points at
        // the 64 bytes EVP_aes_256_xts reads; a null IV is allowed (it is set per unit later).
        let ok = unsafe {
            sys::EVP_CipherInit_ex(
                ctx.0.as_ptr(),
                sys::EVP_aes_256_xts(),
                ptr::null_mut(),
                key.as_ptr(),
                ptr::null(),
                c_int::from(encrypt),
            )
        };
        if ok != 1 {
            // aws-lc's only key check for XTS is that the two halves differ.
            return Err(if key[..32] == key[32..] {
                XtsError::DuplicatedKeyHalves
            } else {
                XtsError::Failed("EVP_CipherInit_ex")
            });
        }
        Ok(ctx)
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        // SAFETY: the pointer came from EVP_CIPHER_CTX_new and is freed exactly once here.
        unsafe { sys::EVP_CIPHER_CTX_free(self.0.as_ptr()) }
    }
}

// SAFETY: a `Ctx` owns its heap context exclusively; moving it to another thread moves that
// ownership, and aws-lc contexts have no thread affinity.
unsafe impl Send for Ctx {}

/// The raw 64-byte key, on the heap so that it is never moved (and so never left behind in a
/// stack copy), wiped on drop.
struct RawKey(Box<[u8; 64]>);

impl RawKey {
    fn new(key: &[u8; 64]) -> RawKey {
        // Allocate zeroed and copy in place, rather than `Box::new(*key)`, which may go through
        // a stack temporary that nobody wipes.
        let mut raw = RawKey(Box::new([0u8; 64]));
        raw.0.copy_from_slice(key);
        raw
    }
}

impl Drop for RawKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// One direction of a key: at most one spare keyed working context. The context pointer in an
/// `AtomicPtr` makes `Key` `Send` and `Sync`; that is sound because whoever swaps a context out
/// owns it alone, and aws-lc contexts have no thread affinity.
struct Direction {
    encrypt: bool,
    /// A keyed working context owned by nobody, or null. Whoever swaps it out owns it.
    spare: AtomicPtr<sys::EVP_CIPHER_CTX>,
}

impl Direction {
    /// A direction with no context yet: the first call keys one.
    fn new(encrypt: bool) -> Direction {
        Direction {
            encrypt,
            spare: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// A direction whose spare is `ctx`, a context already keyed for this direction.
    fn with_spare(ctx: Ctx, encrypt: bool) -> Direction {
        let direction = Direction::new(encrypt);
        direction.give_back(ctx);
        direction
    }

    /// A working context for this call: the spare if free, else a fresh one keyed from `key`.
    fn take(&self, key: &RawKey) -> Result<Ctx, XtsError> {
        match NonNull::new(self.spare.swap(ptr::null_mut(), Ordering::Acquire)) {
            Some(ctx) => Ok(Ctx(ctx)),
            None => Ctx::new_keyed(&key.0, self.encrypt),
        }
    }

    /// Returns a working context as the spare; if there already is one, frees this one.
    fn give_back(&self, ctx: Ctx) {
        let raw = ctx.0.as_ptr();
        if self
            .spare
            .compare_exchange(ptr::null_mut(), raw, Ordering::Release, Ordering::Relaxed)
            .is_ok()
        {
            // The slot owns it now.
            std::mem::forget(ctx);
        }
        // Otherwise `ctx` is dropped here and freed.
    }

    fn crypt(
        &self,
        key: &RawKey,
        du_size: usize,
        data: &mut [u8],
        iv: impl FnMut(usize) -> [u8; 16],
    ) -> Result<(), XtsError> {
        let unit_len = c_int::try_from(du_size).map_err(|_| XtsError::BadLength)?;
        if du_size == 0 || !du_size.is_multiple_of(16) || !data.len().is_multiple_of(du_size) {
            return Err(XtsError::BadLength);
        }
        if data.is_empty() {
            return Ok(());
        }
        let ctx = self.take(key)?;
        let result = crypt_units(&ctx, unit_len, du_size, data, iv);
        // After a failure the context's state is unknown: free it rather than reuse it.
        if result.is_ok() {
            self.give_back(ctx);
        }
        result
    }
}

impl Drop for Direction {
    fn drop(&mut self) {
        if let Some(ctx) = NonNull::new(*self.spare.get_mut()) {
            drop(Ctx(ctx));
        }
    }
}

/// An AES-256-XTS key for aws-lc: K1 = bytes 0..32 (data), K2 = bytes 32..64 (tweak). Each
/// direction's key schedule is expanded on its first use (see the module documentation).
pub struct Key {
    encrypt: Direction,
    decrypt: Direction,
    /// What each direction keys new contexts from.
    raw: RawKey,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("xts_sys::Key(redacted)")
    }
}

impl Key {
    /// Keeps `key` and expands it for encryption only; the decryption schedule is made when
    /// first needed. Keys whose halves are equal are refused ([`XtsError::DuplicatedKeyHalves`]).
    pub fn new(key: &[u8; 64]) -> Result<Key, XtsError> {
        let raw = RawKey::new(key);
        // Keying checks the key, so a refusal comes from here and not from a later call; the
        // context is kept, since a new key is nearly always used to encrypt.
        let ctx = Ctx::new_keyed(&raw.0, true)?;
        Ok(Key {
            encrypt: Direction::with_spare(ctx, true),
            decrypt: Direction::new(false),
            raw,
        })
    }

    /// A second handle on the same key, with contexts of its own.
    pub fn try_clone(&self) -> Result<Key, XtsError> {
        Key::new(&self.raw.0)
    }

    /// Encrypts `data` in place as consecutive data units of `du_size` bytes (a non-zero
    /// multiple of 16 that fits in an `int`); unit `i` uses the IV `iv(i)`.
    pub fn encrypt_units(
        &self,
        du_size: usize,
        data: &mut [u8],
        iv: impl FnMut(usize) -> [u8; 16],
    ) -> Result<(), XtsError> {
        self.encrypt.crypt(&self.raw, du_size, data, iv)
    }

    /// Decrypts `data` in place; the inverse of [`Key::encrypt_units`].
    pub fn decrypt_units(
        &self,
        du_size: usize,
        data: &mut [u8],
        iv: impl FnMut(usize) -> [u8; 16],
    ) -> Result<(), XtsError> {
        self.decrypt.crypt(&self.raw, du_size, data, iv)
    }
}

/// One IV-set and one update per data unit on a working context owned by this call.
fn crypt_units(
    ctx: &Ctx,
    unit_len: c_int,
    du_size: usize,
    data: &mut [u8],
    mut iv: impl FnMut(usize) -> [u8; 16],
) -> Result<(), XtsError> {
    let ctx_ptr = ctx.0.as_ptr();
    for (i, unit) in data.chunks_exact_mut(du_size).enumerate() {
        let iv = iv(i);
        let mut out_len: c_int = 0;
        // SAFETY: the context is keyed and owned by this call alone; null cipher, engine and
        // key with an IV only set the IV, and `enc = -1` keeps the direction. The update reads
        // and writes `unit_len` bytes of `unit`, which we hold exclusively; EVP allows the input
        // and output to be the same buffer.
        let ok = unsafe {
            sys::EVP_CipherInit_ex(
                ctx_ptr,
                ptr::null(),
                ptr::null_mut(),
                ptr::null(),
                iv.as_ptr(),
                -1,
            ) == 1
                && sys::EVP_CipherUpdate(
                    ctx_ptr,
                    unit.as_mut_ptr(),
                    &mut out_len,
                    unit.as_ptr(),
                    unit_len,
                ) == 1
        };
        if !ok || out_len != unit_len {
            return Err(XtsError::Failed("EVP_CipherUpdate"));
        }
    }
    Ok(())
}

/// Bytes of a GMAC tag.
pub const GMAC_TAG_SIZE: usize = 16;

/// An AES-256-GCM key used as GMAC: [`Gmac::tag`] is the GCM tag of an empty plaintext with the
/// data as associated data (GHASH with VPCLMULQDQ in aws-lc: about 14 GB/s per 4 KiB here, five
/// times keyed BLAKE3). Like every GCM use it needs a nonce that never repeats under one key
/// with different data; the caller guarantees that.
pub struct Gmac(NonNull<sys::EVP_AEAD_CTX>);

impl Gmac {
    /// Expands a 256-bit key (aws-lc cleanses the schedule when the context is freed).
    pub fn new(key: &[u8; 32]) -> Result<Gmac, XtsError> {
        // SAFETY: the AEAD is a static table; `key` points at the 32 bytes AES-256-GCM reads;
        // the result is null-checked and then owned by the returned value.
        let raw = unsafe {
            sys::EVP_AEAD_CTX_new(
                sys::EVP_aead_aes_256_gcm(),
                key.as_ptr(),
                key.len(),
                GMAC_TAG_SIZE,
            )
        };
        NonNull::new(raw)
            .map(Gmac)
            .ok_or(XtsError::Failed("EVP_AEAD_CTX_new"))
    }

    /// The tag of `data` under `nonce` (any non-empty length; GCM hashes nonces other than 12
    /// bytes into its counter block).
    pub fn tag(&self, nonce: &[u8], data: &[u8]) -> Result<[u8; GMAC_TAG_SIZE], XtsError> {
        if nonce.is_empty() {
            return Err(XtsError::BadLength);
        }
        let mut out = [0u8; GMAC_TAG_SIZE];
        let mut out_len = 0usize;
        // SAFETY: the context is keyed and only read by seal (a const operation, safe from
        // many threads at once); `out` has room for the tag alone, which is all GCM writes for
        // an empty input (null input pointer with length 0); nonce and data are valid slices.
        let ok = unsafe {
            sys::EVP_AEAD_CTX_seal(
                self.0.as_ptr(),
                out.as_mut_ptr(),
                &mut out_len,
                out.len(),
                nonce.as_ptr(),
                nonce.len(),
                ptr::null(),
                0,
                data.as_ptr(),
                data.len(),
            )
        };
        if ok != 1 || out_len != GMAC_TAG_SIZE {
            return Err(XtsError::Failed("EVP_AEAD_CTX_seal"));
        }
        Ok(out)
    }
}

impl Drop for Gmac {
    fn drop(&mut self) {
        // SAFETY: the pointer came from EVP_AEAD_CTX_new and is freed exactly once here.
        unsafe { sys::EVP_AEAD_CTX_free(self.0.as_ptr()) }
    }
}

impl fmt::Debug for Gmac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("xts_sys::Gmac(redacted)")
    }
}

// SAFETY: a `Gmac` owns its heap context exclusively; aws-lc contexts have no thread affinity.
unsafe impl Send for Gmac {}
// SAFETY: through `&Gmac` the only operation is EVP_AEAD_CTX_seal, which takes a const context
// and keeps no state in it between calls.
unsafe impl Sync for Gmac {}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> [u8; 64] {
        std::array::from_fn(|i| (i as u8).wrapping_mul(29).wrapping_add(3))
    }

    /// IEEE 1619 XTS-AES-256 vector 10: DUSN 0xff, plaintext 00..ff twice. The full 512 bytes
    /// are checked in `fscrypt::xts`; here its first 32 bytes and the round trip.
    #[test]
    fn ieee1619_vector_10() {
        let mut k = [0u8; 64];
        let hex = concat!(
            "2718281828459045235360287471352662497757247093699959574966967627",
            "3141592653589793238462643383279502884197169399375105820974944592"
        );
        for (i, b) in k.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
        let key = Key::new(&k).unwrap();
        let plain: Vec<u8> = (0..512).map(|i| i as u8).collect();
        let mut iv = [0u8; 16];
        iv[0] = 0xff;
        let mut data = plain.clone();
        key.encrypt_units(512, &mut data, |_| iv).unwrap();
        let head: String = data[..32].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            head,
            "1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b"
        );
        key.decrypt_units(512, &mut data, |_| iv).unwrap();
        assert_eq!(data, plain);
    }

    #[test]
    fn units_use_their_own_iv_and_clone_agrees() {
        let k = Key::new(&key()).unwrap();
        let plain = vec![0x5au8; 4 * 512];
        let mut data = plain.clone();
        k.encrypt_units(512, &mut data, |i| [i as u8; 16]).unwrap();
        // Equal plaintext units differ only through their IVs.
        assert_ne!(data[..512], data[512..1024]);
        let mut one = plain[..512].to_vec();
        k.encrypt_units(512, &mut one, |_| [2; 16]).unwrap();
        assert_eq!(one, data[1024..1536]);
        let cloned = k.try_clone().unwrap();
        drop(k);
        cloned
            .decrypt_units(512, &mut data, |i| [i as u8; 16])
            .unwrap();
        assert_eq!(data, plain);
    }

    /// NIST's GCM test case 14 (AES-256, zero key, 12-byte zero IV, one zero block) gives the
    /// tag of the encryption; as GMAC, the data goes in as associated data instead, which is
    /// checked against an independent computation (Python `cryptography`'s AESGCM).
    #[test]
    fn gmac_known_answers() {
        let g = Gmac::new(&[0u8; 32]).unwrap();
        // AESGCM(bytes(32)).encrypt(bytes(12), b"", b"") -> tag of nothing: NIST test case 13.
        assert_eq!(
            g.tag(&[0u8; 12], &[]).unwrap(),
            [
                0x53, 0x0f, 0x8a, 0xfb, 0xc7, 0x45, 0x36, 0xb9, 0xa9, 0x63, 0xb4, 0xf1, 0xc4, 0xcb,
                0x73, 0x8b
            ]
        );
        let g = Gmac::new(&[0x11u8; 32]).unwrap();
        let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        let nonce: Vec<u8> = (0..24u8).collect();
        assert_eq!(hex(&g.tag(&nonce, &data).unwrap()), GMAC_VECTOR);
        assert_ne!(
            g.tag(&nonce[..23], &data).unwrap(),
            g.tag(&nonce, &data).unwrap()
        );
        assert_eq!(g.tag(&[], &data), Err(XtsError::BadLength));
        assert!(!format!("{g:?}").contains("11"));
    }

    /// `AESGCM(bytes([0x11] * 32)).encrypt(bytes(range(24)), b"", bytes(i % 251 for i in
    /// range(4096)))` with Python's `cryptography`.
    const GMAC_VECTOR: &str = "54fa8e1476e8ffe1c50277a1d230deb3";

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn refusals() {
        let mut dup = [7u8; 64];
        assert_eq!(Key::new(&dup).unwrap_err(), XtsError::DuplicatedKeyHalves);
        dup[63] = 8;
        let k = Key::new(&dup).unwrap();
        let mut data = vec![0u8; 48];
        assert_eq!(
            k.encrypt_units(32, &mut data, |_| [0; 16]),
            Err(XtsError::BadLength)
        );
        assert_eq!(
            k.encrypt_units(24, &mut data, |_| [0; 16]),
            Err(XtsError::BadLength)
        );
        assert_eq!(
            k.encrypt_units(0, &mut data, |_| [0; 16]),
            Err(XtsError::BadLength)
        );
        assert!(data.iter().all(|&b| b == 0));
        assert_eq!(k.encrypt_units(16, &mut [], |_| [0; 16]), Ok(()));
        assert!(!format!("{k:?}").contains('7'));
    }

    /// Threads sharing one key race for its spare contexts; every result must still be right.
    #[test]
    fn concurrent_use_of_one_key() {
        let k = Key::new(&key()).unwrap();
        let plain: Vec<u8> = (0..8 * 512).map(|i| (i % 253) as u8).collect();
        let mut want = plain.clone();
        k.encrypt_units(512, &mut want, |i| [i as u8; 16]).unwrap();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200 {
                        let mut data = plain.clone();
                        k.encrypt_units(512, &mut data, |i| [i as u8; 16]).unwrap();
                        assert_eq!(data, want);
                        k.decrypt_units(512, &mut data, |i| [i as u8; 16]).unwrap();
                        assert_eq!(data, plain);
                    }
                });
            }
        });
    }

    /// The decryption schedule is made on first use: a key that never encrypted, and a clone of
    /// one, still decrypt, alone and with threads racing to key that first context.
    #[test]
    fn decrypt_on_a_key_that_never_encrypted() {
        let plain: Vec<u8> = (0..8 * 512).map(|i| (i % 251) as u8).collect();
        let mut cipher = plain.clone();
        Key::new(&key())
            .unwrap()
            .encrypt_units(512, &mut cipher, |i| [i as u8 ^ 0x3c; 16])
            .unwrap();
        assert_ne!(cipher, plain);

        let fresh = Key::new(&key()).unwrap();
        let mut data = cipher.clone();
        fresh
            .decrypt_units(512, &mut data, |i| [i as u8 ^ 0x3c; 16])
            .unwrap();
        assert_eq!(data, plain);

        let never_used = Key::new(&key()).unwrap();
        let clone = never_used.try_clone().unwrap();
        drop(never_used);
        let mut data = cipher.clone();
        clone
            .decrypt_units(512, &mut data, |i| [i as u8 ^ 0x3c; 16])
            .unwrap();
        assert_eq!(data, plain);

        let shared = Key::new(&key()).unwrap();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..50 {
                        let mut data = cipher.clone();
                        shared
                            .decrypt_units(512, &mut data, |i| [i as u8 ^ 0x3c; 16])
                            .unwrap();
                        assert_eq!(data, plain);
                    }
                });
            }
        });
    }

    #[test]
    fn send_sync() {
        fn assert_traits<T: Send + Sync>() {}
        assert_traits::<Key>();
    }
}
