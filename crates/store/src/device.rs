//! Block devices: the byte-addressed backing store under everything (an image file, a raw block
//! device, or memory for tests).
//!
//! Devices are positional and take `&self`, so readers and a committing writer can share one
//! device across threads. `flush` is the only durability point: a write that returned is not
//! durable until a later `flush` returns.

use std::fs::{File, OpenOptions};
use std::io::IoSlice;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::RwLock;

use crate::error::{Error, Result};
use crate::read_buf::ReadBuf;

/// A byte-addressed device with an explicit durability barrier.
pub trait BlockDevice: Send + Sync {
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    /// Writes all of `buf` at `offset`. Not durable until [`BlockDevice::flush`] returns.
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()>;
    /// Makes every write that returned before this call durable.
    fn flush(&self) -> Result<()>;
    /// The device's size in bytes.
    fn size(&self) -> u64;
    /// Writes `bufs` one after another from `offset`, as one write of their concatenation.
    /// Lets a caller holding data in pieces (a flush's 4 KiB dirty blocks) skip copying them
    /// into one buffer. The default writes each piece in turn.
    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> Result<()> {
        let mut at = offset;
        for b in bufs {
            self.write_at(b, at)?;
            at += b.len() as u64;
        }
        Ok(())
    }
    /// Reads `len` bytes at `offset` into new memory. The default zero-fills a vector and
    /// reads into it; a device that can read into uninitialized memory skips the zeroing (a
    /// cold read spent 5% of the daemon's time in it).
    fn read_buf(&self, offset: u64, len: usize) -> Result<ReadBuf> {
        let mut buf = vec![0u8; len];
        self.read_at(&mut buf, offset)?;
        Ok(ReadBuf::from_vec(buf))
    }
    /// A hint: `len` bytes written at `offset` will have to be durable at the next
    /// [`BlockDevice::flush`], so the device may start writing them back now, without waiting.
    /// Changes no byte and no guarantee; the default does nothing.
    fn start_writeback(&self, offset: u64, len: u64) -> Result<()> {
        let _ = (offset, len);
        Ok(())
    }
}

/// Shared and borrowed devices are devices, so wrappers such as the crash harness's recording
/// device can sit over an `Arc<dyn BlockDevice>` as well as over a concrete one.
impl<T: BlockDevice + ?Sized> BlockDevice for std::sync::Arc<T> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        (**self).read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        (**self).write_at(buf, offset)
    }
    fn flush(&self) -> Result<()> {
        (**self).flush()
    }
    fn start_writeback(&self, offset: u64, len: u64) -> Result<()> {
        (**self).start_writeback(offset, len)
    }
    fn read_buf(&self, offset: u64, len: usize) -> Result<ReadBuf> {
        (**self).read_buf(offset, len)
    }
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> Result<()> {
        (**self).write_vectored_at(bufs, offset)
    }
}

impl<T: BlockDevice + ?Sized> BlockDevice for &T {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        (**self).read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        (**self).write_at(buf, offset)
    }
    fn flush(&self) -> Result<()> {
        (**self).flush()
    }
    fn start_writeback(&self, offset: u64, len: u64) -> Result<()> {
        (**self).start_writeback(offset, len)
    }
    fn read_buf(&self, offset: u64, len: usize) -> Result<ReadBuf> {
        (**self).read_buf(offset, len)
    }
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> Result<()> {
        (**self).write_vectored_at(bufs, offset)
    }
}

fn check_range(offset: u64, len: usize, size: u64) -> Result<()> {
    let len = len as u64;
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::OutOfRange { offset, len, size }),
    }
}

/// The most pieces one `pwritev` takes (Linux's IOV_MAX).
const IOV_MAX: usize = 1024;

/// Reads at least this large stream file data (a run of a file's extents, scrub, relocation):
/// once read, their range is dropped from the host's page cache, so the host does not keep the
/// ciphertext beside the plaintext FUSE caches, nor twice the memory of a large cold read.
/// They are read through the cache all the same, not around it (`O_DIRECT`): the host's
/// readahead keeps the disk busy with large requests, and a cold 1 GiB read through the mount
/// ran about 1.5 times as fast as with 1 MiB direct reads (bench/RESULTS.md, run 35). Smaller
/// reads stay cached, where a repeated small read finds them.
pub const STREAM_READ_MIN: usize = 128 << 10;

/// An image file or a raw block device node.
#[derive(Debug)]
pub struct FileDevice {
    file: File,
    size: u64,
    /// Held across each write: Linux serializes buffered writes to one file on its inode lock
    /// anyway, and waiting here sleeps where waiting there spins (a flush writes extents from
    /// two threads, and the spinning took CPU from the other thread's encryption).
    writing: std::sync::Mutex<()>,
}

impl FileDevice {
    /// Creates (or truncates) a sparse image file of `size` bytes.
    pub fn create(path: &Path, size: u64) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| Error::io(format!("create image {}", path.display()), e))?;
        file.set_len(size)
            .map_err(|e| Error::io(format!("size image {}", path.display()), e))?;
        Ok(FileDevice::new(file, size))
    }

    /// Opens an existing image file or block device. The size of a block device is found by
    /// seeking to its end, which works where `metadata().len()` reports 0.
    pub fn open(path: &Path, writable: bool) -> Result<Self> {
        use std::io::{Seek, SeekFrom};
        let mut file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|e| Error::io(format!("size of {}", path.display()), e))?;
        Ok(FileDevice::new(file, size))
    }

    fn new(file: File, size: u64) -> Self {
        FileDevice {
            file,
            size,
            writing: std::sync::Mutex::new(()),
        }
    }

    /// Writes all of `buf` at `offset`; the caller holds `writing`.
    fn write_all_locked(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| Error::io(format!("write {} bytes at {offset}", buf.len()), e))
    }
}

impl BlockDevice for FileDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len(), self.size)?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| Error::io(format!("read {} bytes at {offset}", buf.len()), e))
    }

    /// `pread` into a vector's spare capacity (rustix fills it and sets the length), again after
    /// a short read or a signal, until `len` bytes are in. A streaming read
    /// ([`STREAM_READ_MIN`]) then drops its range from the host's cache.
    fn read_buf(&self, offset: u64, len: usize) -> Result<ReadBuf> {
        check_range(offset, len, self.size)?;
        let mut buf = Vec::with_capacity(len);
        while buf.len() < len {
            let at = offset + buf.len() as u64;
            let n =
                match rustix::io::pread(&self.file, rustix::buffer::spare_capacity(&mut buf), at) {
                    Ok(n) => n,
                    // A signal before any byte: nothing was read, ask again (as read_exact_at does).
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => {
                        return Err(Error::io(
                            format!("read {len} bytes at {offset}"),
                            std::io::Error::from(e),
                        ));
                    }
                };
            if n == 0 {
                return Err(Error::io(
                    format!("read {len} bytes at {offset}"),
                    std::io::ErrorKind::UnexpectedEof.into(),
                ));
            }
        }
        if len >= STREAM_READ_MIN {
            // Advice only: the bytes are read, and a failure to drop them costs memory, not
            // correctness. Linux drops only clean pages; dirty ones stay until written back.
            let _ = rustix::fs::fadvise(
                &self.file,
                offset,
                std::num::NonZeroU64::new(len as u64),
                rustix::fs::Advice::DontNeed,
            );
        }
        Ok(ReadBuf::from_vec(buf))
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len(), self.size)?;
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        self.write_all_locked(buf, offset)
    }

    fn flush(&self) -> Result<()> {
        self.file.sync_data().map_err(|e| Error::io("flush", e))
    }

    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> Result<()> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        check_range(offset, total, self.size)?;
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let mut at = offset;
        for group in bufs.chunks(IOV_MAX) {
            let slices: Vec<IoSlice<'_>> = group.iter().map(|b| IoSlice::new(b)).collect();
            let len: usize = group.iter().map(|b| b.len()).sum();
            let done = rustix::io::pwritev(&self.file, &slices, at).map_err(|e| {
                Error::io(
                    format!("write {len} bytes at {at}"),
                    std::io::Error::from(e),
                )
            })?;
            if done < len {
                // A short write (a signal, a full disk): the rest piece by piece, which
                // finishes it or reports why not.
                let mut pos = at;
                let mut skip = done;
                for b in group {
                    let n = b.len();
                    if skip < n {
                        self.write_all_locked(&b[skip..], pos + skip as u64)?;
                    }
                    skip = skip.saturating_sub(n);
                    pos += n as u64;
                }
            }
            at += len as u64;
        }
        Ok(())
    }

    fn size(&self) -> u64 {
        self.size
    }

    /// `sync_file_range(SYNC_FILE_RANGE_WRITE)`: the host starts writing the range back
    /// without waiting for it, so the flush at the next commit finds most of it done (a
    /// large write's commit then waits for its tail, not for all of it).
    #[allow(unsafe_code)]
    fn start_writeback(&self, offset: u64, len: u64) -> Result<()> {
        use std::os::fd::AsRawFd;
        check_range(
            offset,
            usize::try_from(len).unwrap_or(usize::MAX),
            self.size,
        )?;
        let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Ok(());
        };
        // SAFETY: the descriptor is this device's open file, alive for the call; the call
        // takes plain integers and touches no memory of ours.
        let r = unsafe {
            libc::sync_file_range(self.file.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE)
        };
        if r != 0 {
            return Err(Error::io(
                format!("start writeback of {len} bytes at {offset}"),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }
}

/// A device in memory, for tests and the crash harness.
#[derive(Debug)]
pub struct MemDevice {
    bytes: RwLock<Vec<u8>>,
}

impl MemDevice {
    /// A zero-filled device of `size` bytes.
    pub fn new(size: usize) -> Self {
        MemDevice {
            bytes: RwLock::new(vec![0; size]),
        }
    }

    /// A device holding a copy of `image`.
    pub fn from_bytes(image: Vec<u8>) -> Self {
        MemDevice {
            bytes: RwLock::new(image),
        }
    }

    /// A copy of the whole device.
    pub fn snapshot(&self) -> Vec<u8> {
        self.bytes.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl BlockDevice for MemDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let bytes = self.bytes.read().unwrap_or_else(|p| p.into_inner());
        check_range(offset, buf.len(), bytes.len() as u64)?;
        let start = offset as usize;
        buf.copy_from_slice(&bytes[start..start + buf.len()]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let mut bytes = self.bytes.write().unwrap_or_else(|p| p.into_inner());
        check_range(offset, buf.len(), bytes.len() as u64)?;
        let start = offset as usize;
        bytes[start..start + buf.len()].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn size(&self) -> u64 {
        self.bytes.read().unwrap_or_else(|p| p.into_inner()).len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_device_round_trip_and_bounds() {
        let dev = MemDevice::new(8192);
        dev.write_at(b"hello", 4090).unwrap();
        let mut buf = [0u8; 5];
        dev.read_at(&mut buf, 4090).unwrap();
        assert_eq!(&buf, b"hello");
        assert!(matches!(
            dev.write_at(b"xx", 8191),
            Err(Error::OutOfRange { .. })
        ));
        assert!(dev.read_at(&mut buf, u64::MAX - 1).is_err());
    }

    #[test]
    fn shared_and_borrowed_devices_reach_the_same_bytes() {
        let dev = std::sync::Arc::new(MemDevice::new(4096));
        let shared: std::sync::Arc<dyn BlockDevice> = dev.clone();
        shared.write_at(b"abc", 1).unwrap();
        let borrowed: &dyn BlockDevice = &*dev;
        let mut buf = [0u8; 3];
        (&borrowed).read_at(&mut buf, 1).unwrap();
        assert_eq!(&buf, b"abc");
        assert_eq!(BlockDevice::size(&shared), 4096);
        assert!(shared.write_at(b"abc", 4095).is_err());
    }

    #[test]
    fn file_device_image_is_sparse_and_bounded() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let dev = FileDevice::create(&path, 1 << 30).unwrap();
        dev.write_at(&[1u8; 4096], 512 << 20).unwrap();
        dev.flush().unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 1 << 30);
        // Only what was written takes space (st_blocks counts 512-byte units).
        assert!(meta.blocks() * 512 < 1 << 20, "{} blocks", meta.blocks());
        assert!(matches!(
            dev.write_at(&[0u8; 2], (1 << 30) - 1),
            Err(Error::OutOfRange { .. })
        ));
        let mut buf = [0u8; 8];
        assert!(dev.read_at(&mut buf, u64::MAX - 4).is_err());
        drop(dev);
        // Opened read-only, a write is an I/O error, not a panic.
        let ro = FileDevice::open(&path, false).unwrap();
        assert!(matches!(ro.write_at(&[0u8; 1], 0), Err(Error::Io { .. })));
        assert!(FileDevice::open(&dir.path().join("missing"), false).is_err());
    }

    /// A vectored write lands as the concatenation of its pieces, past IOV_MAX pieces too, on
    /// a file and through the default (piece by piece) on memory; out of range is refused.
    #[test]
    fn vectored_writes_are_one_write_of_the_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let file = FileDevice::create(&dir.path().join("img"), 16 << 20).unwrap();
        let mem = MemDevice::new(16 << 20);
        let pieces: Vec<Vec<u8>> = (0..IOV_MAX + 5)
            .map(|i| vec![(i % 251) as u8; 512 * (1 + i % 3)])
            .collect();
        let bufs: Vec<&[u8]> = pieces.iter().map(|p| &p[..]).collect();
        let whole = pieces.concat();
        for dev in [&file as &dyn BlockDevice, &mem] {
            dev.write_vectored_at(&bufs, 4096).unwrap();
            let mut back = vec![0u8; whole.len()];
            dev.read_at(&mut back, 4096).unwrap();
            assert_eq!(back, whole);
            assert!(matches!(
                dev.write_vectored_at(&bufs, (16 << 20) - 4096),
                Err(Error::OutOfRange { .. })
            ));
        }
    }

    /// A file device reads into new memory what `read_at` reads (up to the end, and nothing
    /// past it), and so does the default on memory.
    #[test]
    fn reads_into_new_memory_match_reads_into_buffers() {
        let dir = tempfile::tempdir().unwrap();
        let file = FileDevice::create(&dir.path().join("img"), 4 << 20).unwrap();
        let mem = MemDevice::new(4 << 20);
        let data: Vec<u8> = (0..(3 << 20) + 512).map(|i| (i % 253) as u8).collect();
        for dev in [&file as &dyn BlockDevice, &mem] {
            dev.write_at(&data, (1 << 20) - 512).unwrap();
            let got = dev.read_buf((1 << 20) - 512, data.len()).unwrap();
            assert!(got == data);
            let mut buf = vec![0u8; 4096];
            dev.read_at(&mut buf, 4 << 19).unwrap();
            assert_eq!(dev.read_buf(4 << 19, 4096).unwrap(), buf);
            assert!(dev.read_buf(0, 0).unwrap().is_empty());
            assert!(matches!(
                dev.read_buf((4 << 20) - 4096, 8192),
                Err(Error::OutOfRange { .. })
            ));
        }
    }

    /// Pages of `len` bytes of `file` from `offset` (page-aligned) in the host's page cache.
    #[allow(unsafe_code)]
    fn cached_pages(file: &File, offset: u64, len: usize) -> usize {
        use std::os::fd::AsRawFd;
        let pages = len.div_ceil(4096);
        let mut resident = vec![0u8; pages];
        // SAFETY: a shared read-only mapping of `len` bytes of an open file, inside its size;
        // mincore writes one byte per page of it into `resident`, which has room for each,
        // and the mapping is unmapped before returning, with no reference into it left.
        unsafe {
            let at = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset as libc::off_t,
            );
            assert_ne!(at, libc::MAP_FAILED);
            assert_eq!(libc::mincore(at, len, resident.as_mut_ptr()), 0);
            libc::munmap(at, len);
        }
        resident.iter().filter(|&&r| r & 1 == 1).count()
    }

    /// Large reads see every write, written back or not, and leave the host's cache once
    /// read; small ones stay cached.
    #[test]
    fn streaming_reads_see_every_write_and_leave_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let dev = FileDevice::create(&dir.path().join("img"), 8 << 20).unwrap();
        let mut data: Vec<u8> = (0..(2 << 20)).map(|i| (i % 251) as u8).collect();
        dev.write_at(&data, 1 << 20).unwrap();
        dev.flush().unwrap();
        let got = dev.read_buf(1 << 20, data.len()).unwrap();
        assert!(got == data);
        // tmpfs keeps every page: there the advice cannot drop anything.
        let on_tmpfs = rustix::fs::fstatfs(&dev.file).unwrap().f_type == libc::TMPFS_MAGIC;
        if !on_tmpfs {
            assert_eq!(cached_pages(&dev.file, 1 << 20, data.len()), 0);
        }
        // Overwritten in the cache only: the next read sees the new bytes.
        dev.write_at(&[0xee; 4096], (1 << 20) + 8192).unwrap();
        let again = dev.read_buf(1 << 20, STREAM_READ_MIN).unwrap();
        assert_eq!(again[8192..8192 + 4096], [0xee; 4096]);
        data[8192..8192 + 4096].fill(0xee);
        assert!(again == data[..STREAM_READ_MIN]);
        dev.flush().unwrap();
        let small = dev.read_buf(2 << 20, STREAM_READ_MIN - 4096).unwrap();
        assert!(small == data[(1 << 20)..(1 << 20) + STREAM_READ_MIN - 4096]);
        if !on_tmpfs {
            assert_eq!(
                cached_pages(&dev.file, 2 << 20, STREAM_READ_MIN - 4096),
                STREAM_READ_MIN / 4096 - 1
            );
        }
        let unaligned = dev.read_buf((1 << 20) + 512, STREAM_READ_MIN).unwrap();
        assert_eq!(unaligned[..], data[512..512 + STREAM_READ_MIN]);
        assert!(matches!(
            dev.read_buf((8 << 20) - STREAM_READ_MIN as u64, 2 * STREAM_READ_MIN),
            Err(Error::OutOfRange { .. })
        ));
    }

    /// Set in the child process of `a_short_vectored_write_is_finished_or_reported`.
    const SHORT_WRITE_CHILD: &str = "COWCRYPT_SHORT_WRITE_CHILD";

    /// A `pwritev` cut short (here by the file size limit, as a full disk would) goes on piece
    /// by piece from where it stopped: the bytes before the limit land, and the write past it
    /// is reported, never taken for done. Runs in a child process, since the limit holds for a
    /// whole process.
    #[test]
    fn a_short_vectored_write_is_finished_or_reported() {
        if std::env::var_os(SHORT_WRITE_CHILD).is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "device::tests::a_short_vectored_write_is_finished_or_reported",
                    "--nocapture",
                ])
                .env(SHORT_WRITE_CHILD, "1")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && text.contains("1 passed"),
                "child: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let dev = FileDevice::create(&dir.path().join("img"), 1 << 20).unwrap();
        let limit = libc::rlimit {
            rlim_cur: 64 << 10,
            rlim_max: libc::RLIM_INFINITY,
        };
        #[allow(unsafe_code)]
        // SAFETY: plain calls on this process with a valid struct; SIGXFSZ ignored so that a
        // write past the limit fails with EFBIG instead of killing the process.
        unsafe {
            assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        }
        let (a, b) = (vec![0xaa; 16 << 10], vec![0xbb; 48 << 10]);
        let err = dev.write_vectored_at(&[&a, &b], 32 << 10).unwrap_err();
        assert!(
            matches!(&err, Error::Io { source, .. } if source.raw_os_error() == Some(libc::EFBIG)),
            "{err:?}"
        );
        let mut back = vec![0u8; 32 << 10];
        dev.read_at(&mut back, 32 << 10).unwrap();
        assert_eq!(back[..16 << 10], a[..]);
        assert_eq!(back[16 << 10..], b[..16 << 10]);
    }

    /// The hint is taken for a range of the file (and changes no byte), refused past its end.
    #[test]
    fn file_devices_start_writeback_of_a_range() {
        let dir = tempfile::tempdir().unwrap();
        let dev = FileDevice::create(&dir.path().join("img"), 1 << 20).unwrap();
        dev.write_at(&[9u8; 8192], 4096).unwrap();
        dev.start_writeback(4096, 8192).unwrap();
        let mut back = [0u8; 8192];
        dev.read_at(&mut back, 4096).unwrap();
        assert_eq!(back, [9u8; 8192]);
        assert!(matches!(
            dev.start_writeback((1 << 20) - 4096, 8192),
            Err(Error::OutOfRange { .. })
        ));
    }

    #[test]
    fn file_device_persists_across_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let dev = FileDevice::create(&path, 1 << 20).unwrap();
        dev.write_at(&[7u8; 4096], 8192).unwrap();
        dev.flush().unwrap();
        drop(dev);
        let dev = FileDevice::open(&path, false).unwrap();
        assert_eq!(dev.size(), 1 << 20);
        let mut buf = [0u8; 4096];
        dev.read_at(&mut buf, 8192).unwrap();
        assert!(buf.iter().all(|&b| b == 7));
    }
}
