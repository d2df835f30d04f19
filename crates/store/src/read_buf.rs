//! Bytes read from a device, kept where the device put them.
//!
//! A large read of file data bypasses the host's page cache (`O_DIRECT`, see
//! [`crate::FileDevice`]), and the kernel then needs memory aligned to pages, which a `Vec<u8>`
//! cannot promise. A [`ReadBuf`] holds either kind of memory and a window into it. The read
//! path can then check and decrypt the bytes in place and hand the plaintext to its caller
//! without copying it again.

use std::mem::MaybeUninit;

/// The alignment and granule of page-aligned reads.
pub const PAGE: usize = 4096;

/// One page of memory, aligned as `O_DIRECT` requires.
#[derive(Clone, Copy)]
#[repr(C, align(4096))]
struct Page([u8; PAGE]);

enum Storage {
    Heap(Vec<u8>),
    Pages(Vec<Page>),
}

/// Bytes read from a device: `len` bytes from `start` of its storage.
pub struct ReadBuf {
    storage: Storage,
    start: usize,
    len: usize,
}

impl ReadBuf {
    /// All of `bytes`.
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        let len = bytes.len();
        ReadBuf {
            storage: Storage::Heap(bytes),
            start: 0,
            len,
        }
    }

    /// `len` bytes (a whole number of pages) read from `file` at `offset` into page-aligned
    /// memory, as `O_DIRECT` requires: `pread` again after a short read or a signal, until
    /// all are in. An end of file first is an error.
    #[allow(unsafe_code)]
    pub(crate) fn pread_aligned(
        file: &std::fs::File,
        offset: u64,
        len: usize,
    ) -> std::io::Result<Self> {
        if !len.is_multiple_of(PAGE) {
            return Err(std::io::ErrorKind::InvalidInput.into());
        }
        let mut pages: Vec<Page> = Vec::with_capacity(len / PAGE);
        let spare = pages.spare_capacity_mut();
        // SAFETY: the spare capacity is `len / PAGE` pages of allocated memory; viewing it as
        // `len` possibly uninitialized bytes is the same memory with no stronger claim (u8
        // has alignment 1 and a page is a plain byte array).
        let bytes: &mut [MaybeUninit<u8>] =
            unsafe { std::slice::from_raw_parts_mut(spare.as_mut_ptr().cast(), len) };
        let mut filled = 0;
        while filled < len {
            // rustix hands back the part it initialized, so `filled` counts only bytes the
            // kernel wrote.
            let at = offset + filled as u64;
            match rustix::io::pread(file, &mut bytes[filled..], at) {
                Ok(([], _)) => {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                Ok((init, _)) => filled += init.len(),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // SAFETY: the kernel initialized all `len` bytes of the first `len / PAGE` pages (the
        // loop counted them from the start, in order), and the capacity holds them.
        unsafe { pages.set_len(len / PAGE) };
        Ok(ReadBuf {
            storage: Storage::Pages(pages),
            start: 0,
            len,
        })
    }

    /// The `len` bytes from `skip` of these (fewer if these end first), without copying.
    pub fn window(mut self, skip: usize, len: usize) -> Self {
        let skip = skip.min(self.len);
        self.start += skip;
        self.len = len.min(self.len - skip);
        self
    }

    /// The bytes as a vector: moved when they already are one from its start, else copied.
    pub fn into_vec(self) -> Vec<u8> {
        match self.storage {
            Storage::Heap(mut v) if self.start == 0 => {
                v.truncate(self.len);
                v
            }
            _ => self[..].to_vec(),
        }
    }

    /// Whether the bytes are in page-aligned memory (they were read around the page cache).
    pub fn is_page_aligned(&self) -> bool {
        matches!(self.storage, Storage::Pages(_))
    }

    #[allow(unsafe_code)]
    fn storage_bytes(&self) -> &[u8] {
        match &self.storage {
            Storage::Heap(v) => v,
            // SAFETY: the pages are initialized (see `pread_aligned`) and contiguous; viewing
            // them as bytes makes no stronger claim than their plain byte arrays do.
            Storage::Pages(p) => unsafe {
                std::slice::from_raw_parts(p.as_ptr().cast::<u8>(), p.len() * PAGE)
            },
        }
    }

    #[allow(unsafe_code)]
    fn storage_bytes_mut(&mut self) -> &mut [u8] {
        match &mut self.storage {
            Storage::Heap(v) => v,
            // SAFETY: as in `storage_bytes`, and the borrow is unique through `&mut self`.
            Storage::Pages(p) => unsafe {
                std::slice::from_raw_parts_mut(p.as_mut_ptr().cast::<u8>(), p.len() * PAGE)
            },
        }
    }
}

impl std::ops::Deref for ReadBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let (start, len) = (self.start, self.len);
        &self.storage_bytes()[start..start + len]
    }
}

impl std::ops::DerefMut for ReadBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        let (start, len) = (self.start, self.len);
        &mut self.storage_bytes_mut()[start..start + len]
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
        f.debug_struct("ReadBuf")
            .field("len", &self.len)
            .field("page_aligned", &self.is_page_aligned())
            .finish()
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
    use std::os::unix::fs::FileExt;

    fn file_of(len: usize) -> (tempfile::TempDir, std::fs::File, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .unwrap();
        let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        file.write_all_at(&bytes, 0).unwrap();
        (dir, file, bytes)
    }

    #[test]
    fn aligned_reads_are_aligned_and_hold_the_file_bytes() {
        let (_dir, file, bytes) = file_of(4 * PAGE);
        let b = ReadBuf::pread_aligned(&file, PAGE as u64, 2 * PAGE).unwrap();
        assert!(b.is_page_aligned());
        assert_eq!(b.as_ptr() as usize % PAGE, 0);
        assert_eq!(b, bytes[PAGE..3 * PAGE].to_vec());
        assert_eq!(b.into_vec(), bytes[PAGE..3 * PAGE]);
    }

    #[test]
    fn windows_and_writes_stay_inside_the_bytes() {
        let (_dir, file, _) = file_of(PAGE);
        let mut b = ReadBuf::pread_aligned(&file, 0, PAGE)
            .unwrap()
            .window(100, 50);
        assert_eq!(b.len(), 50);
        assert_eq!(b[0], 100);
        b[0] = 7;
        assert_eq!(b.into_vec()[..2], [7, 101]);
        let v = ReadBuf::from_vec(vec![1, 2, 3, 4]).window(1, 10);
        assert_eq!(v, [2u8, 3, 4]);
        assert!(ReadBuf::from_vec(vec![1, 2]).window(5, 1).is_empty());
        let moved = ReadBuf::from_vec(vec![5; 8]).window(0, 3).into_vec();
        assert_eq!(moved, vec![5; 3]);
    }

    #[test]
    fn reads_past_the_end_and_bad_sizes_are_errors() {
        let (_dir, file, _) = file_of(PAGE + 512);
        let eof = ReadBuf::pread_aligned(&file, 0, 2 * PAGE);
        assert_eq!(eof.unwrap_err().kind(), std::io::ErrorKind::UnexpectedEof);
        let odd = ReadBuf::pread_aligned(&file, 0, PAGE + 1);
        assert_eq!(odd.unwrap_err().kind(), std::io::ErrorKind::InvalidInput);
    }
}
