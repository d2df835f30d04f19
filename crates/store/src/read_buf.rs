//! Bytes read from a device, with a window into them.
//!
//! A read of file data covers whole sectors (and data units), of which the caller wants a part.
//! A [`ReadBuf`] keeps the vector the device read into and the window the caller asked for, so
//! the read path can check and decrypt the whole in place and hand the plaintext up without
//! copying it again; the FUSE adapter replies straight from the window.

/// Bytes read from a device: `len` bytes from `start` of `bytes`.
pub struct ReadBuf {
    bytes: Vec<u8>,
    start: usize,
    len: usize,
}

impl ReadBuf {
    /// All of `bytes`.
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        let len = bytes.len();
        ReadBuf {
            bytes,
            start: 0,
            len,
        }
    }

    /// The `len` bytes from `skip` of these (fewer if these end first), without copying.
    pub fn window(mut self, skip: usize, len: usize) -> Self {
        let skip = skip.min(self.len);
        self.start += skip;
        self.len = len.min(self.len - skip);
        self
    }

    /// The bytes as a vector: moved when the window starts the vector, else copied.
    pub fn into_vec(self) -> Vec<u8> {
        if self.start == 0 {
            let mut bytes = self.bytes;
            bytes.truncate(self.len);
            bytes
        } else {
            self[..].to_vec()
        }
    }
}

impl std::ops::Deref for ReadBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[self.start..self.start + self.len]
    }
}

impl std::ops::DerefMut for ReadBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + self.len]
    }
}

impl From<Vec<u8>> for ReadBuf {
    fn from(bytes: Vec<u8>) -> Self {
        ReadBuf::from_vec(bytes)
    }
}

/// File data may be secret: only the shape is shown.
impl std::fmt::Debug for ReadBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadBuf").field("len", &self.len).finish()
    }
}

impl PartialEq for ReadBuf {
    fn eq(&self, other: &Self) -> bool {
        self[..] == other[..]
    }
}

impl PartialEq<[u8]> for ReadBuf {
    fn eq(&self, other: &[u8]) -> bool {
        &self[..] == other
    }
}

impl PartialEq<&[u8]> for ReadBuf {
    fn eq(&self, other: &&[u8]) -> bool {
        &self[..] == *other
    }
}

impl PartialEq<Vec<u8>> for ReadBuf {
    fn eq(&self, other: &Vec<u8>) -> bool {
        self[..] == other[..]
    }
}

impl<const N: usize> PartialEq<[u8; N]> for ReadBuf {
    fn eq(&self, other: &[u8; N]) -> bool {
        self[..] == other[..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_writes_stay_inside_the_bytes() {
        let mut b = ReadBuf::from_vec((0..=255).collect()).window(100, 50);
        assert_eq!(b.len(), 50);
        assert_eq!(b[0], 100);
        b[0] = 7;
        assert_eq!(b.into_vec()[..2], [7, 101]);
        let v = ReadBuf::from_vec(vec![1, 2, 3, 4]).window(1, 10);
        assert_eq!(v, [2u8, 3, 4]);
        assert!(ReadBuf::from_vec(vec![1, 2]).window(5, 1).is_empty());
        let moved = ReadBuf::from_vec(vec![5; 8]).window(0, 3).into_vec();
        assert_eq!(moved, vec![5; 3]);
        let inner = ReadBuf::from_vec(vec![1, 2, 3, 4])
            .window(1, 2)
            .window(1, 5);
        assert_eq!(inner.into_vec(), vec![3]);
    }
}
