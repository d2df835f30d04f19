//! Secret byte arrays: zeroized on drop, never printed, compared in constant time.

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

/// A fixed-size secret. `Debug` shows only the size; the bytes are wiped when it is dropped.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Secret<const N: usize>(Box<[u8; N]>);

impl<const N: usize> Secret<N> {
    /// Takes ownership of `bytes`, wiping the caller's copy.
    pub fn new(bytes: &mut [u8; N]) -> Self {
        let s = Secret(Box::new(*bytes));
        bytes.zeroize();
        s
    }

    /// Copies `bytes` (the caller is responsible for its own copy).
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let arr: &[u8; N] = bytes.try_into().ok()?;
        Some(Secret(Box::new(*arr)))
    }

    /// An all-zero secret to be filled in place (for KDF outputs).
    pub fn zeroed() -> Self {
        Secret(Box::new([0u8; N]))
    }

    /// The secret bytes.
    pub fn expose(&self) -> &[u8; N] {
        &self.0
    }

    /// The secret bytes, writable (for KDF outputs).
    pub fn expose_mut(&mut self) -> &mut [u8; N] {
        &mut self.0
    }
}

impl<const N: usize> fmt::Debug for Secret<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret<{N}>(redacted)")
    }
}

/// A variable-length secret (a raw master key of 16 to 64 bytes).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretVec(Vec<u8>);

impl SecretVec {
    /// Copies `bytes` into a secret.
    pub fn from_slice(bytes: &[u8]) -> Self {
        SecretVec(bytes.to_vec())
    }

    /// The secret bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretVec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretVec[{}](redacted)", self.0.len())
    }
}

/// Constant-time equality of two byte strings of equal length (lengths are not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_bytes() {
        let s = Secret::<4>::from_slice(&[0xde, 0xad, 0xbe, 0xef]).unwrap();
        let text = format!("{s:?}");
        assert!(!text.contains("de") && !text.contains("222"), "{text}");
        let v = SecretVec::from_slice(&[0xab; 20]);
        assert!(!format!("{v:?}").contains("ab"));
    }

    #[test]
    fn new_wipes_source() {
        let mut src = [9u8; 8];
        let s = Secret::new(&mut src);
        assert_eq!(src, [0; 8]);
        assert_eq!(s.expose(), &[9; 8]);
    }

    #[test]
    fn ct_eq_works() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
