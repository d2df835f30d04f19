//! What the tester drives: the [`Target`] trait, and [`DirTarget`], which runs every operation
//! as a real system call on files in a directory (a FUSE mount, tmpfs, ext4, ...).
//!
//! The trait exists so the tester itself can be tested: `crate::mem::MemTarget` is an
//! in-memory target and the unit tests wrap it in targets that corrupt data on purpose.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A fallocate(2) mode the tester exercises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FallocMode {
    /// Mode 0: allocate, extending the size when the range ends past it.
    Allocate,
    /// `FALLOC_FL_KEEP_SIZE`: allocate without changing the size.
    KeepSize,
    /// `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`: deallocate; the range reads as zeroes.
    PunchHole,
    /// `FALLOC_FL_ZERO_RANGE`: the range reads as zeroes; the size grows to cover it.
    ZeroRange,
    /// `FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE`: zeroes inside the current size only.
    ZeroRangeKeepSize,
}

impl FallocMode {
    /// Every mode, in a fixed order (the order the tester draws from).
    pub const ALL: [FallocMode; 5] = [
        FallocMode::Allocate,
        FallocMode::KeepSize,
        FallocMode::PunchHole,
        FallocMode::ZeroRange,
        FallocMode::ZeroRangeKeepSize,
    ];

    /// The flags argument of fallocate(2).
    pub fn flags(self) -> i32 {
        match self {
            FallocMode::Allocate => 0,
            FallocMode::KeepSize => libc::FALLOC_FL_KEEP_SIZE,
            FallocMode::PunchHole => libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            FallocMode::ZeroRange => libc::FALLOC_FL_ZERO_RANGE,
            FallocMode::ZeroRangeKeepSize => libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
        }
    }

    /// A short name for logs.
    pub fn name(self) -> &'static str {
        match self {
            FallocMode::Allocate => "FALLOC",
            FallocMode::KeepSize => "FALLOC_KEEP_SIZE",
            FallocMode::PunchHole => "PUNCH_HOLE",
            FallocMode::ZeroRange => "ZERO_RANGE",
            FallocMode::ZeroRangeKeepSize => "ZERO_RANGE_KEEP_SIZE",
        }
    }
}

/// The lseek(2) whence values the tester checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whence {
    /// `SEEK_DATA`: the next offset at or after the given one that holds data.
    Data,
    /// `SEEK_HOLE`: the next offset at or after the given one inside a hole (EOF counts).
    Hole,
}

/// The operations the tester runs on numbered files. Offsets and lengths are bytes.
///
/// Errors are returned as `io::Error` with the OS error code where there is one: the tester
/// tells "unsupported" (`EOPNOTSUPP`) and "no more data" (`ENXIO`) apart from real failures.
pub trait Target {
    /// Opens file `file` read-write; `create` also creates it and truncates it to 0.
    fn open(&mut self, file: usize, create: bool) -> io::Result<()>;
    /// Closes file `file` (no-op when it is not open).
    fn close(&mut self, file: usize);
    /// Writes all of `data` at `offset`; returns the number of bytes written.
    fn pwrite(&mut self, file: usize, offset: u64, data: &[u8]) -> io::Result<usize>;
    /// Reads up to `buf.len()` bytes at `offset`, stopping early only at end of file.
    fn pread(&mut self, file: usize, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// The file's size as fstat(2) shows it.
    fn size(&mut self, file: usize) -> io::Result<u64>;
    /// ftruncate(2).
    fn truncate(&mut self, file: usize, len: u64) -> io::Result<()>;
    /// fallocate(2) with `mode`.
    fn fallocate(&mut self, file: usize, mode: FallocMode, offset: u64, len: u64)
    -> io::Result<()>;
    /// copy_file_range(2) once; returns the number of bytes copied (may be short).
    fn copy_file_range(
        &mut self,
        src: usize,
        src_offset: u64,
        dst: usize,
        dst_offset: u64,
        len: u64,
    ) -> io::Result<u64>;
    /// lseek(2) with `SEEK_DATA` or `SEEK_HOLE`.
    fn seek(&mut self, file: usize, offset: u64, whence: Whence) -> io::Result<u64>;
    /// fsync(2), or fdatasync(2) when `datasync`.
    fn fsync(&mut self, file: usize, datasync: bool) -> io::Result<()>;
    /// Opens the file again with O_APPEND, writes all of `data` with write(2), closes it;
    /// returns the size fstat shows before closing.
    fn append(&mut self, file: usize, data: &[u8]) -> io::Result<u64>;
    /// Reads `buf.len()` bytes at `offset` through a shared mmap(2) of the file; the range
    /// lies inside the file.
    fn map_read(&mut self, file: usize, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes `data` at `offset` through a shared mmap(2) and msync(2)s it; the range lies
    /// inside the file.
    fn map_write(&mut self, file: usize, offset: u64, data: &[u8]) -> io::Result<()>;
}

/// A shared mapping of `[offset rounded down to a page, offset + len)` of `fd`, unmapped on drop.
struct Mapping {
    base: *mut libc::c_void,
    map_len: usize,
    /// Where the requested offset lies inside the mapping.
    skew: usize,
}

impl Mapping {
    fn new(fd: i32, offset: u64, len: usize, writable: bool) -> io::Result<Mapping> {
        if len == 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let page = 4096u64;
        let start = offset / page * page;
        let skew = (offset - start) as usize;
        let map_len = skew + len;
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        let start = to_off(start)?;
        // SAFETY: a fresh mapping placed by the kernel (null hint) of an open descriptor; no
        // existing memory is affected. The result is checked against MAP_FAILED below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                prot,
                libc::MAP_SHARED,
                fd,
                start,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            base,
            map_len,
            skew,
        })
    }

    /// Copies `buf.len()` bytes from the mapped range into `buf`.
    fn read_into(&self, buf: &mut [u8]) {
        assert!(self.skew + buf.len() <= self.map_len);
        let src = (self.base as *const u8).wrapping_add(self.skew);
        // SAFETY: `src .. src + buf.len()` lies inside the live, readable mapping (asserted
        // above) of a file range the caller keeps inside the file, so reading it cannot fault;
        // `buf` is a distinct, exclusively borrowed buffer of that length.
        unsafe { libc::memcpy(buf.as_mut_ptr().cast(), src.cast(), buf.len()) };
    }

    /// Copies `data` into the mapped range (the mapping must be writable).
    fn write_from(&mut self, data: &[u8]) {
        assert!(self.skew + data.len() <= self.map_len);
        let dst = (self.base as *mut u8).wrapping_add(self.skew);
        // SAFETY: as in `read_into`; the mapping was made with PROT_WRITE by `map_write`, and
        // `&mut self` makes this the only access to it.
        unsafe { libc::memcpy(dst.cast(), data.as_ptr().cast(), data.len()) };
    }

    fn sync(&self) -> io::Result<()> {
        // SAFETY: `base` and `map_len` describe a live mapping owned by `self`.
        if unsafe { libc::msync(self.base, self.map_len, libc::MS_SYNC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base` and `map_len` describe the mapping made in `new`, not unmapped since;
        // no slice into it outlives `self`.
        unsafe {
            libc::munmap(self.base, self.map_len);
        }
    }
}

fn to_off(v: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(v).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))
}

/// Files `fsx.0`, `fsx.1`, ... in a directory, driven with real system calls.
#[derive(Debug)]
pub struct DirTarget {
    dir: PathBuf,
    files: Vec<Option<File>>,
}

impl DirTarget {
    /// A target for `files` files inside `dir` (nothing is opened until [`Target::open`]).
    pub fn new(dir: &Path, files: usize) -> DirTarget {
        DirTarget {
            dir: dir.to_path_buf(),
            files: (0..files).map(|_| None).collect(),
        }
    }

    /// The path of file number `file`.
    pub fn path(&self, file: usize) -> PathBuf {
        self.dir.join(format!("fsx.{file}"))
    }

    fn file(&self, file: usize) -> io::Result<&File> {
        self.files
            .get(file)
            .and_then(Option::as_ref)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
    }
}

impl Target for DirTarget {
    fn open(&mut self, file: usize, create: bool) -> io::Result<()> {
        let path = self.path(file);
        let slot = self
            .files
            .get_mut(file)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))?;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(create)
            .open(path)?;
        *slot = Some(f);
        Ok(())
    }

    fn close(&mut self, file: usize) {
        if let Some(slot) = self.files.get_mut(file) {
            *slot = None;
        }
    }

    fn pwrite(&mut self, file: usize, offset: u64, data: &[u8]) -> io::Result<usize> {
        self.file(file)?.write_all_at(data, offset)?;
        Ok(data.len())
    }

    fn pread(&mut self, file: usize, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let f = self.file(file)?;
        let mut done = 0;
        while done < buf.len() {
            let n = match f.read_at(&mut buf[done..], offset + done as u64) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }

    fn size(&mut self, file: usize) -> io::Result<u64> {
        Ok(self.file(file)?.metadata()?.len())
    }

    fn truncate(&mut self, file: usize, len: u64) -> io::Result<()> {
        self.file(file)?.set_len(len)
    }

    fn fallocate(
        &mut self,
        file: usize,
        mode: FallocMode,
        offset: u64,
        len: u64,
    ) -> io::Result<()> {
        let fd = self.file(file)?.as_raw_fd();
        let (off, len) = (to_off(offset)?, to_off(len)?);
        // SAFETY: `fd` is an open descriptor owned by `self.files` for the whole call;
        // fallocate takes no pointers.
        let r = unsafe { libc::fallocate(fd, mode.flags(), off, len) };
        if r < 0 {
            return Err(io::Error::last_os_error());
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
        let fd_in = self.file(src)?.as_raw_fd();
        let fd_out = self.file(dst)?.as_raw_fd();
        let mut off_in = to_off(src_offset)?;
        let mut off_out = to_off(dst_offset)?;
        let len = usize::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: both descriptors are open and owned by `self.files` for the whole call;
        // `off_in` and `off_out` are live, exclusively borrowed locals the kernel may update.
        let r = unsafe { libc::copy_file_range(fd_in, &mut off_in, fd_out, &mut off_out, len, 0) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as u64)
    }

    fn seek(&mut self, file: usize, offset: u64, whence: Whence) -> io::Result<u64> {
        let fd = self.file(file)?.as_raw_fd();
        let w = match whence {
            Whence::Data => libc::SEEK_DATA,
            Whence::Hole => libc::SEEK_HOLE,
        };
        // SAFETY: `fd` is an open descriptor owned by `self.files`; lseek takes no pointers.
        let r = unsafe { libc::lseek(fd, to_off(offset)?, w) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as u64)
    }

    fn fsync(&mut self, file: usize, datasync: bool) -> io::Result<()> {
        let f = self.file(file)?;
        if datasync {
            f.sync_data()
        } else {
            f.sync_all()
        }
    }

    fn append(&mut self, file: usize, data: &[u8]) -> io::Result<u64> {
        use std::io::Write;
        self.file(file)?;
        let mut f = OpenOptions::new().append(true).open(self.path(file))?;
        f.write_all(data)?;
        Ok(f.metadata()?.len())
    }

    fn map_read(&mut self, file: usize, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let fd = self.file(file)?.as_raw_fd();
        let m = Mapping::new(fd, offset, buf.len(), false)?;
        m.read_into(buf);
        Ok(())
    }

    fn map_write(&mut self, file: usize, offset: u64, data: &[u8]) -> io::Result<()> {
        let fd = self.file(file)?.as_raw_fd();
        let mut m = Mapping::new(fd, offset, data.len(), true)?;
        m.write_from(data);
        m.sync()
    }
}
