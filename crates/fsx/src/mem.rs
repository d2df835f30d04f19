//! [`MemTarget`]: a [`Target`] with no filesystem behind it, implementing the Linux semantics
//! the tester expects in plain memory.
//!
//! It is what the tester's own tests run against (a correct target must pass any seed), and the
//! base that deliberately corrupting fake targets wrap to prove the tester catches faults.
//! "Holes" are not tracked: `SEEK_DATA` reports data at the offset asked for and `SEEK_HOLE`
//! only the implicit hole at end of file, which Linux allows for any filesystem.

use std::io;

use crate::target::{FallocMode, Target, Whence};

fn err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// Files kept as byte vectors; open/closed state is tracked so misuse by the tester shows.
#[derive(Clone, Debug, Default)]
pub struct MemTarget {
    files: Vec<Vec<u8>>,
    open: Vec<bool>,
    /// Largest size a file may reach (EFBIG beyond), like a filesystem's limit.
    pub max_size: u64,
}

impl MemTarget {
    /// `files` empty files, none open, sizes up to 1 GiB.
    pub fn new(files: usize) -> MemTarget {
        MemTarget {
            files: vec![Vec::new(); files],
            open: vec![false; files],
            max_size: 1 << 30,
        }
    }

    /// The current contents of file `file` (empty for an unknown index).
    pub fn contents(&self, file: usize) -> &[u8] {
        self.files.get(file).map_or(&[], Vec::as_slice)
    }

    /// Mutable access to file `file`'s bytes, for fake targets that corrupt on purpose.
    pub fn contents_mut(&mut self, file: usize) -> Option<&mut Vec<u8>> {
        self.files.get_mut(file)
    }

    fn get(&mut self, file: usize) -> io::Result<&mut Vec<u8>> {
        if !self.open.get(file).copied().unwrap_or(false) {
            return Err(err(libc::EBADF));
        }
        self.files.get_mut(file).ok_or_else(|| err(libc::EBADF))
    }

    fn grow(max: u64, f: &mut Vec<u8>, end: u64) -> io::Result<()> {
        if end > max {
            return Err(err(libc::EFBIG));
        }
        let end = usize::try_from(end).map_err(|_| err(libc::EFBIG))?;
        if f.len() < end {
            f.resize(end, 0);
        }
        Ok(())
    }
}

fn span(offset: u64, len: u64, limit: usize) -> (usize, usize) {
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(limit);
    let end = usize::try_from(offset.saturating_add(len))
        .unwrap_or(usize::MAX)
        .min(limit);
    (start, end)
}

impl Target for MemTarget {
    fn open(&mut self, file: usize, create: bool) -> io::Result<()> {
        let f = self.files.get_mut(file).ok_or_else(|| err(libc::ENOENT))?;
        if create {
            f.clear();
        }
        if let Some(o) = self.open.get_mut(file) {
            *o = true;
        }
        Ok(())
    }

    fn close(&mut self, file: usize) {
        if let Some(o) = self.open.get_mut(file) {
            *o = false;
        }
    }

    fn pwrite(&mut self, file: usize, offset: u64, data: &[u8]) -> io::Result<usize> {
        let max = self.max_size;
        let f = self.get(file)?;
        Self::grow(max, f, offset.saturating_add(data.len() as u64))?;
        let (s, e) = span(offset, data.len() as u64, f.len());
        f[s..e].copy_from_slice(data);
        Ok(data.len())
    }

    fn pread(&mut self, file: usize, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let f = self.get(file)?;
        let (s, e) = span(offset, buf.len() as u64, f.len());
        buf[..e - s].copy_from_slice(&f[s..e]);
        Ok(e - s)
    }

    fn size(&mut self, file: usize) -> io::Result<u64> {
        Ok(self.get(file)?.len() as u64)
    }

    fn truncate(&mut self, file: usize, len: u64) -> io::Result<()> {
        let max = self.max_size;
        let f = self.get(file)?;
        if len > max {
            return Err(err(libc::EFBIG));
        }
        f.resize(usize::try_from(len).map_err(|_| err(libc::EFBIG))?, 0);
        Ok(())
    }

    fn fallocate(
        &mut self,
        file: usize,
        mode: FallocMode,
        offset: u64,
        len: u64,
    ) -> io::Result<()> {
        if len == 0 {
            return Err(err(libc::EINVAL));
        }
        let max = self.max_size;
        let f = self.get(file)?;
        let end = offset.saturating_add(len);
        match mode {
            FallocMode::Allocate => Self::grow(max, f, end)?,
            FallocMode::KeepSize => {}
            FallocMode::PunchHole | FallocMode::ZeroRangeKeepSize => {
                let (s, e) = span(offset, len, f.len());
                f[s..e].fill(0);
            }
            FallocMode::ZeroRange => {
                Self::grow(max, f, end)?;
                let (s, e) = span(offset, len, f.len());
                f[s..e].fill(0);
            }
        }
        Ok(())
    }

    fn copy_file_range(
        &mut self,
        src: usize,
        src_offset: u64,
        dst: usize,
        dst_offset: u64,
        len: u64,
    ) -> io::Result<u64> {
        let data = {
            let f = self.get(src)?;
            let (s, e) = span(src_offset, len, f.len());
            f[s..e].to_vec()
        };
        if src == dst {
            let n = data.len() as u64;
            if src_offset < dst_offset.saturating_add(n) && dst_offset < src_offset + n {
                return Err(err(libc::EINVAL));
            }
        }
        if data.is_empty() {
            return Ok(0);
        }
        self.pwrite(dst, dst_offset, &data).map(|n| n as u64)
    }

    fn seek(&mut self, file: usize, offset: u64, whence: Whence) -> io::Result<u64> {
        let size = self.get(file)?.len() as u64;
        if offset >= size {
            return Err(err(libc::ENXIO));
        }
        Ok(match whence {
            Whence::Data => offset,
            Whence::Hole => size,
        })
    }

    fn fsync(&mut self, file: usize, _datasync: bool) -> io::Result<()> {
        self.get(file).map(|_| ())
    }

    fn append(&mut self, file: usize, data: &[u8]) -> io::Result<u64> {
        let size = self.get(file)?.len() as u64;
        self.pwrite(file, size, data)?;
        Ok(size + data.len() as u64)
    }

    fn map_read(&mut self, file: usize, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let f = self.get(file)?;
        let (s, e) = span(offset, buf.len() as u64, f.len());
        if e - s != buf.len() {
            return Err(err(libc::EINVAL));
        }
        buf.copy_from_slice(&f[s..e]);
        Ok(())
    }

    fn map_write(&mut self, file: usize, offset: u64, data: &[u8]) -> io::Result<()> {
        let f = self.get(file)?;
        let (s, e) = span(offset, data.len() as u64, f.len());
        if e - s != data.len() {
            return Err(err(libc::EINVAL));
        }
        f[s..e].copy_from_slice(data);
        Ok(())
    }
}
