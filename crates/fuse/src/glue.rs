//! The only module that knows fuser: it turns FUSE requests into [`cowfs::Filesystem`] calls and
//! their results into replies, and starts the fuser session.
//!
//! Every method has the same flat shape: build the caller, convert the arguments, make one cowfs
//! call, answer once. No filesystem decision is taken here; where FUSE's wire protocol asks for
//! something cowfs has no word for (xattr size probes, the directory reply buffer, lseek's
//! whence numbers, the copy_file_range ENOSYS trap, the kernel's cached attributes after cowfs
//! clears setuid on a write), the translation is done here and says why.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Config, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, FopenFlags,
    Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, MountOption, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    SessionACL, TimeOrNow, WriteFlags,
};

use cowfs::control;

use crate::caller::caller;
use crate::options::{MountOptions, PassFlag};

/// How long the kernel may trust an entry or attributes without asking again. Every change goes
/// through this mount: replies that change attributes (link, setattr, create) refresh the
/// kernel's copy, the kernel updates size and times itself on writes and drops nlink on unlink,
/// so a short timeout costs little and bounds any staleness with hard links (one inode under
/// several names) to one second.
const TTL: Duration = Duration::from_secs(1);

/// Largest write (and readahead) asked of the kernel: its default page limit per request.
const MAX_WRITE: u32 = 1 << 20;

/// Requests the kernel keeps queued in the background, its read-ahead among them (fuser asks
/// for 16, and the kernel's read-ahead stops adding requests at three quarters of it, the
/// congestion threshold). Each worker waits for its device read; with more requests queued
/// every worker always has one. Cold 1 GiB reads, alternating at runtime on one mount: with
/// direct reads, about 1.0-1.1 GB/s at 16 against 1.3-1.5 at 64 (bench/RESULTS.md, run 24);
/// with reads through the host's cache, 1.2-1.3 against 1.7-2.1, and no gain at 128 or 256
/// (run 35).
const MAX_BACKGROUND: u16 = 64;

/// Longest copy_file_range answered at once: the reply's count is 32 bits; whole pages.
const MAX_COPY: u32 = 0xffff_f000;

/// Longest a control request's answer waits for the kernel's cache of the directory it changed
/// to be dropped (see `Adapter::directory_changed`).
const INVALIDATION_WAIT: Duration = Duration::from_millis(500);

/// Entries asked of cowfs per readdir batch; the kernel's reply buffer decides how many are sent.
const DIR_BATCH: usize = 128;

/// The fuser-facing filesystem: a shared handle on cowfs, and the channel back to the kernel
/// for the one case where cowfs changes attributes the kernel cannot see in a reply.
pub(crate) struct Adapter {
    fs: Arc<cowfs::Filesystem>,
    /// Set once the session exists (the session is built from the adapter).
    notifier: Arc<OnceLock<fuser::Notifier>>,
}

/// A mounted, handshaken session that has not started serving yet.
pub(crate) struct Session {
    inner: fuser::Session<Adapter>,
}

impl Session {
    /// Mounts `fs` on `dir` (mount(2) as root; the kernel's INIT is answered before this returns,
    /// so the mount is live and requests queue until [`Session::run`]).
    pub(crate) fn mount(
        fs: Arc<cowfs::Filesystem>,
        dir: &Path,
        source: &str,
        opts: &MountOptions,
    ) -> std::io::Result<Session> {
        let config = fuser_config(source, opts);
        let notifier = Arc::new(OnceLock::new());
        let adapter = Adapter {
            fs,
            notifier: Arc::clone(&notifier),
        };
        let inner = fuser::Session::new(adapter, dir, &config)?;
        if let Err(e) = crate::readahead::set(dir, opts.readahead_kib) {
            tracing::info!("readahead left at the kernel's default: {e}");
        }
        // Nothing is served before run(): the adapter cannot need the notifier before this.
        let _ = notifier.set(inner.notifier());
        Ok(Session { inner })
    }

    /// Serves requests on several workers until the mount goes away (umount, fusermount3 -u,
    /// a lazy unmount's last user leaving). Returns once every worker has stopped.
    pub(crate) fn run(self) -> std::io::Result<()> {
        self.inner.run()
    }
}

fn fuser_config(source: &str, opts: &MountOptions) -> Config {
    let mut mount_options = vec![
        MountOption::FSName(opts.fsname.clone().unwrap_or_else(|| source.to_owned())),
        // As a kernel option (fuser's Subtype reaches only fusermount3): /proc/mounts then
        // names the type fuse.cowcrypt.
        MountOption::CUSTOM("subtype=cowcrypt".to_owned()),
        if opts.read_only {
            MountOption::RO
        } else {
            MountOption::RW
        },
    ];
    mount_options.extend(opts.flags.iter().map(|f| match f {
        PassFlag::Dev => MountOption::Dev,
        PassFlag::NoDev => MountOption::NoDev,
        PassFlag::Suid => MountOption::Suid,
        PassFlag::NoSuid => MountOption::NoSuid,
        PassFlag::Exec => MountOption::Exec,
        PassFlag::NoExec => MountOption::NoExec,
        PassFlag::Atime => MountOption::Atime,
        PassFlag::NoAtime => MountOption::NoAtime,
        PassFlag::Sync => MountOption::Sync,
        PassFlag::Async => MountOption::Async,
        PassFlag::DirSync => MountOption::DirSync,
    }));
    let mut config = Config::default();
    config.mount_options = mount_options;
    config.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(opts.threads);
    config.clone_fd = true;
    config
}

// ---- conversions -------------------------------------------------------------------------

fn errno(e: &cowfs::Error) -> Errno {
    let code = e.errno();
    if code == libc::EIO || code <= 0 {
        // Store faults are what an operator must see; ordinary refusals are the caller's business.
        tracing::warn!("I/O error answered to the kernel: {e}");
    } else {
        tracing::debug!("answered errno {code}: {e}");
    }
    if code <= 0 {
        Errno::EIO
    } else {
        Errno::from_i32(code)
    }
}

fn kind(k: cowfs::FileKind) -> FileType {
    match k {
        cowfs::FileKind::File => FileType::RegularFile,
        cowfs::FileKind::Dir => FileType::Directory,
        cowfs::FileKind::Symlink => FileType::Symlink,
        cowfs::FileKind::CharDev => FileType::CharDevice,
        cowfs::FileKind::BlockDev => FileType::BlockDevice,
        cowfs::FileKind::Fifo => FileType::NamedPipe,
        cowfs::FileKind::Socket => FileType::Socket,
        // A kind cowfs learned after this adapter: listed as a plain file until the adapter
        // learns it too (the kernel has no "unknown" type to send).
        _ => FileType::RegularFile,
    }
}

fn system_time(t: cowfs::Timespec) -> SystemTime {
    let nanos = Duration::from_nanos(u64::from(t.nsec.min(999_999_999)));
    let at = if t.sec >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(t.sec.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(t.sec.unsigned_abs()))
    };
    at.and_then(|at| at.checked_add(nanos))
        .unwrap_or(UNIX_EPOCH)
}

fn timespec(t: SystemTime) -> cowfs::Timespec {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => cowfs::Timespec {
            sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nsec: d.subsec_nanos(),
        },
        Err(before) => {
            // Before the epoch: whole seconds down, nanoseconds counted up from there.
            let d = before.duration();
            let mut sec = -i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            let mut nsec = d.subsec_nanos();
            if nsec > 0 {
                sec -= 1;
                nsec = 1_000_000_000 - nsec;
            }
            cowfs::Timespec { sec, nsec }
        }
    }
}

fn time_set(t: TimeOrNow) -> cowfs::TimeSet {
    match t {
        TimeOrNow::Now => cowfs::TimeSet::Now,
        TimeOrNow::SpecificTime(t) => cowfs::TimeSet::At(timespec(t)),
    }
}

fn file_attr(a: &cowfs::Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: system_time(a.atime),
        mtime: system_time(a.mtime),
        ctime: system_time(a.ctime),
        crtime: system_time(a.crtime),
        kind: kind(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

fn entry(reply: ReplyEntry, r: cowfs::Result<cowfs::Attr>) {
    match r {
        Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(a.generation)),
        Err(e) => reply.error(errno(&e)),
    }
}

fn empty(reply: ReplyEmpty, r: cowfs::Result<()>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

/// Answers an xattr value or name list the way getxattr(2) and listxattr(2) probe: size 0 asks
/// for the length only, a buffer too small is ERANGE.
fn xattr_reply(reply: ReplyXattr, size: u32, value: &[u8]) {
    let Ok(len) = u32::try_from(value.len()) else {
        return reply.error(Errno::E2BIG);
    };
    if size == 0 {
        reply.size(len);
    } else if len > size {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}

/// SEEK_DATA and SEEK_HOLE: the only whence values the kernel sends (it handles the others).
fn whence(w: i32) -> Option<cowfs::Whence> {
    match w {
        libc::SEEK_DATA => Some(cowfs::Whence::Data),
        libc::SEEK_HOLE => Some(cowfs::Whence::Hole),
        _ => None,
    }
}

/// fallocate(2) mode bits cowfs implements; None for the rest (collapse, insert, unshare).
fn falloc_mode(mode: i32) -> Option<cowfs::FallocMode> {
    let known = libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
    if mode & !known != 0 {
        return None;
    }
    Some(cowfs::FallocMode {
        keep_size: mode & libc::FALLOC_FL_KEEP_SIZE != 0,
        punch_hole: mode & libc::FALLOC_FL_PUNCH_HOLE != 0,
        zero_range: mode & libc::FALLOC_FL_ZERO_RANGE != 0,
    })
}

// ---- the request handlers -------------------------------------------------------------------

impl Adapter {
    fn who(req: &Request) -> cowfs::Caller {
        caller(req.uid(), req.gid(), req.pid(), 0)
    }

    fn who_with_umask(req: &Request, umask: u32) -> cowfs::Caller {
        caller(req.uid(), req.gid(), req.pid(), umask)
    }

    /// Whether a data change by `c` is about to make cowfs clear setuid/setgid on `ino` (cowfs
    /// does so for any caller but root, as Linux does; FUSE_HANDLE_KILLPRIV_V2 leaves it to cowfs).
    fn clears_privileges(&self, ino: INodeNo, c: &cowfs::Caller) -> bool {
        c.uid != 0
            && self
                .fs
                .getattr(ino.0)
                .is_ok_and(|a| a.perm & (libc::S_ISUID | libc::S_ISGID) as u16 != 0)
    }

    /// Drops the kernel's cached attributes of `ino`. A write's reply carries no attributes, so
    /// without this the kernel would show (and exec would honour) a cleared setuid bit for up to
    /// the attribute timeout. Attributes only (offset -1): no page lock is taken, so this is
    /// safe from inside a request, before its reply.
    fn attributes_changed(&self, ino: INodeNo) {
        if let Some(n) = self.notifier.get()
            && let Err(e) = n.inval_inode(ino, -1, 0)
        {
            tracing::debug!("invalidating attributes of {}: {e}", ino.0);
        }
    }

    /// Drops the kernel's cached pages and attributes of file `ino` after a control request
    /// changed its bytes behind the kernel's back (a reflink into it).
    fn contents_changed(&self, ino: INodeNo) {
        let Some(n) = self.notifier.get().cloned() else {
            return;
        };
        // Pages and attributes: offset 0, length 0 drops every cached page. Like
        // `directory_changed`, from its own thread with a bounded wait, since the kernel locks
        // pages another process may hold while it waits for this worker.
        let (sent, done) = std::sync::mpsc::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("cowcrypt-inval".into())
            .spawn(move || {
                if let Err(e) = n.inval_inode(ino, 0, 0) {
                    tracing::debug!("invalidating the contents of {}: {e}", ino.0);
                }
                let _ = sent.send(());
            });
        match spawned {
            Ok(_) => {
                if done.recv_timeout(INVALIDATION_WAIT).is_err() {
                    tracing::debug!("invalidation of {} still waiting; answering", ino.0);
                }
            }
            Err(e) => tracing::warn!("no thread to invalidate a changed file: {e}"),
        }
    }

    /// Drops the kernel's cached attributes of directory `parent` and, if given, its dentry of
    /// the removed name, for a change made through the control channel, before the request is
    /// answered, so the caller never sees the old entry afterwards. Sent from its own thread
    /// and waited for at most [`INVALIDATION_WAIT`]: the kernel takes the directory's lock,
    /// which another process may hold while it waits for a reply from this very worker; then
    /// the answer goes first and the invalidation lands a moment later.
    fn directory_changed(&self, parent: INodeNo, removed: Option<Vec<u8>>) {
        let Some(n) = self.notifier.get().cloned() else {
            return;
        };
        let (sent, done) = std::sync::mpsc::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("cowcrypt-inval".into())
            .spawn(move || {
                if let Some(name) = removed
                    && let Err(e) = n.inval_entry(parent, OsStr::from_bytes(&name))
                {
                    tracing::debug!("invalidating an entry of {}: {e}", parent.0);
                }
                if let Err(e) = n.inval_inode(parent, -1, 0) {
                    tracing::debug!("invalidating attributes of {}: {e}", parent.0);
                }
                let _ = sent.send(());
            });
        match spawned {
            Ok(_) => {
                if done.recv_timeout(INVALIDATION_WAIT).is_err() {
                    tracing::debug!("invalidation in {} still waiting; answering", parent.0);
                }
            }
            Err(e) => tracing::warn!("no thread to invalidate a changed directory: {e}"),
        }
    }

    /// Readdirplus hands the kernel a lookup reference for every entry but "." and ".."; an entry
    /// cowfs returned that did not fit the reply never reached the kernel, so its reference is
    /// given back here or the inode could never be freed.
    fn return_lookups(&self, unsent: &[(cowfs::DirEntry, cowfs::Attr)]) {
        for (e, _) in unsent {
            if e.name != b"." && e.name != b".." {
                self.fs.forget(e.ino, 1);
            }
        }
    }
}

impl fuser::Filesystem for Adapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(nearest) = config.set_max_write(MAX_WRITE) {
            tracing::warn!("max_write {MAX_WRITE} refused, using {nearest}");
            let _ = config.set_max_write(nearest);
        }
        if let Err(nearest) = config.set_max_readahead(MAX_WRITE) {
            let _ = config.set_max_readahead(nearest);
        }
        // Refused only for 0.
        let _ = config.set_max_background(MAX_BACKGROUND);
        let _ = config.set_congestion_threshold(MAX_BACKGROUND / 4 * 3);
        // Each capability is asked for alone so that one the kernel lacks does not take the
        // others with it.
        for (cap, what) in [
            (InitFlags::FUSE_DO_READDIRPLUS, "readdirplus"),
            (InitFlags::FUSE_READDIRPLUS_AUTO, "adaptive readdirplus"),
            (
                InitFlags::FUSE_PARALLEL_DIROPS,
                "parallel directory operations",
            ),
            (InitFlags::FUSE_CACHE_SYMLINKS, "symlink caching"),
            (InitFlags::FUSE_ASYNC_DIO, "asynchronous direct I/O"),
            // cowfs applies the umask itself, and not under a default ACL (POSIX 1003.1e).
            (InitFlags::FUSE_DONT_MASK, "unmasked create modes"),
            // cowfs clears setuid/setgid on write, truncate and chown. Without this the kernel
            // does it first with a chmod as the writer, which cowfs rightly refuses to anyone
            // but the owner: a permitted write to a setuid file would fail. Version 2 also lets
            // the kernel mark inodes without privileges (S_NOSEC) instead of asking for
            // security.capability before every write(2).
            (
                InitFlags::FUSE_HANDLE_KILLPRIV_V2,
                "setuid clearing by the filesystem",
            ),
        ] {
            if config.add_capabilities(cap).is_err() {
                tracing::info!("kernel lacks {what}");
            }
        }
        // Kernels before 5.11 know only the first version, which still spares the chmod.
        if !config
            .capabilities()
            .contains(InitFlags::FUSE_HANDLE_KILLPRIV_V2)
        {
            let _ = config.add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV);
        }
        Ok(())
    }

    fn destroy(&mut self) {
        tracing::info!("session ending");
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        entry(
            reply,
            self.fs.lookup(parent.0, name.as_bytes(), &Self::who(req)),
        );
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = cowfs::SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
            ctime: ctime.map(timespec),
        };
        match self
            .fs
            .setattr(ino.0, &set, fh.map(|h| h.0), &Self::who(req))
        {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let c = Self::who_with_umask(req, umask);
        entry(
            reply,
            self.fs.mknod(parent.0, name.as_bytes(), mode, rdev, &c),
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let c = Self::who_with_umask(req, umask);
        entry(reply, self.fs.mkdir(parent.0, name.as_bytes(), mode, &c));
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(
            reply,
            self.fs.unlink(parent.0, name.as_bytes(), &Self::who(req)),
        );
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(
            reply,
            self.fs.rmdir(parent.0, name.as_bytes(), &Self::who(req)),
        );
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        entry(
            reply,
            self.fs.symlink(
                parent.0,
                link_name.as_bytes(),
                target.as_os_str().as_bytes(),
                &Self::who(req),
            ),
        );
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        // RENAME_WHITEOUT is overlayfs's; cowfs has no whiteouts.
        let known = RenameFlags::RENAME_NOREPLACE | RenameFlags::RENAME_EXCHANGE;
        if !known.contains(flags) {
            return reply.error(Errno::EINVAL);
        }
        let flags = cowfs::RenameFlags {
            noreplace: flags.contains(RenameFlags::RENAME_NOREPLACE),
            exchange: flags.contains(RenameFlags::RENAME_EXCHANGE),
        };
        empty(
            reply,
            self.fs.rename(
                parent.0,
                name.as_bytes(),
                newparent.0,
                newname.as_bytes(),
                flags,
                &Self::who(req),
            ),
        );
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        entry(
            reply,
            self.fs
                .link(ino.0, newparent.0, newname.as_bytes(), &Self::who(req)),
        );
    }

    // No FOPEN_KEEP_CACHE: each open drops the file's cached pages, so once an encryption key
    // is removed a closed file's plaintext does not outlive it in the page cache (fscrypt's
    // rule); a re-read costs a trip to the daemon.
    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self
            .fs
            .open(ino.0, cowfs::OpenFlags(flags.0), &Self::who(req))
        {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.fs.read_buf(ino.0, fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let c = Self::who(req);
        let clears = self.clears_privileges(ino, &c);
        match self.fs.write(ino.0, fh.0, offset, data, &c) {
            Ok(n) => {
                if clears {
                    self.attributes_changed(ino);
                }
                reply.written(n)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.fs.flush(ino.0, fh.0));
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.fs.release(ino.0, fh.0));
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.fs.fsync(ino.0, fh.0, datasync));
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.opendir(ino.0, &Self::who(req)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        // The kernel's offset is the cookie of the last entry it received (0 at the start).
        let mut cookie = offset;
        loop {
            let batch = match self.fs.readdir(ino.0, fh.0, cookie, DIR_BATCH) {
                Ok(b) => b,
                Err(e) => return reply.error(errno(&e)),
            };
            let last_batch = batch.len() < DIR_BATCH;
            for e in &batch {
                let name = OsStr::from_bytes(&e.name);
                if reply.add(INodeNo(e.ino), e.cookie, kind(e.kind), name) {
                    return reply.ok();
                }
                cookie = e.cookie;
            }
            if last_batch {
                return reply.ok();
            }
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let mut cookie = offset;
        loop {
            let batch = match self.fs.readdirplus(ino.0, fh.0, cookie, DIR_BATCH) {
                Ok(b) => b,
                Err(e) => return reply.error(errno(&e)),
            };
            let last_batch = batch.len() < DIR_BATCH;
            for (i, (e, a)) in batch.iter().enumerate() {
                let name = OsStr::from_bytes(&e.name);
                let attr = file_attr(a);
                if reply.add(
                    INodeNo(e.ino),
                    e.cookie,
                    name,
                    &TTL,
                    &attr,
                    Generation(a.generation),
                ) {
                    self.return_lookups(&batch[i..]);
                    return reply.ok();
                }
                cookie = e.cookie;
            }
            if last_batch {
                return reply.ok();
            }
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.fs.releasedir(ino.0, fh.0));
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.fs.fsyncdir(ino.0, fh.0, datasync));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.fs.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        empty(
            reply,
            self.fs
                .setxattr(ino.0, name.as_bytes(), value, flags, &Self::who(req)),
        );
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.fs.getxattr(ino.0, name.as_bytes(), &Self::who(req)) {
            Ok(value) => xattr_reply(reply, size, &value),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.fs.listxattr(ino.0, &Self::who(req)) {
            Ok(names) => {
                // listxattr(2)'s format: each name followed by a NUL.
                let mut list = Vec::with_capacity(names.iter().map(|n| n.len() + 1).sum());
                for n in &names {
                    list.extend_from_slice(n);
                    list.push(0);
                }
                xattr_reply(reply, size, &list);
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(
            reply,
            self.fs.removexattr(ino.0, name.as_bytes(), &Self::who(req)),
        );
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        empty(reply, self.fs.access(ino.0, mask.bits(), &Self::who(req)));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let c = Self::who_with_umask(req, umask);
        match self
            .fs
            .create(parent.0, name.as_bytes(), mode, cowfs::OpenFlags(flags), &c)
        {
            Ok((a, fh)) => reply.created(
                &TTL,
                &file_attr(&a),
                Generation(a.generation),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn ioctl(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        out_size: u32,
        reply: ReplyIoctl,
    ) {
        // Only the control channel is ours. Anything else gets ENOTTY, what callers probing a
        // file (Python's open() sends TCGETS) take as "not a terminal, not supported".
        if cmd != control::IOCTL_CMD {
            reply.error(Errno::ENOTTY);
            return;
        }
        if (out_size as usize) < control::FRAME_SIZE {
            reply.error(Errno::EINVAL);
            return;
        }
        let request = match control::Request::decode(in_data) {
            Ok(r) => r,
            Err(e) => return reply.error(errno(&e)),
        };
        // Entries made or removed here change the directory behind the kernel's back: its
        // cached attributes (link count, times) and, for a removal, the cached dentry, which
        // would keep answering lookups for up to TTL.
        let changed = match &request {
            control::Request::SubvolumeDelete { name } => Some(Some(name.clone())),
            control::Request::SubvolumeCreate { .. }
            | control::Request::SubvolumeSnapshot { .. } => Some(None),
            _ => None,
        };
        // A reflink changes the file here: its size and its bytes.
        let contents_changed = matches!(request, control::Request::Reflink { .. });
        let answer = self
            .fs
            .control(ino.0, request, &Self::who(req))
            .and_then(|r| r.encode());
        match answer {
            Ok(frame) => {
                if let Some(removed) = changed {
                    self.directory_changed(ino, removed);
                }
                if contents_changed {
                    self.contents_changed(ino);
                }
                reply.ioctl(0, &frame);
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let Some(mode) = falloc_mode(mode) else {
            return reply.error(Errno::EOPNOTSUPP);
        };
        let c = Self::who(req);
        let clears = self.clears_privileges(ino, &c);
        let r = self.fs.fallocate(ino.0, fh.0, offset, length, mode, &c);
        if clears && r.is_ok() {
            self.attributes_changed(ino);
        }
        empty(reply, r);
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence_raw: i32,
        reply: ReplyLseek,
    ) {
        let (Some(w), Ok(offset)) = (whence(whence_raw), u64::try_from(offset)) else {
            return reply.error(Errno::EINVAL);
        };
        match self.fs.lseek(ino.0, fh.0, offset, w) {
            Ok(pos) => match i64::try_from(pos) {
                Ok(pos) => reply.offset(pos),
                Err(_) => reply.error(Errno::EOVERFLOW),
            },
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn copy_file_range(
        &self,
        req: &Request,
        ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        if !flags.is_empty() {
            return reply.error(Errno::EINVAL);
        }
        // The reply carries a 32-bit count: a longer request is answered short (callers loop),
        // in whole pages so the next round stays aligned.
        let len = len.min(u64::from(MAX_COPY));
        let c = Self::who(req);
        let clears = self.clears_privileges(ino_out, &c);
        match self.fs.copy_file_range(
            ino_in.0, fh_in.0, offset_in, ino_out.0, fh_out.0, offset_out, len, &c,
        ) {
            Ok(n) => {
                if clears {
                    self.attributes_changed(ino_out);
                }
                reply.written(u32::try_from(n).unwrap_or(MAX_COPY))
            }
            // One ENOSYS and the kernel never sends copy_file_range again on this mount;
            // EOPNOTSUPP makes it fall back to copying through the page cache instead.
            Err(e) if e.errno() == libc::ENOSYS => reply.error(Errno::EOPNOTSUPP),
            Err(e) => reply.error(errno(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_across_the_epoch() {
        for (sec, nsec) in [(0, 0), (1_700_000_000, 123), (-1, 500_000_000), (-86400, 0)] {
            let t = cowfs::Timespec { sec, nsec };
            let back = timespec(system_time(t));
            assert_eq!((back.sec, back.nsec), (sec, nsec));
        }
    }

    #[test]
    fn fallocate_and_lseek_modes() {
        let m = falloc_mode(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE).unwrap();
        assert!(m.punch_hole && m.keep_size && !m.zero_range);
        assert!(falloc_mode(libc::FALLOC_FL_COLLAPSE_RANGE).is_none());
        assert!(matches!(whence(libc::SEEK_HOLE), Some(cowfs::Whence::Hole)));
        assert!(whence(libc::SEEK_END).is_none());
    }
}
