//! The public [`Filesystem`]: lifecycle (mkfs, open, sync, unmount), the background commit and
//! flush threads, and every operation of docs/FS-API.md. Each call takes the state lock, runs
//! one operation on the open transaction, and commits when a bound is passed. Writes hand
//! buffered data to the flush thread (write-behind); everything else waits for it to land.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use store::{BlockDevice, DataRefs, FileDevice, ItemDataRef, Key, ReadBuf, ResizeReport, Store};

use crate::balance::BalanceReport;
use crate::check::FsckReport;
use crate::data::Flight;
use crate::error::{Error, Result};
use crate::inspect::Inspection;
use crate::items::{self, FileExtent, InodeItem, ROOT_OBJECTID, SubvolInfo, ty};
use crate::keys::{KeyRemoval, KeyStatusReport};
use crate::scrub::ScrubReport;
use crate::state::{State, TREE, check_name, objectid};
use crate::subvol::{SubvolumeEntry, SubvolumeList};
use crate::types::{
    Attr, Caller, DirEntry, FallocMode, Fh, FileKind, Ino, MkfsOptions, OpenFlags, OpenOptions,
    RenameFlags, SetAttr, StatFs, Timespec, Whence,
};
use crate::usage::{DiskUsage, SpaceReport};

/// Item changes after which the open transaction is committed, whatever the timer says.
const MAX_UNCOMMITTED_CHANGES: u64 = 200_000;

/// Tells the store which items reference data extents: our file extent items.
struct FileExtentRefs;

impl DataRefs for FileExtentRefs {
    fn data_ref(&self, key: &Key, value: &[u8]) -> Option<ItemDataRef> {
        if key.item_type != ty::FILE_EXTENT {
            return None;
        }
        let fe = FileExtent::decode(key, value).ok()?;
        Some(ItemDataRef {
            bytenr: fe.bytenr,
            len: fe.extent_len,
            inode: key.objectid,
            offset: key.offset.wrapping_sub(fe.offset),
        })
    }
}

struct Shared {
    state: Mutex<State>,
    /// Set to stop the commit thread.
    stop: Mutex<bool>,
    wake: Condvar,
    /// Signalled when a flight of buffered data lands (with `state`).
    landed: Condvar,
}

impl Shared {
    /// The state, once no flight is up: what every operation but a write needs.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.wait_landed(self.lock_in_flight())
    }

    /// The state, even with a flight up: for writes (which check what they need of it) and for
    /// landing it.
    fn lock_in_flight(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait_landed<'a>(&self, s: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.landed
            .wait_while(s, |s| s.flight_active())
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Writes a flight without the lock, lands it under it, and wakes whoever waits for that.
    fn fly(&self, flight: Flight) {
        let written = flight.write();
        let mut s = self.lock_in_flight();
        land_or_stop(&mut s, written);
        drop(s);
        self.landed.notify_all();
    }
}

/// Lands a flight. One that could not be written, or mapped, stops the filesystem, as any
/// write failing half way: its data was acknowledged.
fn land_or_stop(s: &mut State, written: Result<Vec<crate::data::WrittenExtent>>) {
    match s.land(written) {
        Err(e) if s.failed.is_none() => {
            eprintln!(
                "cowfs: writing buffered data: {e}; no further changes are accepted, remount to recover"
            );
            s.failed = Some(format!("writing buffered data: {e}"));
        }
        Ok(()) if s.changes - s.committed_changes > MAX_UNCOMMITTED_CHANGES => {
            if let Err(e) = s.commit() {
                eprintln!("cowfs: commit: {e}");
            }
        }
        _ => {}
    }
}

/// Writes flights of buffered data as they come, until the sending side is dropped.
/// A panic in a flight (a bug) must not leave every other operation waiting for a landing that
/// never comes: the filesystem stops instead, as after a failed write.
fn flush_loop(shared: &Shared, flights: mpsc::Receiver<Flight>, delay: Duration) {
    while let Ok(flight) = flights.recv() {
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let flown = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shared.fly(flight)));
        if flown.is_err() {
            let mut s = shared.lock_in_flight();
            s.in_flight.clear();
            if s.failed.is_none() {
                eprintln!("cowfs: the flush thread panicked; remount to recover");
                s.failed = Some("the flush thread panicked".into());
            }
            drop(s);
            shared.landed.notify_all();
        }
    }
}

/// An open filesystem. `Send + Sync`: share it through an `Arc`.
pub struct Filesystem {
    shared: Arc<Shared>,
    committer: Option<JoinHandle<()>>,
    /// Where writes send flights of buffered data, and the thread that writes them (none when
    /// read-only).
    flights: Option<mpsc::Sender<Flight>>,
    flusher: Option<JoinHandle<()>>,
    /// The master keys added to this filesystem (memory only, as the kernel's keyring); the
    /// state holds the same keyring to unlock files with.
    keyring: Arc<fscrypt::keyring::Keyring>,
    /// Reads done outside the lock that failed and were done again under it (a damaged or
    /// tampered extent, or a race the read view should have prevented).
    read_retries: std::sync::atomic::AtomicU64,
}

impl Filesystem {
    // --- Lifecycle ----------------------------------------------------------------------------

    /// Makes a new filesystem on `dev`: the store's trees, subvolume 0 and its root directory.
    pub fn mkfs(dev: Arc<dyn BlockDevice>, opts: &MkfsOptions) -> Result<()> {
        let store = Store::create(
            dev,
            store::MkfsOptions {
                node_size: opts.node_size,
                fs_uuid: opts.uuid,
                label: opts.label.clone(),
                ..store::MkfsOptions::default()
            },
        )?;
        let mut t = store.begin()?;
        t.create_tree(TREE)?;
        let info = SubvolInfo {
            next_objectid: ROOT_OBJECTID + 1,
        };
        t.insert(TREE, Key::new(0, ty::SUBVOL_INFO, 0), &info.encode())?;
        let now = Timespec::now();
        let root = InodeItem {
            kind: FileKind::Dir,
            perm: 0o755,
            nlink: 2,
            uid: 0,
            gid: 0,
            rdev: 0,
            size: 0,
            bytes: 0,
            generation: t.generation(),
            next_index: items::FIRST_DIR_INDEX,
            flags: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
        };
        t.insert(TREE, Key::new(ROOT_OBJECTID, ty::INODE, 0), &root.encode())?;
        t.commit()?;
        Ok(())
    }

    /// Opens the filesystem on `dev`. A writable open removes orphans a crash left. (Named
    /// `open_device` because `open` is the open(2) of a file.)
    pub fn open_device(dev: Arc<dyn BlockDevice>, opts: &OpenOptions) -> Result<Filesystem> {
        let store = Arc::new(Store::open(dev)?);
        store.set_data_refs(Arc::new(FileExtentRefs));
        let mut state = State::new(store, opts.clone())?;
        if !opts.read_only {
            state.clean_orphans()?;
            state.commit()?;
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            stop: Mutex::new(false),
            wake: Condvar::new(),
            landed: Condvar::new(),
        });
        let committer = if opts.read_only {
            None
        } else {
            let s = shared.clone();
            let every = opts.commit_interval.max(Duration::from_millis(10));
            Some(
                std::thread::Builder::new()
                    .name("cowfs-commit".into())
                    .spawn(move || commit_loop(&s, every))
                    .map_err(|e| {
                        Error::Store(store::Error::Io {
                            context: "start the commit thread".into(),
                            source: e,
                        })
                    })?,
            )
        };
        let (flights, flusher) = if opts.read_only {
            (None, None)
        } else {
            let (tx, rx) = mpsc::channel();
            let s = shared.clone();
            let delay = opts.flight_delay;
            let h = std::thread::Builder::new()
                .name("cowfs-flush".into())
                .spawn(move || flush_loop(&s, rx, delay))
                .map_err(|e| {
                    Error::Store(store::Error::Io {
                        context: "start the flush thread".into(),
                        source: e,
                    })
                })?;
            (Some(tx), Some(h))
        };
        let keyring = shared.lock().keyring.clone();
        Ok(Filesystem {
            shared,
            committer,
            flights,
            flusher,
            keyring,
            read_retries: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Makes a filesystem in a sparse image file of `size` bytes (created or truncated), or on
    /// a block device (its whole size; `size` is then ignored).
    pub fn mkfs_image(path: &Path, size: u64, opts: &MkfsOptions) -> Result<()> {
        let dev: Arc<dyn BlockDevice> = if is_block_device(path) {
            Arc::new(FileDevice::open(path, true)?)
        } else {
            Arc::new(FileDevice::create(path, size)?)
        };
        Filesystem::mkfs(dev, opts)
    }

    /// Grows or shrinks the filesystem on `dev` (neither mounted nor open) to `new_size` bytes
    /// of it: growing maps chunks onto the added space (`dev` must already be that large);
    /// shrinking drops unused chunks beyond the new end and moves used ones, whole and as
    /// stored (no key needed), below it. Crash-safe: one commit switches the mappings.
    /// `progress(done, total)` counts bytes moved.
    pub fn resize_device(
        dev: Arc<dyn BlockDevice>,
        new_size: u64,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<ResizeReport> {
        let store = Store::open(dev)?;
        Ok(store.resize(new_size, progress)?)
    }

    /// [`Filesystem::resize_device`] on an image file (extended first, cut after a shrink) or a
    /// block device (which must be at least `new_size` bytes).
    pub fn resize_image(
        path: &Path,
        new_size: u64,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<ResizeReport> {
        let io = |context: &str, source: std::io::Error| {
            Error::Store(store::Error::Io {
                context: format!("{context} {}", path.display()),
                source,
            })
        };
        let file = !is_block_device(path);
        if file {
            let len = std::fs::metadata(path)
                .map_err(|e| io("cannot stat", e))?
                .len();
            if new_size > len {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .and_then(|f| f.set_len(new_size))
                    .map_err(|e| io("cannot extend", e))?;
            }
        }
        let dev: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(path, true)?);
        let r = Filesystem::resize_device(dev, new_size, progress)?;
        if file && r.new_size < r.old_size {
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| f.set_len(r.new_size))
                .map_err(|e| io("cannot cut", e))?;
        }
        Ok(r)
    }

    /// Opens the filesystem in an image file or on a block device.
    pub fn open_image(path: &Path, opts: &OpenOptions) -> Result<Filesystem> {
        let dev = Arc::new(FileDevice::open(path, !opts.read_only)?);
        Filesystem::open_device(dev, opts)
    }

    /// Commits everything; durable on return.
    pub fn sync(&self) -> Result<()> {
        self.shared.lock().commit()
    }

    /// Lands the last flight, stops the background threads and syncs.
    pub fn unmount(mut self) -> Result<()> {
        self.stop_threads();
        let mut s = self.shared.lock();
        if s.opts.read_only {
            return Ok(());
        }
        s.commit()
    }

    /// Stops the commit thread, and the flush thread once its last flight has landed.
    fn stop_threads(&mut self) {
        *self.shared.stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.shared.wake.notify_all();
        if let Some(h) = self.committer.take()
            && h.join().is_err()
        {
            eprintln!("cowfs: the commit thread panicked");
        }
        self.flights = None;
        if let Some(h) = self.flusher.take()
            && h.join().is_err()
        {
            eprintln!("cowfs: the flush thread panicked");
        }
    }

    /// Runs one operation under the state lock, once no flight is up.
    fn op<T>(&self, f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        let mut s = self.shared.lock();
        self.op_in(&mut s, f)
    }

    /// Runs one operation under `s`. If it fails after changing items, the transaction holds
    /// half an operation: the filesystem stops taking changes.
    fn op_in<T>(
        &self,
        s: &mut MutexGuard<'_, State>,
        f: impl FnOnce(&mut State) -> Result<T>,
    ) -> Result<T> {
        let before = s.changes;
        s.settled_changes = before;
        let r = f(s);
        match &r {
            // Changes all committed (a commit to make room), or all settled (a data flush before
            // the error), leave nothing half done.
            Err(e)
                if s.changes != s.settled_changes
                    && s.changes != s.committed_changes
                    && s.failed.is_none() =>
            {
                s.failed = Some(format!("operation failed part way: {e}"));
                eprintln!("cowfs: {e}; no further changes are accepted, remount to recover");
            }
            // With a flight up, the landing commits instead.
            Ok(_)
                if !s.flight_active()
                    && s.changes - s.committed_changes > MAX_UNCOMMITTED_CHANGES =>
            {
                if let Err(e) = s.commit() {
                    eprintln!("cowfs: commit: {e}");
                }
            }
            _ => {}
        }
        r
    }

    // --- Names and attributes -----------------------------------------------------------------

    pub fn lookup(&self, parent: Ino, name: &[u8], c: &Caller) -> Result<Attr> {
        self.op(|s| s.lookup(objectid(parent)?, name, c))
    }

    pub fn getattr(&self, ino: Ino) -> Result<Attr> {
        self.op(|s| s.getattr_obj(objectid(ino)?))
    }

    pub fn setattr(&self, ino: Ino, set: &SetAttr, fh: Option<Fh>, c: &Caller) -> Result<Attr> {
        self.op(|s| s.setattr(objectid(ino)?, set, fh, c))
    }

    pub fn access(&self, ino: Ino, mask: i32, c: &Caller) -> Result<()> {
        self.op(|s| s.access(objectid(ino)?, mask, c))
    }

    pub fn mknod(
        &self,
        parent: Ino,
        name: &[u8],
        mode: u32,
        rdev: u32,
        c: &Caller,
    ) -> Result<Attr> {
        // Type bits 0 make a regular file, as mknod(2) says.
        let kind = if mode & libc::S_IFMT == 0 {
            FileKind::File
        } else {
            FileKind::from_mode(mode).ok_or(Error::Invalid("mknod file type"))?
        };
        if kind == FileKind::Dir || kind == FileKind::Symlink {
            return Err(Error::Invalid("mknod of a directory or symlink"));
        }
        if matches!(kind, FileKind::CharDev | FileKind::BlockDev) && c.uid != 0 {
            return Err(Error::Perm);
        }
        self.op(|s| s.make(objectid(parent)?, name, kind, mode, rdev, None, c))
    }

    pub fn mkdir(&self, parent: Ino, name: &[u8], mode: u32, c: &Caller) -> Result<Attr> {
        self.op(|s| s.make(objectid(parent)?, name, FileKind::Dir, mode, 0, None, c))
    }

    pub fn symlink(&self, parent: Ino, name: &[u8], target: &[u8], c: &Caller) -> Result<Attr> {
        self.op(|s| {
            s.make(
                objectid(parent)?,
                name,
                FileKind::Symlink,
                0o777,
                0,
                Some(target),
                c,
            )
        })
    }

    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        self.op(|s| s.readlink(objectid(ino)?))
    }

    pub fn link(&self, ino: Ino, new_parent: Ino, new_name: &[u8], c: &Caller) -> Result<Attr> {
        self.op(|s| s.link(objectid(ino)?, objectid(new_parent)?, new_name, c))
    }

    pub fn unlink(&self, parent: Ino, name: &[u8], c: &Caller) -> Result<()> {
        self.op(|s| s.unlink(objectid(parent)?, name, c))
    }

    pub fn rmdir(&self, parent: Ino, name: &[u8], c: &Caller) -> Result<()> {
        self.op(|s| s.rmdir(objectid(parent)?, name, c))
    }

    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: RenameFlags,
        c: &Caller,
    ) -> Result<()> {
        self.op(|s| {
            s.rename(
                objectid(parent)?,
                name,
                objectid(new_parent)?,
                new_name,
                flags,
                c,
            )
        })
    }

    /// Kernel lookup counts: an unlinked inode lives until forgotten and closed.
    pub fn forget(&self, ino: Ino, nlookup: u64) {
        let r = self.op(|s| s.forget(objectid(ino)?, nlookup));
        if let Err(e) = r {
            eprintln!("cowfs: forget {ino}: {e}");
        }
    }

    // --- Files --------------------------------------------------------------------------------

    pub fn create(
        &self,
        parent: Ino,
        name: &[u8],
        mode: u32,
        flags: OpenFlags,
        c: &Caller,
    ) -> Result<(Attr, Fh)> {
        self.op(|s| s.create(objectid(parent)?, name, mode, flags, c))
    }

    pub fn open(&self, ino: Ino, flags: OpenFlags, c: &Caller) -> Result<Fh> {
        self.op(|s| s.open(objectid(ino)?, flags, c))
    }

    pub fn read(&self, ino: Ino, fh: Fh, offset: u64, size: u32) -> Result<Vec<u8>> {
        self.read_buf(ino, fh, offset, size)
            .map(store::ReadBuf::into_vec)
    }

    /// [`Filesystem::read`] into the memory the device read into: a large read inside one
    /// extent comes back with no copy after the device's (what the FUSE adapter replies from).
    pub fn read_buf(&self, ino: Ino, fh: Fh, offset: u64, size: u32) -> Result<ReadBuf> {
        let obj = objectid(ino)?;
        // Planned under the lock, the device work done without it, so concurrent requests
        // (readahead) overlap.
        match self.op(|s| s.start_read(obj, fh, offset, size))? {
            crate::file::ReadStart::Done(data) => Ok(ReadBuf::from_vec(data)),
            crate::file::ReadStart::Planned(plan) => match plan.execute() {
                Ok(data) => Ok(data),
                // Answered (and a damaged or tampered extent logged) by the same read under
                // the lock.
                Err(_) => {
                    self.read_retries
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.op(|s| s.read(obj, fh, offset, size))
                        .map(ReadBuf::from_vec)
                }
            },
        }
    }

    /// How many reads done outside the filesystem lock failed and were done again under it
    /// (for tests and diagnostics: outside damage and tampering, it stays 0).
    pub fn read_retries(&self) -> u64 {
        self.read_retries.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Writes at `offset`, or at the end of file for a handle opened with O_APPEND.
    ///
    /// Write-behind: once enough data is buffered, a flight of it goes to the flush thread,
    /// which encrypts and writes it without the lock while further writes fill the buffer
    /// again. A write waits for the flight only when it needs part of a block in it, or room,
    /// or when the buffer is full again (one flight at a time). Every other operation waits
    /// for the landing, so none sees data that is neither buffered nor mapped.
    pub fn write(&self, ino: Ino, fh: Fh, offset: u64, data: &[u8], c: &Caller) -> Result<u32> {
        let obj = objectid(ino)?;
        let mut s = self.shared.lock_in_flight();
        if s.write_needs_landing(obj, fh, offset, data.len() as u64)? {
            s = self.shared.wait_landed(s);
        }
        let n = self.op_in(&mut s, |s| s.write(obj, fh, offset, data, c))?;
        let max = s.opts.max_dirty_bytes;
        if s.dirty_bytes > max / 2 && (!s.flight_active() || s.dirty_bytes > max) {
            s = self.shared.wait_landed(s);
            self.launch(&mut s)?;
        }
        Ok(n)
    }

    /// Sends the buffered data on a flight (written and landed here, under the lock, if the
    /// flush thread is gone).
    fn launch(&self, s: &mut MutexGuard<'_, State>) -> Result<()> {
        self.op_in(s, |s| {
            let (flight, r) = s.take_flight();
            if flight.is_empty() {
                return r;
            }
            let unsent = match &self.flights {
                Some(tx) => tx.send(flight).err().map(|e| e.0),
                None => Some(flight),
            };
            if let Some(flight) = unsent {
                land_or_stop(s, flight.write());
                if let Some(why) = &s.failed {
                    return Err(Error::Stopped(why.clone()));
                }
            }
            r
        })
    }

    pub fn flush(&self, ino: Ino, fh: Fh) -> Result<()> {
        self.op(|s| s.handle(objectid(ino)?, fh).map(drop))
    }

    pub fn release(&self, ino: Ino, fh: Fh) -> Result<()> {
        self.op(|s| s.release(objectid(ino)?, fh))
    }

    /// Durable on return. The whole transaction commits (there is one log: the tree).
    pub fn fsync(&self, ino: Ino, fh: Fh, _datasync: bool) -> Result<()> {
        self.op(|s| {
            s.handle(objectid(ino)?, fh)?;
            s.commit()
        })
    }

    pub fn fallocate(
        &self,
        ino: Ino,
        fh: Fh,
        offset: u64,
        len: u64,
        mode: FallocMode,
        c: &Caller,
    ) -> Result<()> {
        self.op(|s| s.fallocate(objectid(ino)?, fh, offset, len, mode, c))
    }

    /// SEEK_DATA / SEEK_HOLE; ENXIO at or past end of file.
    pub fn lseek(&self, ino: Ino, fh: Fh, offset: u64, whence: Whence) -> Result<u64> {
        self.op(|s| s.lseek(objectid(ino)?, fh, offset, whence))
    }

    /// `cowcrypt reflink`: [`Filesystem::copy_file_range`] between two inodes the caller may
    /// read and write, opened for the call. Unlike through the kernel (which copies when the
    /// filesystem refuses), a refusal such as EXDEV across keys is returned as it is. The whole
    /// of `src` from `off_in` when `len` is `None`; a whole-file reflink first truncates `dst`.
    pub fn reflink(
        &self,
        src: Ino,
        off_in: u64,
        dst: Ino,
        off_out: u64,
        len: Option<u64>,
        c: &Caller,
    ) -> Result<u64> {
        let sh = self.open(src, OpenFlags(libc::O_RDONLY), c)?;
        let dflags = if len.is_none() {
            libc::O_WRONLY | libc::O_TRUNC
        } else {
            libc::O_WRONLY
        };
        let dh = match self.open(dst, OpenFlags(dflags), c) {
            Ok(h) => h,
            Err(e) => {
                let _ = self.release(src, sh);
                return Err(e);
            }
        };
        let len = match len {
            Some(n) => Ok(n),
            None => self.getattr(src).map(|a| a.size.saturating_sub(off_in)),
        };
        let r = len.and_then(|n| {
            let mut done = 0;
            while done < n {
                let k = self.copy_file_range(
                    src,
                    sh,
                    off_in + done,
                    dst,
                    dh,
                    off_out + done,
                    n - done,
                    c,
                )?;
                if k == 0 {
                    break;
                }
                done += k;
            }
            Ok(done)
        });
        let r1 = self.release(src, sh);
        let r2 = self.release(dst, dh);
        let n = r?;
        r1?;
        r2?;
        Ok(n)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn copy_file_range(
        &self,
        ino_in: Ino,
        fh_in: Fh,
        off_in: u64,
        ino_out: Ino,
        fh_out: Fh,
        off_out: u64,
        len: u64,
        c: &Caller,
    ) -> Result<u64> {
        self.op(|s| {
            s.copy_file_range(
                objectid(ino_in)?,
                fh_in,
                off_in,
                objectid(ino_out)?,
                fh_out,
                off_out,
                len,
                c,
            )
        })
    }

    // --- Directories --------------------------------------------------------------------------

    pub fn opendir(&self, ino: Ino, c: &Caller) -> Result<Fh> {
        self.op(|s| s.opendir(objectid(ino)?, c))
    }

    /// Entries after `cookie` (0 = from the start), "." and ".." included.
    pub fn readdir(&self, ino: Ino, fh: Fh, cookie: u64, max: usize) -> Result<Vec<DirEntry>> {
        self.op(|s| s.readdir(objectid(ino)?, fh, cookie, max))
    }

    pub fn readdirplus(
        &self,
        ino: Ino,
        fh: Fh,
        cookie: u64,
        max: usize,
    ) -> Result<Vec<(DirEntry, Attr)>> {
        self.op(|s| s.readdirplus(objectid(ino)?, fh, cookie, max))
    }

    pub fn releasedir(&self, ino: Ino, fh: Fh) -> Result<()> {
        self.op(|s| s.release(objectid(ino)?, fh))
    }

    pub fn fsyncdir(&self, ino: Ino, fh: Fh, _datasync: bool) -> Result<()> {
        self.op(|s| {
            s.handle(objectid(ino)?, fh)?;
            s.commit()
        })
    }

    // --- Extended attributes ------------------------------------------------------------------

    /// `flags`: XATTR_CREATE (1) | XATTR_REPLACE (2).
    pub fn setxattr(
        &self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        flags: i32,
        c: &Caller,
    ) -> Result<()> {
        self.op(|s| s.setxattr(objectid(ino)?, name, value, flags, c))
    }

    pub fn getxattr(&self, ino: Ino, name: &[u8], c: &Caller) -> Result<Vec<u8>> {
        self.op(|s| s.getxattr(objectid(ino)?, name, c))
    }

    pub fn listxattr(&self, ino: Ino, c: &Caller) -> Result<Vec<Vec<u8>>> {
        self.op(|s| s.listxattr(objectid(ino)?, c))
    }

    pub fn removexattr(&self, ino: Ino, name: &[u8], c: &Caller) -> Result<()> {
        self.op(|s| s.removexattr(objectid(ino)?, name, c))
    }

    pub fn statfs(&self) -> Result<StatFs> {
        self.op(|s| s.statfs())
    }

    // --- Subvolumes ---------------------------------------------------------------------------

    /// Makes a new, empty subvolume linked as `name` in directory `parent` (mode as mkdir).
    /// Committed on return, as the snapshot and delete below (btrfs's are durable too).
    pub fn subvolume_create(
        &self,
        parent: Ino,
        name: &[u8],
        mode: u32,
        c: &Caller,
    ) -> Result<Attr> {
        self.op(|s| {
            check_name(name)?;
            let parent = objectid(parent)?;
            let name = s.stored_name(parent, name, true)?;
            let attr = s.subvolume_create(parent, &name, mode, c)?;
            s.commit()?;
            Ok(attr)
        })
    }

    /// Snapshots the subvolume whose root directory is `source` as `name` in `parent`: O(1),
    /// sharing every block. `read_only` snapshots refuse every change (EROFS). Committed on
    /// return (with whatever else was pending).
    pub fn subvolume_snapshot(
        &self,
        source: Ino,
        parent: Ino,
        name: &[u8],
        read_only: bool,
        c: &Caller,
    ) -> Result<Attr> {
        self.op(|s| {
            check_name(name)?;
            let parent = objectid(parent)?;
            let name = s.stored_name(parent, name, true)?;
            let attr = s.subvolume_snapshot(objectid(source)?, parent, &name, read_only, c)?;
            s.commit()?;
            Ok(attr)
        })
    }

    /// Deletes the subvolume linked as `name` in `parent`. Returns at once; its space is freed
    /// in the background (see [`SubvolumeList::deleting`]), also after a remount or crash.
    /// The deletion is committed before returning, so it is durable and `subvolume_list`
    /// counts it from then on (its progress is read from the last commit).
    pub fn subvolume_delete(&self, parent: Ino, name: &[u8], c: &Caller) -> Result<()> {
        self.op(|s| {
            check_name(name)?;
            let parent = objectid(parent)?;
            let name = s.stored_name(parent, name, false)?;
            s.subvolume_delete(parent, &name, c)?;
            s.commit()
        })
    }

    /// Every subvolume, with the deletions still releasing space.
    pub fn subvolume_list(&self) -> Result<SubvolumeList> {
        self.op(|s| s.subvolume_list())
    }

    /// The subvolumes `c` may know of: every one for root; for anyone else the top subvolume
    /// and those whose root directory they own (a subvolume's path names directories the
    /// caller may have no right to search; btrfs lists for root only).
    pub fn subvolume_list_for(&self, c: &Caller) -> Result<SubvolumeList> {
        let mut list = self.subvolume_list()?;
        if c.uid != 0 {
            list.subvolumes
                .retain(|s| s.id == 0 || self.getattr(s.ino).is_ok_and(|a| a.uid == c.uid));
        }
        Ok(list)
    }

    /// The subvolume that inode `ino` belongs to.
    pub fn subvolume_show(&self, ino: Ino) -> Result<SubvolumeEntry> {
        self.op(|s| s.subvolume_show(objectid(ino)?))
    }

    /// Sets or clears the read-only flag of the subvolume whose root is `ino` (root only).
    pub fn subvolume_set_read_only(&self, ino: Ino, read_only: bool, c: &Caller) -> Result<()> {
        self.op(|s| s.subvolume_set_read_only(objectid(ino)?, read_only, c))
    }

    /// Empties data chunks with at most `usage_percent` of them in use (100: every chunk that
    /// holds data) by moving their extents, as stored, into other chunks; sharing between
    /// files, snapshots and reflinks is kept. Each chunk is committed on its own; other
    /// operations run between chunks. `progress(bytes moved, bytes to move)`.
    pub fn balance(
        &self,
        usage_percent: u8,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<BalanceReport> {
        if usage_percent > 100 {
            return Err(Error::Invalid("usage is a percentage (0 to 100)"));
        }
        let targets = self.op(|s| s.balance_targets(usage_percent))?;
        let total: u64 = targets.iter().map(|t| t.used).sum();
        let mut report = BalanceReport {
            chunks_considered: targets.len(),
            ..BalanceReport::default()
        };
        progress(0, total);
        // Chunks that took moved data are not emptied again.
        let mut keep = std::collections::BTreeSet::new();
        for t in targets {
            if keep.contains(&t.logical) {
                continue;
            }
            self.op(|s| {
                s.balance_chunk(t, &mut keep, &mut report)?;
                s.commit()
            })?;
            progress(report.bytes_moved.min(total), total);
        }
        progress(total, total);
        Ok(report)
    }

    /// Reads every tree node and every data extent back against its checksums (no key needed)
    /// and reports each bad sector with the files and offsets that hold it.
    /// `progress(data bytes verified, data bytes in use)`.
    pub fn scrub(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<ScrubReport> {
        self.op(|s| s.scrub(progress))
    }

    // --- Keys ---------------------------------------------------------------------------------

    /// FS_IOC_ADD_ENCRYPTION_KEY: adds a raw master key (16 to 64 bytes) with a claim for the
    /// caller's uid and returns its identifier. Adding a removed key back restores it.
    pub fn add_key(&self, raw: &[u8], c: &Caller) -> Result<fscrypt::KeyIdentifier> {
        crate::keys::add_key(&self.keyring, raw, c)
    }

    /// FS_IOC_REMOVE_ENCRYPTION_KEY (`all_users`: `_ALL_USERS`, root only).
    pub fn remove_key(
        &self,
        id: &fscrypt::KeyIdentifier,
        all_users: bool,
        c: &Caller,
    ) -> Result<KeyRemoval> {
        // Closed files' buffered data is written first, so only open files keep the key busy.
        // A filesystem that cannot write any more keeps those pins, and the removal reports the
        // files busy rather than failing.
        let _ = self.op(|s| s.flush_closed_pinned());
        crate::keys::remove_key(&self.keyring, id, all_users, c)
    }

    /// FS_IOC_GET_ENCRYPTION_KEY_STATUS for the caller.
    pub fn key_status(&self, id: &fscrypt::KeyIdentifier, c: &Caller) -> KeyStatusReport {
        crate::keys::key_status(&self.keyring, id, c)
    }

    /// The keyring's own counters (keys, pins, derived keys alive), for tests and leak checks.
    pub fn keyring_stats(&self) -> fscrypt::keyring::KeyringStats {
        self.keyring.stats()
    }

    /// FS_IOC_SET_ENCRYPTION_POLICY on directory `ino` (an empty one, or a subvolume's root,
    /// empty or not: then every new extent in the subvolume is encrypted).
    pub fn set_policy(&self, ino: Ino, policy: &[u8], c: &Caller) -> Result<()> {
        let policy = fscrypt::PolicyV2::decode(policy).map_err(crate::crypt::crypt_error)?;
        self.op(|s| s.set_policy(objectid(ino)?, policy, c))
    }

    /// FS_IOC_GET_ENCRYPTION_POLICY_EX: the 24-byte v2 policy in force for `ino` (ENODATA
    /// when it is not encrypted).
    pub fn get_policy(&self, ino: Ino) -> Result<Vec<u8>> {
        self.op(|s| match s.effective_policy(objectid(ino)?)? {
            Some(p) => Ok(p.encode().to_vec()),
            None => Err(Error::NoData),
        })
    }

    /// Bytes of file data under `ino` (a file, or every file below a directory) still stored
    /// as plaintext: what a subvolume turned encrypted has left from before.
    pub fn plaintext_bytes(&self, ino: Ino) -> Result<u64> {
        self.op(|s| {
            s.flush_all_data()?;
            let mut total = 0;
            s.walk_files(objectid(ino)?, &mut |s, o| {
                total += s.plaintext_bytes(o)?;
                Ok(())
            })?;
            Ok(total)
        })
    }

    /// Bytes of file `ino`, or of every file under directory `ino`: total, exclusive and
    /// shared (with another file through a reflink, or with a snapshot), and set shared (the
    /// shared bytes with each extent byte counted once across the files).
    pub fn disk_usage(&self, ino: Ino) -> Result<DiskUsage> {
        self.op(|s| s.disk_usage(objectid(ino)?))
    }

    /// The filesystem's space: size, data and metadata in use, free, pending deletions.
    pub fn space(&self) -> Result<SpaceReport> {
        self.op(|s| s.space())
    }

    /// Releases space of deleted subvolumes until none is left (the commit thread does the
    /// same a step at a time); commits. For tests and offline tools.
    pub fn finish_subvolume_deletions(&self) -> Result<()> {
        loop {
            let more = self.op(|s| s.continue_subvolume_drops())?;
            self.sync()?;
            if !more {
                return Ok(());
            }
        }
    }

    // --- Offline tools ------------------------------------------------------------------------

    /// The store's check and the filesystem's own; every fault found is listed.
    pub fn check(&self) -> Result<FsckReport> {
        self.op(|s| s.check(&mut |_, _| {}))
    }

    /// [`Filesystem::check`], calling `progress(bytes verified, bytes to verify)` as file data
    /// is read back against its checksums (the long part on a big filesystem).
    pub fn check_with_progress(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<FsckReport> {
        self.op(|s| s.check(progress))
    }

    /// Everything on disk, for humans (Display) and programs (serde).
    pub fn inspect(&self) -> Result<Inspection> {
        self.op(|s| s.inspect())
    }
}

impl Drop for Filesystem {
    fn drop(&mut self) {
        self.stop_threads();
        let mut s = self.shared.lock();
        if !s.opts.read_only
            && s.failed.is_none()
            && let Err(e) = s.commit()
        {
            eprintln!("cowfs: commit at unmount: {e}");
        }
    }
}

/// Commits a dirty transaction every `every` until told to stop.
fn commit_loop(shared: &Shared, every: Duration) {
    loop {
        let stop = shared.stop.lock().unwrap_or_else(|p| p.into_inner());
        // Checked under the lock before waiting, so a stop sent before this thread first
        // waits is not lost.
        let (stop, _) = shared
            .wake
            .wait_timeout_while(stop, every, |stop| !*stop)
            .unwrap_or_else(|p| p.into_inner());
        if *stop {
            return;
        }
        drop(stop);
        let mut s = shared.lock();
        // Deleted subvolumes release their space a step per tick, each step committed.
        if s.drops_pending
            && s.failed.is_none()
            && let Err(e) = s.continue_subvolume_drops()
        {
            // Half a step may sit in the transaction: stop, as any operation failing part way.
            eprintln!("cowfs: background subvolume deletion: {e}; remount to recover");
            s.failed = Some(format!("background subvolume deletion: {e}"));
        }
        let dirty = s.changes != s.committed_changes || s.dirty_bytes > 0;
        if dirty
            && s.failed.is_none()
            && let Err(e) = s.commit()
        {
            eprintln!("cowfs: periodic commit: {e}");
        }
    }
}

fn is_block_device(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
}
