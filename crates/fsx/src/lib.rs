//! `fsx`: an fsx-style file I/O tester for cowcrypt (and any other Linux filesystem).
//!
//! Like the classic fsx of Apple, FreeBSD and xfstests, it runs a long, seeded, reproducible
//! sequence of random operations on a few files and keeps an in-memory model of what every
//! file must contain. Every read and every file size is compared with the model; the first
//! difference stops the run with a [`Failure`] that names the seed, the operation number, the
//! first differing byte and the last operations that led there.
//!
//! Operations: `pwrite`/`pread` at random offsets and lengths (unaligned, page-aligned, near the
//! end of file, and large), `ftruncate` up and down, `fallocate` in all five modes (allocate,
//! `KEEP_SIZE`, `PUNCH_HOLE`, `ZERO_RANGE`, `ZERO_RANGE|KEEP_SIZE`), `copy_file_range` between
//! and within files, reads and writes through shared `mmap` mappings (msync'ed), writes through
//! a second `O_APPEND` descriptor, `SEEK_DATA`/`SEEK_HOLE` sanity checks, `fsync`/`fdatasync`,
//! and close/reopen. Every `remount_every` operations all files are closed, the caller's remount
//! hook runs (unmount and mount again, for example) and every file is compared in full.
//!
//! What `SEEK_DATA`/`SEEK_HOLE` must do is checked only as far as any filesystem is bound: an
//! answer lies inside the file, a range reported as hole reads as zeroes, `ENXIO` only where no
//! data can follow. Data the tester writes never contains a zero byte, so a hole reported over
//! written data is always caught.
//!
//! The operations go through the [`Target`] trait; [`DirTarget`] runs them as system calls on
//! `fsx.N` files in a directory, [`MemTarget`] in memory (for testing the tester).

pub mod harness;
pub mod mem;
pub mod rng;
pub mod target;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::io;

pub use mem::MemTarget;
pub use rng::Rng;
pub use target::{DirTarget, FallocMode, Target, Whence};

/// Which kinds of operations a run draws from (all on by default).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpSet {
    /// `ftruncate` up and down.
    pub truncate: bool,
    /// `fallocate` modes to use; an empty set means no fallocate at all.
    pub fallocate: BTreeSet<FallocMode>,
    /// `copy_file_range`.
    pub copy_file_range: bool,
    /// `SEEK_DATA`/`SEEK_HOLE` checks.
    pub seek: bool,
    /// `fsync`/`fdatasync`.
    pub fsync: bool,
    /// Closing and reopening a file.
    pub reopen: bool,
    /// Reads and writes through shared mmap(2) mappings.
    pub mmap: bool,
    /// Writes through a second descriptor opened with O_APPEND.
    pub append: bool,
}

impl Default for OpSet {
    fn default() -> OpSet {
        OpSet {
            truncate: true,
            fallocate: FallocMode::ALL.into_iter().collect(),
            copy_file_range: true,
            seek: true,
            fsync: true,
            reopen: true,
            mmap: true,
            append: true,
        }
    }
}

/// Parameters of a run. The whole operation sequence is a function of these (and, where the
/// target refuses an operation as unsupported in non-strict mode, of which ones it refused).
#[derive(Clone, Debug)]
pub struct Config {
    /// Seed of the random sequence; printed on failure.
    pub seed: u64,
    /// Number of operations.
    pub ops: u64,
    /// Number of files (`fsx.0` ...).
    pub files: usize,
    /// Largest size a file may reach.
    pub max_file_size: u64,
    /// Largest length of one read, write, fallocate or copy.
    pub max_op_len: u64,
    /// Close everything, call the remount hook and compare all files every this many
    /// operations (0: never).
    pub remount_every: u64,
    /// How many recent operations a failure shows.
    pub history: usize,
    /// Operation kinds to draw from (reads and writes are always on).
    pub ops_enabled: OpSet,
    /// When true an `EOPNOTSUPP` answer is a failure; otherwise that operation (fallocate mode
    /// or copy_file_range) is dropped for the rest of the run and listed in the report.
    pub strict: bool,
    /// Print a progress line to stderr every this many operations (0: never).
    pub progress_every: u64,
    /// Call the crash hook every this many operations (0: never); see [`Fsx::run_with_crashes`].
    pub crash_every: u64,
    /// Workaround knob: fdatasync a file before each SEEK_DATA/SEEK_HOLE on it, for targets
    /// whose seek misbehaves with unflushed data (draws nothing from the random stream).
    pub sync_before_seek: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            seed: 1,
            ops: 10_000,
            files: 4,
            max_file_size: 4 << 20,
            max_op_len: 1 << 20,
            remount_every: 0,
            history: 40,
            ops_enabled: OpSet::default(),
            strict: false,
            progress_every: 0,
            sync_before_seek: false,
            crash_every: 0,
        }
    }
}

/// What a successful run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Seed of the run.
    pub seed: u64,
    /// Operations run.
    pub ops: u64,
    /// Count of each operation kind run.
    pub counts: BTreeMap<&'static str, u64>,
    /// Bytes written by pwrite.
    pub bytes_written: u64,
    /// Bytes read and compared (including full compares).
    pub bytes_read: u64,
    /// Times the remount hook ran.
    pub remounts: u64,
    /// Full compares of every file (after each remount and at the end).
    pub full_compares: u64,
    /// Operations the target refused with EOPNOTSUPP and that were then dropped.
    pub unsupported: BTreeSet<String>,
    /// copy_file_range calls that copied fewer bytes than were available.
    pub short_copies: u64,
    /// Times the crash hook ran.
    pub crashes: u64,
    /// Files found intact after a crash because they had been fsync'd and not changed since.
    pub crash_checked_files: u64,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "fsx passed: seed {} ops {} remounts {} full compares {} written {} MiB read {} MiB",
            self.seed,
            self.ops,
            self.remounts,
            self.full_compares,
            self.bytes_written >> 20,
            self.bytes_read >> 20
        )?;
        let counts: Vec<String> = self
            .counts
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        write!(f, "  ops: {}", counts.join(" "))?;
        if self.crashes > 0 {
            write!(
                f,
                "\n  crashes: {} ({} fsync'd, unchanged files verified intact)",
                self.crashes, self.crash_checked_files
            )?;
        }
        if self.short_copies > 0 {
            write!(
                f,
                "\n  short copy_file_range results: {}",
                self.short_copies
            )?;
        }
        if !self.unsupported.is_empty() {
            let u: Vec<&str> = self.unsupported.iter().map(String::as_str).collect();
            write!(f, "\n  unsupported (dropped): {}", u.join(" "))?;
        }
        Ok(())
    }
}

/// A mismatch or an unexpected error: everything needed to understand and replay it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Seed of the run.
    pub seed: u64,
    /// Number of the failing operation (1-based; 0 for setup).
    pub op: u64,
    /// What went wrong.
    pub message: String,
    /// The last operations, oldest first, the failing one last.
    pub history: Vec<String>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "fsx FAILED: seed {} op #{}: {}",
            self.seed, self.op, self.message
        )?;
        writeln!(f, "last {} operations (oldest first):", self.history.len())?;
        for h in &self.history {
            writeln!(f, "  {h}")?;
        }
        write!(
            f,
            "replay with the same configuration and --seed {}",
            self.seed
        )
    }
}

impl std::error::Error for Failure {}

/// The remount hook: called with every file closed; must leave the directory usable again.
pub type RemountHook<'a> = &'a mut dyn FnMut() -> io::Result<()>;

const PAGE: u64 = 4096;
/// Longest contiguous zero or data stretch checked by one comparison chunk.
const COMPARE_CHUNK: u64 = 1 << 20;

/// One run of the tester: the model, the random stream and the recent history.
pub struct Fsx {
    cfg: Config,
    rng: Rng,
    model: Vec<Vec<u8>>,
    history: VecDeque<String>,
    op: u64,
    report: Report,
    falloc_modes: Vec<FallocMode>,
    copy_enabled: bool,
    /// Per file: its contents at the last fsync, or after the last remount or crash.
    synced: Vec<Option<Vec<u8>>>,
    /// Per file: changed since `synced` was taken.
    dirty: Vec<bool>,
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

fn is_unsupported(e: &io::Error) -> bool {
    let c = errno(e);
    c == libc::EOPNOTSUPP || c == libc::ENOTSUP || c == libc::ENOSYS
}

/// A few bytes around a position, in hex, for failure messages.
fn hex_window(buf: &[u8], at: usize) -> String {
    let end = (at + 16).min(buf.len());
    buf.get(at..end)
        .unwrap_or(&[])
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

impl Fsx {
    /// A run with configuration `cfg` (nothing touches the target until [`Fsx::run`]).
    pub fn new(cfg: Config) -> Fsx {
        let rng = Rng::new(cfg.seed);
        let falloc_modes = cfg.ops_enabled.fallocate.iter().copied().collect();
        let copy_enabled = cfg.ops_enabled.copy_file_range && cfg.files > 0;
        Fsx {
            model: vec![Vec::new(); cfg.files],
            history: VecDeque::new(),
            op: 0,
            report: Report {
                seed: cfg.seed,
                ..Report::default()
            },
            rng,
            falloc_modes,
            copy_enabled,
            synced: vec![None; cfg.files],
            dirty: vec![true; cfg.files],
            cfg,
        }
    }

    /// Runs the whole sequence against `target`, calling `remount` (with every file closed)
    /// every `remount_every` operations. Files are created empty first; a full compare ends
    /// the run. Every file is closed on return, whatever the outcome.
    pub fn run(
        self,
        target: &mut dyn Target,
        remount: Option<RemountHook<'_>>,
    ) -> Result<Report, Failure> {
        self.run_with_crashes(target, remount, None)
    }

    /// [`Fsx::run`], and every `crash_every` operations: fsync a random half of the files,
    /// close everything, call `crash` (which must lose whatever the filesystem had not made
    /// durable, for example by SIGKILLing a FUSE daemon, then mount again), and check that
    /// every file fsync'd and not changed since reads back exactly. Files changed since their
    /// last fsync may hold any mix of old and new data; the model adopts what they hold.
    pub fn run_with_crashes(
        mut self,
        target: &mut dyn Target,
        mut remount: Option<RemountHook<'_>>,
        mut crash: Option<RemountHook<'_>>,
    ) -> Result<Report, Failure> {
        let result = self.run_inner(target, &mut remount, &mut crash);
        for i in 0..self.cfg.files {
            target.close(i);
        }
        result.map(|()| self.report)
    }

    fn run_inner(
        &mut self,
        target: &mut dyn Target,
        remount: &mut Option<RemountHook<'_>>,
        crash: &mut Option<RemountHook<'_>>,
    ) -> Result<(), Failure> {
        if self.cfg.files == 0 {
            return Err(self.fail("configuration has no files".into()));
        }
        if self.cfg.max_file_size == 0 || self.cfg.max_op_len == 0 {
            return Err(self.fail("max_file_size and max_op_len must be positive".into()));
        }
        for i in 0..self.cfg.files {
            target
                .open(i, true)
                .map_err(|e| self.fail(format!("creating file {i}: {e}")))?;
        }
        while self.op < self.cfg.ops {
            self.op += 1;
            self.one_op(target)?;
            if self.cfg.remount_every > 0 && self.op.is_multiple_of(self.cfg.remount_every) {
                self.remount(target, remount)?;
            }
            if self.cfg.crash_every > 0 && self.op.is_multiple_of(self.cfg.crash_every) {
                self.crash(target, crash)?;
            }
            if self.cfg.progress_every > 0 && self.op.is_multiple_of(self.cfg.progress_every) {
                eprintln!(
                    "fsx: seed {} op {}/{}",
                    self.cfg.seed, self.op, self.cfg.ops
                );
            }
        }
        self.full_compare(target, "final compare")?;
        self.report.ops = self.op;
        Ok(())
    }

    fn log(&mut self, entry: String) {
        if self.cfg.history == 0 {
            return;
        }
        if self.history.len() >= self.cfg.history {
            self.history.pop_front();
        }
        self.history.push_back(format!("#{} {entry}", self.op));
    }

    fn fail(&self, message: String) -> Failure {
        Failure {
            seed: self.cfg.seed,
            op: self.op,
            message,
            history: self.history.iter().cloned().collect(),
        }
    }

    fn count(&mut self, name: &'static str) {
        *self.report.counts.entry(name).or_insert(0) += 1;
    }

    fn size_of(&self, f: usize) -> u64 {
        self.model[f].len() as u64
    }

    /// An offset: page-aligned, near the end of file, or anywhere below `max_file_size`.
    fn pick_offset(&mut self, f: usize) -> u64 {
        let max = self.cfg.max_file_size;
        let size = self.size_of(f);
        match self.rng.below(4) {
            0 => self.rng.below(max.div_ceil(PAGE)) * PAGE,
            1 => {
                let lo = size.saturating_sub(64 << 10);
                let hi = (size + (64 << 10)).min(max - 1);
                self.rng.range(lo, hi)
            }
            2 if size > 0 => self.rng.below(size),
            _ => self.rng.below(max),
        }
    }

    /// A length: tiny, small, medium or large, sometimes whole pages.
    fn pick_len(&mut self) -> u64 {
        let cap = self.cfg.max_op_len;
        let len = match self.rng.below(10) {
            0..=3 => self.rng.range(1, 512),
            4..=6 => self.rng.range(1, 16 << 10),
            7..=8 => self.rng.range(1, 128 << 10),
            _ => self.rng.range(1, cap),
        };
        let len = if self.rng.chance(1, 4) {
            len.div_ceil(PAGE) * PAGE
        } else {
            len
        };
        len.clamp(1, cap)
    }

    /// `offset` and `len` trimmed so the range ends at or below `max_file_size`.
    fn clamp_range(&self, offset: u64, len: u64) -> (u64, u64) {
        let max = self.cfg.max_file_size;
        let offset = offset.min(max - 1);
        (offset, len.min(max - offset).max(1))
    }

    fn one_op(&mut self, target: &mut dyn Target) -> Result<(), Failure> {
        let f = self.rng.below(self.cfg.files as u64) as usize;
        let ops = &self.cfg.ops_enabled;
        let roll = self.rng.below(100);
        match roll {
            0..=19 => self.op_read(target, f)?,
            20..=41 => self.op_write(target, f)?,
            42..=45 if ops.mmap => self.op_map_read(target, f)?,
            46..=49 if ops.mmap => self.op_map_write(target, f)?,
            50..=57 if ops.truncate => self.op_truncate(target, f)?,
            58..=71 if !self.falloc_modes.is_empty() => self.op_fallocate(target, f)?,
            72..=81 if self.copy_enabled => self.op_copy(target, f)?,
            82..=91 if ops.seek => self.op_seek(target, f)?,
            92..=95 if ops.fsync => self.op_fsync(target, f)?,
            96..=97 if ops.reopen => self.op_reopen(target, f)?,
            98..=99 if ops.append => self.op_append(target, f)?,
            r if r % 2 == 0 => self.op_read(target, f)?,
            _ => self.op_write(target, f)?,
        }
        self.check_size(target, f)
    }

    fn check_size(&mut self, target: &mut dyn Target, f: usize) -> Result<(), Failure> {
        let got = target
            .size(f)
            .map_err(|e| self.fail(format!("fstat of file {f}: {e}")))?;
        let want = self.size_of(f);
        if got != want {
            return Err(self.fail(format!(
                "file {f} size mismatch: expected {want:#x} ({want}), got {got:#x} ({got})"
            )));
        }
        Ok(())
    }

    /// Reads `[offset, offset+len)` of file `f` and compares it with the model.
    fn compare_range(
        &mut self,
        target: &mut dyn Target,
        f: usize,
        offset: u64,
        len: u64,
        what: &str,
    ) -> Result<(), Failure> {
        let size = self.size_of(f);
        let expect_len = size.saturating_sub(offset).min(len) as usize;
        let mut buf = vec![0u8; len as usize];
        let n = target
            .pread(f, offset, &mut buf)
            .map_err(|e| self.fail(format!("{what}: pread of file {f} at {offset:#x}: {e}")))?;
        self.report.bytes_read += n as u64;
        let start = offset.min(size) as usize;
        let expected = &self.model[f][start..start + expect_len];
        let got = &buf[..n.min(buf.len())];
        if let Some(i) = expected.iter().zip(got).position(|(a, b)| a != b) {
            let bad_end = expected
                .iter()
                .zip(got)
                .skip(i)
                .position(|(a, b)| a == b)
                .map_or(expected.len().min(got.len()), |j| i + j);
            return Err(self.fail(format!(
                "{what}: file {f} data mismatch at {:#x} (op range {offset:#x}+{len:#x}); \
                 {} bad bytes up to {:#x}\n  expected: {}\n  got:      {}",
                offset + i as u64,
                bad_end - i,
                offset + bad_end as u64,
                hex_window(expected, i),
                hex_window(got, i)
            )));
        }
        if n != expect_len {
            return Err(self.fail(format!(
                "{what}: file {f} pread at {offset:#x} of {len:#x} bytes returned {n:#x}, \
                 expected {expect_len:#x} (model size {size:#x})"
            )));
        }
        Ok(())
    }

    fn full_compare(&mut self, target: &mut dyn Target, what: &str) -> Result<(), Failure> {
        self.report.full_compares += 1;
        for f in 0..self.cfg.files {
            self.check_size(target, f).map_err(|e| Failure {
                message: format!("{what}: {}", e.message),
                ..e
            })?;
            let size = self.size_of(f);
            let mut off = 0;
            while off < size {
                let len = COMPARE_CHUNK.min(size - off);
                self.compare_range(target, f, off, len, what)?;
                off += len;
            }
            // One byte past the end must read nothing.
            self.compare_range(target, f, size, 1, what)?;
        }
        Ok(())
    }

    fn remount(
        &mut self,
        target: &mut dyn Target,
        remount: &mut Option<RemountHook<'_>>,
    ) -> Result<(), Failure> {
        let Some(hook) = remount.as_mut() else {
            return Ok(());
        };
        self.log("REMOUNT".into());
        for i in 0..self.cfg.files {
            target.close(i);
        }
        hook().map_err(|e| self.fail(format!("remount hook failed: {e}")))?;
        self.report.remounts += 1;
        for i in 0..self.cfg.files {
            target
                .open(i, false)
                .map_err(|e| self.fail(format!("reopening file {i} after remount: {e}")))?;
        }
        self.full_compare(target, "compare after remount")?;
        // A clean unmount makes everything durable.
        for f in 0..self.cfg.files {
            self.synced[f] = Some(self.model[f].clone());
            self.dirty[f] = false;
        }
        Ok(())
    }

    fn crash(
        &mut self,
        target: &mut dyn Target,
        crash: &mut Option<RemountHook<'_>>,
    ) -> Result<(), Failure> {
        let Some(hook) = crash.as_mut() else {
            return Ok(());
        };
        let mut synced_now = Vec::new();
        for f in 0..self.cfg.files {
            if self.rng.chance(1, 2) {
                target
                    .fsync(f, false)
                    .map_err(|e| self.fail(format!("fsync of file {f} before crash: {e}")))?;
                self.synced[f] = Some(self.model[f].clone());
                self.dirty[f] = false;
                synced_now.push(f);
            }
        }
        self.log(format!("CRASH (just fsync'd: {synced_now:?})"));
        for i in 0..self.cfg.files {
            target.close(i);
        }
        hook().map_err(|e| self.fail(format!("crash hook failed: {e}")))?;
        self.report.crashes += 1;
        for i in 0..self.cfg.files {
            target
                .open(i, false)
                .map_err(|e| self.fail(format!("reopening file {i} after crash: {e}")))?;
        }
        for f in 0..self.cfg.files {
            if !self.dirty[f] && self.synced[f].is_some() {
                self.check_size(target, f).map_err(|e| Failure {
                    message: format!("fsync'd, unchanged file after crash: {}", e.message),
                    ..e
                })?;
                let size = self.size_of(f);
                let mut off = 0;
                while off < size {
                    let len = COMPARE_CHUNK.min(size - off);
                    self.compare_range(target, f, off, len, "fsync'd, unchanged file after crash")?;
                    off += len;
                }
                self.report.crash_checked_files += 1;
            } else {
                self.adopt(target, f)?;
            }
            self.synced[f] = Some(self.model[f].clone());
            self.dirty[f] = false;
        }
        Ok(())
    }

    /// Takes file `f`'s contents as they are now as the model (after a crash lost an unknown
    /// part of its unsynced changes).
    fn adopt(&mut self, target: &mut dyn Target, f: usize) -> Result<(), Failure> {
        let size = target
            .size(f)
            .map_err(|e| self.fail(format!("fstat of file {f} after crash: {e}")))?;
        if size > self.cfg.max_file_size {
            return Err(self.fail(format!(
                "file {f} is {size:#x} bytes after crash, more than it ever held"
            )));
        }
        let mut data = vec![0u8; size as usize];
        let n = target
            .pread(f, 0, &mut data)
            .map_err(|e| self.fail(format!("reading file {f} after crash: {e}")))?;
        if n as u64 != size {
            return Err(self.fail(format!(
                "file {f} after crash: size {size:#x} but only {n:#x} bytes read"
            )));
        }
        self.model[f] = data;
        Ok(())
    }

    fn op_read(&mut self, target: &mut dyn Target, f: usize) -> Result<(), Failure> {
        self.count("read");
        let offset = self.pick_offset(f);
        let len = self.pick_len();
        let size = self.size_of(f);
        self.log(format!(
            "f{f} READ  {offset:#x} len {len:#x} (size {size:#x})"
        ));
        self.compare_range(target, f, offset, len, "read")
    }

    fn op_write(&mut self, target: &mut dyn Target, f: usize) -> Result<(), Failure> {
        self.count("write");
        self.dirty[f] = true;
        let offset = self.pick_offset(f);
        let len = self.pick_len();
        let (offset, len) = self.clamp_range(offset, len);
        let mut data = vec![0u8; len as usize];
        self.rng.fill_nonzero(&mut data);
        let size = self.size_of(f);
        self.log(format!(
            "f{f} WRITE {offset:#x} len {len:#x} (size {size:#x} -> {:#x})",
            size.max(offset + len)
        ));
        let n = target
            .pwrite(f, offset, &data)
            .map_err(|e| self.fail(format!("pwrite of file {f}: {e}")))?;
        if n != data.len() {
            return Err(self.fail(format!("pwrite wrote {n:#x} of {len:#x} bytes")));
        }
        self.report.bytes_written += len;
        let m = &mut self.model[f];
        let end = (offset + len) as usize;
        if m.len() < end {
            m.resize(end, 0);
        }
        m[offset as usize..end].copy_from_slice(&data);
        Ok(())
    }

    fn op_map_read(&mut self, target: &mut dyn Target, f: usize) -> Result<(), Failure> {
        let size = self.size_of(f);
        if size == 0 {
            return self.op_read(target, f);
        }
        self.count("mapread");
        let offset = self.rng.below(size);
        let len = self.pick_len().min(size - offset);
        self.log(format!(
            "f{f} MAPREAD  {offset:#x} len {len:#x} (size {size:#x})"
        ));
        let mut buf = vec![0u8; len as usize];
        target
            .map_read(f, offset, &mut buf)
            .map_err(|e| self.fail(format!("mmap read of file {f} at {offset:#x}: {e}")))?;
        self.report.bytes_read += len;
        let expected = &self.model[f][offset as usize..(offset + len) as usize];
        if let Some(i) = expected.iter().zip(&buf).position(|(a, b)| a != b) {
            return Err(self.fail(format!(
                "mapread: file {f} data mismatch at {:#x}\n  expected: {}\n  got:      {}",
                offset + i as u64,
                hex_window(expected, i),
                hex_window(&buf, i)
            )));
        }
        Ok(())
    }

    /// Like classic fsx: a mapped write past the end first extends the file with ftruncate.
    fn op_map_write(&mut self, target: &mut dyn Target, f: usize) -> Result<(), Failure> {
        self.count("mapwrite");
        self.dirty[f] = true;
        let offset = self.pick_offset(f);
        let len = self.pick_len();
        let (offset, len) = self.clamp_range(offset, len);
        let size = self.size_of(f);
        let end = offset + len;
        self.log(format!(
            "f{f} MAPWRITE {offset:#x} len {len:#x} (size {size:#x} -> {:#x})",
            size.max(end)
        ));
        if end > size {
            target
                .truncate(f, end)
                .map_err(|e| self.fail(format!("ftruncate before mapwrite to {end:#x}: {e}")))?;
            self.model[f].resize(end as usize, 0);
        }
        let mut data = vec![0u8; len as usize];
        self.rng.fill_nonzero(&mut data);
        target
            .map_write(f, offset, &data)
            .map_err(|e| self.fail(format!("mmap write of file {f} at {offset:#x}: {e}")))?;
        self.report.bytes_written += len;
        self.model[f][offset as usize..end as usize].copy_from_slice(&data);
        Ok(())
    }

    fn op_append(&mut self, target: &mut dyn Target, f: usize) -> Result<(), Failure> {
        let size = self.size_of(f);
        let room = self.cfg.max_file_size.saturating_sub(size);
        if room == 0 {
            return self.op_truncate(target, f);
        }
        self.count("append");
        self.dirty[f] = true;
        let len = self.pick_len().min(room);
        let mut data = vec![0u8; len as usize];
        self.rng.fill_nonzero(&mut data);
        self.log(format!(
            "f{f} APPEND len {len:#x} (size {size:#x} -> {:#x})",
            size + len
        ));
        let got = target
            .append(f, &data)
            .map_err(|e| self.fail(format!("O_APPEND write of file {f}: {e}")))?;
        if got != size + len {
            return Err(self.fail(format!(
                "O_APPEND write of {len:#x} bytes to file {f} of size {size:#x}: \
                 the size is now {got:#x}, expected {:#x}",
                size + len
            )));
        }
        self.report.bytes_written += len;
        self.model[f].extend_from_slice(&data);
        Ok(())
    }

    fn op_truncate(&mut self, target: &mut dyn Target, f: usize) -> Result<(), Failure> {
        self.count("truncate");
        self.dirty[f] = true;
        let size = self.size_of(f);
        let mut new = if self.rng.chance(1, 2) {
            self.rng.below(size + 1)
        } else {
            self.rng.range(size, self.cfg.max_file_size)
        };
        if self.rng.chance(1, 4) {
            new = (new / PAGE * PAGE).min(self.cfg.max_file_size);
        }
        self.log(format!("f{f} TRUNC {size:#x} -> {new:#x}"));
        target
            .truncate(f, new)
            .map_err(|e| self.fail(format!("ftruncate of file {f} to {new:#x}: {e}")))?;
        self.model[f].resize(new as usize, 0);
        Ok(())
    }

    fn op_fallocate(&mut self, target: &mut dyn Target, f: usize) -> Result<(), Failure> {
        let idx = self.rng.below(self.falloc_modes.len() as u64) as usize;
        let mode = self.falloc_modes[idx];
        self.count(mode.name());
        self.dirty[f] = true;
        let offset = self.pick_offset(f);
        let len = self.pick_len();
        let (offset, len) = self.clamp_range(offset, len);
        let size = self.size_of(f);
        self.log(format!(
            "f{f} {} {offset:#x} len {len:#x} (size {size:#x})",
            mode.name()
        ));
        if let Err(e) = target.fallocate(f, mode, offset, len) {
            if is_unsupported(&e) && !self.cfg.strict {
                self.falloc_modes.retain(|m| *m != mode);
                self.report.unsupported.insert(mode.name().to_string());
                return Ok(());
            }
            return Err(self.fail(format!(
                "fallocate {} of file {f} at {offset:#x} len {len:#x}: {e}",
                mode.name()
            )));
        }
        let end = offset + len;
        let m = &mut self.model[f];
        let grow = matches!(mode, FallocMode::Allocate | FallocMode::ZeroRange);
        if grow && (m.len() as u64) < end {
            m.resize(end as usize, 0);
        }
        if matches!(
            mode,
            FallocMode::PunchHole | FallocMode::ZeroRange | FallocMode::ZeroRangeKeepSize
        ) {
            let s = (offset as usize).min(m.len());
            let e = (end as usize).min(m.len());
            m[s..e].fill(0);
        }
        Ok(())
    }

    fn op_copy(&mut self, target: &mut dyn Target, src: usize) -> Result<(), Failure> {
        self.count("copy_file_range");
        let dst = self.rng.below(self.cfg.files as u64) as usize;
        self.dirty[dst] = true;
        let src_size = self.size_of(src);
        let src_off = if src_size > 0 && self.rng.chance(7, 8) {
            if self.rng.chance(1, 3) {
                self.rng.below(src_size.div_ceil(PAGE)) * PAGE
            } else {
                self.rng.below(src_size)
            }
        } else {
            self.pick_offset(src)
        };
        let dst_off = self.pick_offset(dst);
        let len = self.pick_len();
        let (dst_off, len) = self.clamp_range(dst_off, len);
        if src == dst && src_off < dst_off + len && dst_off < src_off + len {
            self.log(format!(
                "f{src} COPY  skipped: overlapping {src_off:#x} -> {dst_off:#x} len {len:#x}"
            ));
            return Ok(());
        }
        let available = src_size.saturating_sub(src_off).min(len);
        self.log(format!(
            "f{src} COPY  {src_off:#x} -> f{dst} {dst_off:#x} len {len:#x} \
             (src size {src_size:#x}, dst size {:#x})",
            self.size_of(dst)
        ));
        let n = match target.copy_file_range(src, src_off, dst, dst_off, len) {
            Ok(n) => n,
            Err(e) if is_unsupported(&e) && !self.cfg.strict => {
                self.copy_enabled = false;
                self.report.unsupported.insert("copy_file_range".into());
                return Ok(());
            }
            Err(e) => {
                return Err(self.fail(format!(
                    "copy_file_range f{src} {src_off:#x} -> f{dst} {dst_off:#x} len {len:#x}: {e}"
                )));
            }
        };
        if n > available || (n == 0 && available > 0) {
            return Err(self.fail(format!(
                "copy_file_range f{src} {src_off:#x} -> f{dst} {dst_off:#x} len {len:#x} \
                 returned {n:#x}; {available:#x} bytes were available"
            )));
        }
        if n < available {
            self.report.short_copies += 1;
        }
        if n > 0 {
            let s = src_off as usize;
            let data = self.model[src][s..s + n as usize].to_vec();
            let m = &mut self.model[dst];
            let end = dst_off as usize + data.len();
            if m.len() < end {
                m.resize(end, 0);
            }
            m[dst_off as usize..end].copy_from_slice(&data);
        }
        Ok(())
    }

    fn op_seek(&mut self, target: &mut dyn Target, f: usize) -> Result<(), Failure> {
        let size = self.size_of(f);
        let whence = if self.rng.chance(1, 2) {
            Whence::Data
        } else {
            Whence::Hole
        };
        let offset = if size > 0 && self.rng.chance(7, 8) {
            self.rng.below(size)
        } else {
            size + self.rng.below(2 * PAGE)
        };
        let name = if whence == Whence::Data {
            "SEEK_DATA"
        } else {
            "SEEK_HOLE"
        };
        self.count(name);
        if self.cfg.sync_before_seek {
            self.log(format!("f{f} FDATASYNC (before seek)"));
            target
                .fsync(f, true)
                .map_err(|e| self.fail(format!("fdatasync before seek of file {f}: {e}")))?;
        }
        self.log(format!("f{f} {name} {offset:#x} (size {size:#x})"));
        let r = target.seek(f, offset, whence);
        if let Err(e) = &r
            && is_unsupported(e)
            && !self.cfg.strict
        {
            self.report.unsupported.insert(name.into());
            return Ok(());
        }
        let model = &self.model[f];
        let zero = |from: u64, to: u64| -> Option<u64> {
            model[from as usize..to as usize]
                .iter()
                .position(|&b| b != 0)
                .map(|i| from + i as u64)
        };
        let bad = |msg: String| Err(self.fail(format!("{name} at {offset:#x}: {msg}")));
        match r {
            Err(e) if errno(&e) == libc::ENXIO => {
                if offset >= size {
                    return Ok(());
                }
                if whence == Whence::Hole {
                    return bad(format!("ENXIO inside the file (size {size:#x})"));
                }
                // No data from `offset` on: everything up to EOF must read as zeroes.
                if let Some(p) = zero(offset, size) {
                    return bad(format!("ENXIO, but the byte at {p:#x} holds data"));
                }
                Ok(())
            }
            Err(e) => bad(format!("{e}")),
            Ok(p) if offset >= size => bad(format!(
                "returned {p:#x} at or past EOF (size {size:#x}); ENXIO expected"
            )),
            Ok(p) if p < offset || p > size => {
                bad(format!("returned {p:#x}, outside [{offset:#x}, {size:#x}]"))
            }
            Ok(p) if whence == Whence::Data && p == size => {
                bad(format!("returned EOF {p:#x}; ENXIO expected"))
            }
            Ok(p) if whence == Whence::Data => {
                if let Some(q) = zero(offset, p) {
                    return bad(format!(
                        "returned {p:#x}, skipping data at {q:#x} as if it were a hole"
                    ));
                }
                Ok(())
            }
            Ok(p) => {
                if p < size && model[p as usize] != 0 {
                    return bad(format!("returned {p:#x}, but that byte holds data"));
                }
                Ok(())
            }
        }
    }

    fn op_fsync(&mut self, target: &mut dyn Target, f: usize) -> Result<(), Failure> {
        let datasync = self.rng.chance(1, 2);
        let name = if datasync { "fdatasync" } else { "fsync" };
        self.count(name);
        self.log(format!("f{f} {}", name.to_uppercase()));
        target
            .fsync(f, datasync)
            .map_err(|e| self.fail(format!("{name} of file {f}: {e}")))?;
        self.synced[f] = Some(self.model[f].clone());
        self.dirty[f] = false;
        Ok(())
    }

    fn op_reopen(&mut self, target: &mut dyn Target, f: usize) -> Result<(), Failure> {
        self.count("reopen");
        self.log(format!("f{f} CLOSE+OPEN"));
        target.close(f);
        target
            .open(f, false)
            .map_err(|e| self.fail(format!("reopening file {f}: {e}")))
    }
}

#[cfg(test)]
mod tests;
