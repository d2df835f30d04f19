//! Operations on open files and inodes: attributes (chmod, chown, truncate, utimes), open and
//! create, read and write (O_APPEND), fallocate, seek, copy_file_range, directory listing, statfs.

use crate::error::{Error, Result};
use crate::items::FIRST_DIR_INDEX;
use crate::perm::{self, MAY_EXEC, MAY_READ, MAY_WRITE, owner_or_root};
use crate::state::{BLOCK, State};
use crate::types::{
    Attr, Caller, DirEntry, FallocMode, FileKind, OpenFlags, SetAttr, StatFs, TimeSet, Timespec,
    Whence,
};

/// Bytes copy_file_range moves per step.
const COPY_CHUNK: u64 = 1 << 20;

fn resolve(t: TimeSet, now: Timespec) -> Timespec {
    match t {
        TimeSet::Now => now,
        TimeSet::At(t) => t,
    }
}

impl State {
    pub(crate) fn setattr(
        &mut self,
        obj: u64,
        set: &SetAttr,
        fh: Option<u64>,
        c: &Caller,
    ) -> Result<Attr> {
        let mut it = self.inode(obj)?;
        let nothing = *set == SetAttr::default();
        if nothing {
            return Ok(self.attr(obj, &it));
        }
        self.writable(obj)?;
        // Checks, all before any change.
        if set.mode.is_some() && !owner_or_root(&it, c) {
            return Err(Error::Perm);
        }
        if let Some(u) = set.uid
            && c.uid != 0
            && (c.uid != it.uid || u != it.uid)
        {
            return Err(Error::Perm);
        }
        if let Some(g) = set.gid
            && c.uid != 0
            && (c.uid != it.uid || !(c.in_group(g) || g == it.gid))
        {
            return Err(Error::Perm);
        }
        if set.size.is_some() {
            match it.kind {
                FileKind::File => {}
                FileKind::Dir => return Err(Error::IsDir),
                _ => return Err(Error::Invalid("truncate of a special file")),
            }
            match fh {
                Some(fh) => {
                    if !self.handle(obj, fh)?.flags.writable() {
                        return Err(Error::Invalid("handle not open for writing"));
                    }
                }
                None => self.permit(obj, &it, c, MAY_WRITE)?,
            }
        }
        let explicit_time =
            matches!(set.atime, Some(TimeSet::At(_))) || matches!(set.mtime, Some(TimeSet::At(_)));
        if set.atime.is_some() || set.mtime.is_some() {
            if explicit_time {
                if !owner_or_root(&it, c) {
                    return Err(Error::Perm);
                }
            } else if !owner_or_root(&it, c) {
                self.permit(obj, &it, c, MAY_WRITE)?;
            }
        }
        let now = Timespec::now();
        if let Some(size) = set.size {
            if size > crate::data::MAX_FILE_SIZE {
                return Err(Error::TooBig);
            }
            self.truncate(obj, &mut it, size)?;
            it.mtime = now;
            perm::kill_suid(&mut it, c);
        }
        if let Some(mode) = set.mode {
            let mut m = mode & 0o7777;
            let gid = set.gid.unwrap_or(it.gid);
            if c.uid != 0 && !c.in_group(gid) {
                m &= !0o2000;
            }
            it.perm = m;
            self.acl_chmod(obj, m)?;
        }
        if set.uid.is_some() || set.gid.is_some() {
            if let Some(u) = set.uid {
                it.uid = u;
            }
            if let Some(g) = set.gid {
                it.gid = g;
            }
            if it.kind != FileKind::Dir && set.mode.is_none() {
                perm::clear_suid_sgid(&mut it);
            }
        }
        if let Some(t) = set.atime {
            it.atime = resolve(t, now);
        }
        if let Some(t) = set.mtime {
            it.mtime = resolve(t, now);
        }
        it.ctime = set.ctime.unwrap_or(now);
        self.put_inode(obj, &it)?;
        Ok(self.attr(obj, &it))
    }

    pub(crate) fn access(&mut self, obj: u64, mask: i32, c: &Caller) -> Result<()> {
        let it = self.inode(obj)?;
        let mut want = 0;
        if mask & libc::R_OK != 0 {
            want |= MAY_READ;
        }
        if mask & libc::W_OK != 0 {
            if self.opts.read_only {
                return Err(Error::ReadOnly);
            }
            want |= MAY_WRITE;
        }
        if mask & libc::X_OK != 0 {
            want |= MAY_EXEC;
        }
        self.permit(obj, &it, c, want)
    }

    pub(crate) fn open(&mut self, obj: u64, flags: OpenFlags, c: &Caller) -> Result<u64> {
        let mut it = self.inode(obj)?;
        if it.kind == FileKind::Dir && flags.writable() {
            return Err(Error::IsDir);
        }
        if it.kind == FileKind::Symlink {
            // open(O_NOFOLLOW) of a symlink; following links is the caller's (the VFS's) job.
            return Err(Error::Loop);
        }
        let mut want = 0;
        if flags.readable() {
            want |= MAY_READ;
        }
        // O_TRUNC needs write permission and truncates whatever the access mode, as on Linux.
        let truncate = flags.truncate() && it.kind == FileKind::File;
        if flags.writable() || truncate {
            want |= MAY_WRITE;
            self.writable(obj)?;
        }
        self.permit(obj, &it, c, want)?;
        if truncate {
            self.truncate(obj, &mut it, 0)?;
            let now = Timespec::now();
            it.mtime = now;
            it.ctime = now;
            perm::kill_suid(&mut it, c);
            self.put_inode(obj, &it)?;
        }
        if it.kind == FileKind::File {
            // An encrypted file opens only with its key, and the open file pins it.
            self.pin_for_open(obj)?;
        }
        Ok(self.add_handle(obj, flags, it.kind == FileKind::Dir))
    }

    pub(crate) fn create(
        &mut self,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: OpenFlags,
        c: &Caller,
    ) -> Result<(Attr, u64)> {
        match self.make(parent, name, FileKind::File, mode, 0, None, c) {
            Ok(a) => {
                // The key was present to create it (make checked); the open file pins it.
                self.pin_for_open(a.ino)?;
                let fh = self.add_handle(a.ino, flags, false);
                Ok((a, fh))
            }
            Err(Error::Exists) if flags.0 & libc::O_EXCL == 0 => {
                // Another creator won the race: open what is there, as open(O_CREAT) would.
                let a = self.lookup(parent, name, c)?;
                if a.kind == FileKind::Dir {
                    return Err(Error::IsDir);
                }
                let fh = self.open(a.ino, flags, c)?;
                Ok((self.getattr_obj(a.ino)?, fh))
            }
            Err(e) => Err(e),
        }
    }

    pub(crate) fn read(&mut self, obj: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let mut it = self.readable_file(obj, fh)?;
        let data = self.read_data(obj, &it, offset, u64::from(size))?;
        self.touch_atime(obj, &mut it)?;
        Ok(data)
    }

    /// [`State::read`] planned for the device work to be done outside the lock: the checks,
    /// the plan, then the access time; [`ReadStart::Done`] when the read had to be done here
    /// (extents written by the open transaction).
    pub(crate) fn start_read(
        &mut self,
        obj: u64,
        fh: u64,
        offset: u64,
        size: u32,
    ) -> Result<ReadStart> {
        let mut it = self.readable_file(obj, fh)?;
        let Some(plan) = self.plan_read(obj, &it, offset, u64::from(size))? else {
            return self.read(obj, fh, offset, size).map(ReadStart::Done);
        };
        self.touch_atime(obj, &mut it)?;
        Ok(ReadStart::Planned(plan))
    }

    /// The inode of regular file `obj` if handle `fh` may read it.
    fn readable_file(&mut self, obj: u64, fh: u64) -> Result<crate::items::InodeItem> {
        let h = self.handle(obj, fh)?;
        if h.dir {
            return Err(Error::IsDir);
        }
        if !h.flags.readable() {
            return Err(Error::BadHandle);
        }
        let it = self.inode(obj)?;
        if it.kind != FileKind::File {
            // FIFOs and devices are served by the kernel, never through file data.
            return Err(Error::Invalid("read of a special file"));
        }
        Ok(it)
    }

    /// relatime: records an access once after each change, or once a day. Called only once the
    /// read has nothing left that can fail: an error after a change stops the filesystem.
    fn touch_atime(&mut self, obj: u64, it: &mut crate::items::InodeItem) -> Result<()> {
        let now = Timespec::now();
        if !self.opts.read_only
            && self.failed.is_none()
            && (it.atime <= it.mtime || it.atime <= it.ctime || now.sec - it.atime.sec > 86400)
        {
            it.atime = now;
            self.put_inode(obj, it)?;
        }
        Ok(())
    }

    pub(crate) fn write(
        &mut self,
        obj: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
        c: &Caller,
    ) -> Result<u32> {
        let h = self.handle(obj, fh)?;
        if !h.flags.writable() {
            return Err(Error::BadHandle);
        }
        let len = u32::try_from(data.len()).map_err(|_| Error::Invalid("write too large"))?;
        self.writable(obj)?;
        let mut it = self.inode(obj)?;
        if it.kind != FileKind::File {
            return Err(Error::Invalid("write to a special file"));
        }
        let offset = if h.flags.append() { it.size } else { offset };
        self.write_data(obj, &mut it, offset, data)?;
        let now = Timespec::now();
        it.mtime = now;
        it.ctime = now;
        perm::kill_suid(&mut it, c);
        self.put_inode(obj, &it)?;
        Ok(len)
    }

    /// Whether a write of `len` bytes at `offset` must wait for the flight up now to land: it
    /// would load the rest of a block that is in flight, or need a commit to make room. (Whole
    /// blocks in flight are simply buffered again; the newer copy wins when it is flushed.)
    pub(crate) fn write_needs_landing(
        &mut self,
        obj: u64,
        fh: u64,
        offset: u64,
        len: u64,
    ) -> Result<bool> {
        if !self.flight_active() || len == 0 {
            return Ok(false);
        }
        let offset = if self.handle(obj, fh)?.flags.append() {
            self.inode(obj)?.size
        } else {
            offset
        };
        let end = offset.saturating_add(len);
        let partial = |blk: u64| offset > blk * BLOCK || end < (blk + 1) * BLOCK;
        let (first, last) = (offset / BLOCK, (end - 1) / BLOCK);
        let loads_in_flight = [first, last]
            .into_iter()
            .any(|blk| partial(blk) && self.block_in_flight(obj, blk));
        let room = self.dirty_bytes + len.next_multiple_of(BLOCK) + 2 * BLOCK;
        Ok(loads_in_flight || self.txn()?.stats().data.free < room || self.metadata_short()?)
    }

    pub(crate) fn release(&mut self, obj: u64, fh: u64) -> Result<()> {
        self.remove_handle(obj, fh)?;
        if !self.opens.contains_key(&obj) {
            self.unpin_after_close(obj)?;
        }
        self.maybe_evict(obj)
    }

    pub(crate) fn forget(&mut self, obj: u64, n: u64) -> Result<()> {
        if let Some(c) = self.lookups.get_mut(&obj) {
            *c = c.saturating_sub(n);
            if *c == 0 {
                self.lookups.remove(&obj);
            }
        }
        self.maybe_evict(obj)
    }

    pub(crate) fn fallocate(
        &mut self,
        obj: u64,
        fh: u64,
        offset: u64,
        len: u64,
        mode: FallocMode,
        c: &Caller,
    ) -> Result<()> {
        let h = self.handle(obj, fh)?;
        if !h.flags.writable() {
            return Err(Error::BadHandle);
        }
        if len == 0 {
            return Err(Error::Invalid("fallocate of zero bytes"));
        }
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= crate::data::MAX_FILE_SIZE)
            .ok_or(Error::TooBig)?;
        if mode.punch_hole && (!mode.keep_size || mode.zero_range) {
            return Err(Error::NotSupported);
        }
        let mut it = self.inode(obj)?;
        match it.kind {
            FileKind::File => {}
            FileKind::Dir => return Err(Error::IsDir),
            _ => return Err(Error::Invalid("fallocate of a special file")),
        }
        self.writable(obj)?;
        let now = Timespec::now();
        if mode.punch_hole {
            self.punch(obj, &mut it, offset, end)?;
            it.mtime = now;
            it.ctime = now;
        } else {
            if mode.zero_range {
                self.punch(obj, &mut it, offset, end)?;
                let (a, b) = (offset.next_multiple_of(BLOCK), end / BLOCK * BLOCK);
                if a < b {
                    self.preallocate(obj, &mut it, a, b)?;
                }
                it.mtime = now;
                it.ctime = now;
            } else {
                self.preallocate(obj, &mut it, offset, end)?;
            }
            if !mode.keep_size && end > it.size {
                it.size = end;
                it.mtime = now;
                it.ctime = now;
            }
        }
        perm::kill_suid(&mut it, c);
        self.put_inode(obj, &it)
    }

    pub(crate) fn lseek(&mut self, obj: u64, fh: u64, offset: u64, whence: Whence) -> Result<u64> {
        self.handle(obj, fh)?;
        let it = self.inode(obj)?;
        if it.kind != FileKind::File {
            return Err(Error::Invalid("seek in a non-file"));
        }
        self.seek(obj, &it, offset, whence == Whence::Data)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn copy_file_range(
        &mut self,
        in_obj: u64,
        fh_in: u64,
        off_in: u64,
        out_obj: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
        c: &Caller,
    ) -> Result<u64> {
        let hi = self.handle(in_obj, fh_in)?;
        let ho = self.handle(out_obj, fh_out)?;
        if !hi.flags.readable() || !ho.flags.writable() || ho.flags.append() {
            return Err(Error::BadHandle);
        }
        let src = self.inode(in_obj)?;
        let dst = self.inode(out_obj)?;
        if src.kind == FileKind::Dir || dst.kind == FileKind::Dir {
            return Err(Error::IsDir);
        }
        if src.kind != FileKind::File || dst.kind != FileKind::File {
            return Err(Error::Invalid("copy between non-files"));
        }
        // As Linux: the range is first shortened to the source's end, then checked for overlap.
        let n = len.min(src.size.saturating_sub(off_in));
        let overlap = off_in < off_out.saturating_add(n) && off_out < off_in.saturating_add(n);
        if in_obj == out_obj && overlap {
            return Err(Error::Invalid("overlapping copy inside one file"));
        }
        // Reflink when source and destination offsets sit at the same place inside a block:
        // the whole blocks of the middle are shared, the unaligned edges copied. A partial last
        // block is shared only when it is the source's last block (zeros after its end) and it
        // ends `dst`, so no byte beyond the range ever becomes visible in `dst`. Inside one
        // file the ranges do not overlap (checked above), so neither do their whole blocks.
        if n > 0 && off_in % BLOCK == off_out % BLOCK {
            let head = ((BLOCK - off_in % BLOCK) % BLOCK).min(n);
            let body = n - head;
            let mut middle = body - body % BLOCK;
            if body % BLOCK != 0 && off_in + n == src.size && off_out + n >= dst.size {
                middle = body;
            }
            if middle > 0 {
                self.writable(out_obj)?;
                // Encrypted extents are shared only where the same key and modes rule; anything
                // else is EXDEV with nothing changed, and the caller (the kernel, cp) copies.
                self.flush_data(in_obj)?;
                let (a, b) = (off_in + head, off_in + head + middle);
                for (_, fe) in self.extents(in_obj, a, b)? {
                    if let Some(ctx) = &fe.crypt {
                        self.check_reflink(out_obj, ctx)?;
                    }
                }
                let mut done =
                    self.copy_bytes(in_obj, off_in, out_obj, fh_out, off_out, head, c)?;
                if done < head {
                    return Ok(done);
                }
                self.clone_range(in_obj, off_in + head, out_obj, off_out + head, middle)?;
                let mut it = self.inode(out_obj)?;
                let now = Timespec::now();
                it.mtime = now;
                it.ctime = now;
                perm::kill_suid(&mut it, c);
                self.put_inode(out_obj, &it)?;
                done += middle;
                let rest = n - done;
                done += self.copy_bytes(
                    in_obj,
                    off_in + done,
                    out_obj,
                    fh_out,
                    off_out + done,
                    rest,
                    c,
                )?;
                return Ok(done);
            }
        }
        // `n`, not `len`: inside one file the copy grows the source as it goes, and Linux
        // bounds the range by the source's size when the call starts.
        self.copy_bytes(in_obj, off_in, out_obj, fh_out, off_out, n, c)
    }

    /// Copies up to `len` bytes by reading and writing (stops at the source's end).
    #[allow(clippy::too_many_arguments)]
    fn copy_bytes(
        &mut self,
        in_obj: u64,
        off_in: u64,
        out_obj: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
        c: &Caller,
    ) -> Result<u64> {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(COPY_CHUNK) as u32;
            let it = self.inode(in_obj)?;
            let data = self.read_data(in_obj, &it, off_in + done, u64::from(n))?;
            if data.is_empty() {
                break;
            }
            self.write(out_obj, fh_out, off_out + done, &data, c)?;
            done += data.len() as u64;
        }
        Ok(done)
    }

    pub(crate) fn opendir(&mut self, obj: u64, c: &Caller) -> Result<u64> {
        let it = self.inode(obj)?;
        if it.kind != FileKind::Dir {
            return Err(Error::NotDir);
        }
        self.permit(obj, &it, c, MAY_READ)?;
        Ok(self.add_handle(obj, OpenFlags(libc::O_RDONLY), true))
    }

    /// Entries after `cookie`: "." (cookie 1), ".." (cookie 2), then each entry by its
    /// DIR_INDEX, which is never reused, so a cookie stays valid whatever changes meanwhile.
    pub(crate) fn readdir(
        &mut self,
        obj: u64,
        fh: u64,
        cookie: u64,
        max: usize,
    ) -> Result<Vec<DirEntry>> {
        let h = self.handle(obj, fh)?;
        if !h.dir {
            return Err(Error::NotDir);
        }
        let mut out = Vec::new();
        if cookie < 1 && out.len() < max {
            out.push(DirEntry {
                ino: obj,
                kind: FileKind::Dir,
                name: b".".to_vec(),
                cookie: 1,
            });
        }
        if cookie < 2 && out.len() < max {
            // A removed directory still open has no parent left: ".." shows itself.
            let parent = match self.parent_of(obj) {
                Err(Error::NotFound) => obj,
                p => p?,
            };
            out.push(DirEntry {
                ino: parent,
                kind: FileKind::Dir,
                name: b"..".to_vec(),
                cookie: 2,
            });
        }
        let left = max - out.len();
        if left > 0 {
            let after = cookie.max(FIRST_DIR_INDEX - 1);
            for e in self.dir_entries(obj, after, left)? {
                let name = self.shown_name(obj, e.name)?;
                out.push(DirEntry {
                    ino: e.child,
                    kind: e.kind,
                    name,
                    cookie: e.index,
                });
            }
        }
        Ok(out)
    }

    pub(crate) fn readdirplus(
        &mut self,
        obj: u64,
        fh: u64,
        cookie: u64,
        max: usize,
    ) -> Result<Vec<(DirEntry, Attr)>> {
        let es = self.readdir(obj, fh, cookie, max)?;
        let mut out = Vec::with_capacity(es.len());
        for e in es {
            let a = self.getattr_obj(e.ino)?;
            if e.name != b"." && e.name != b".." {
                self.looked_up(e.ino);
            }
            out.push((e, a));
        }
        Ok(out)
    }

    pub(crate) fn statfs(&mut self) -> Result<StatFs> {
        let st = self.txn()?.stats();
        let free = st.data.free.saturating_sub(self.dirty_bytes) / BLOCK;
        let info_next = self.next_objectid_hint();
        let files = 1u64 << 40;
        Ok(StatFs {
            blocks: st.data.total / BLOCK,
            bfree: free,
            bavail: free,
            files,
            ffree: files.saturating_sub(info_next),
            bsize: BLOCK as u32,
            namelen: crate::types::NAME_MAX as u32,
            frsize: BLOCK as u32,
        })
    }
}

/// How a read goes on after [`State::start_read`].
pub(crate) enum ReadStart {
    /// Read under the lock already.
    Done(Vec<u8>),
    /// To be done outside the lock.
    Planned(crate::data::PlannedRead),
}
