//! Tests of the tester: a correct target passes, and each deliberately broken target is caught
//! with a failure that names the seed and shows the operations that led there.

use std::cell::Cell;
use std::io;
use std::rc::Rc;

use super::*;

fn cfg(seed: u64, ops: u64) -> Config {
    Config {
        seed,
        ops,
        files: 3,
        max_file_size: 512 << 10,
        max_op_len: 192 << 10,
        remount_every: 0,
        history: 20,
        ..Config::default()
    }
}

#[test]
fn memory_target_passes_many_seeds_with_remounts() {
    for seed in 1..=5 {
        let mut t = MemTarget::new(3);
        let mut calls = 0u64;
        let mut hook = || {
            calls += 1;
            Ok(())
        };
        let c = Config {
            remount_every: 700,
            ..cfg(seed, 5_000)
        };
        let report = Fsx::new(c).run(&mut t, Some(&mut hook)).unwrap();
        assert_eq!(report.ops, 5_000);
        assert_eq!(report.remounts, 7);
        assert_eq!(calls, 7);
        assert_eq!(report.full_compares, 8);
        for name in [
            "read",
            "write",
            "truncate",
            "copy_file_range",
            "SEEK_DATA",
            "SEEK_HOLE",
            "PUNCH_HOLE",
            "ZERO_RANGE",
            "ZERO_RANGE_KEEP_SIZE",
            "FALLOC",
            "FALLOC_KEEP_SIZE",
            "reopen",
            "mapread",
            "mapwrite",
            "append",
        ] {
            assert!(
                report.counts.get(name).copied().unwrap_or(0) > 0,
                "{name} never ran: {report}"
            );
        }
        assert!(report.unsupported.is_empty());
    }
}

#[test]
fn same_seed_same_run_different_seed_different_run() {
    let run = |seed| {
        let mut t = MemTarget::new(3);
        let r = Fsx::new(cfg(seed, 2_000)).run(&mut t, None).unwrap();
        let contents: Vec<Vec<u8>> = (0..3).map(|i| t.contents(i).to_vec()).collect();
        (r, contents)
    };
    assert_eq!(run(99), run(99));
    assert_ne!(run(99).1, run(100).1);
}

/// How a [`Faulty`] target misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// The n-th write and every later one store one byte wrong.
    FlipOnWrite(u64),
    /// Writes after the n-th are lost at the next remount (never made durable).
    LoseOnRemount(u64),
    /// Truncating down keeps the old size (the data beyond still goes).
    TruncateKeepsSize,
    /// Punching a hole does nothing.
    PunchIgnored,
    /// SEEK_HOLE says "hole here" wherever it is asked.
    SeekHoleLies,
    /// copy_file_range reads one byte further in the source than asked.
    CopyOffByOne,
    /// A read ending past EOF returns one stale byte beyond EOF.
    ReadPastEof,
    /// Writes through a mapping never reach the file.
    MapWriteLost,
    /// O_APPEND is ignored: the data lands at offset 0.
    AppendAtZero,
}

struct Faulty {
    inner: MemTarget,
    fault: Fault,
    writes: u64,
    /// Contents saved at the last remount (for LoseOnRemount).
    durable: Option<Vec<Vec<u8>>>,
    remounted: Rc<Cell<bool>>,
}

impl Faulty {
    fn new(fault: Fault, files: usize) -> Faulty {
        Faulty {
            inner: MemTarget::new(files),
            fault,
            writes: 0,
            durable: None,
            remounted: Rc::new(Cell::new(false)),
        }
    }
}

impl Target for Faulty {
    fn open(&mut self, file: usize, create: bool) -> io::Result<()> {
        if self.remounted.replace(false)
            && let Some(saved) = self.durable.take()
        {
            for (i, c) in saved.into_iter().enumerate() {
                if let Some(m) = self.inner.contents_mut(i) {
                    *m = c;
                }
            }
        }
        self.inner.open(file, create)
    }
    fn close(&mut self, file: usize) {
        self.inner.close(file)
    }
    fn pwrite(&mut self, file: usize, offset: u64, data: &[u8]) -> io::Result<usize> {
        self.writes += 1;
        if self.fault == Fault::LoseOnRemount(self.writes) {
            self.durable = Some((0..3).map(|i| self.inner.contents(i).to_vec()).collect());
        }
        let n = self.inner.pwrite(file, offset, data)?;
        if matches!(self.fault, Fault::FlipOnWrite(n) if self.writes >= n)
            && let Some(m) = self.inner.contents_mut(file)
        {
            m[offset as usize + data.len() / 2] ^= 0x40;
        }
        Ok(n)
    }
    fn pread(&mut self, file: usize, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.pread(file, offset, buf)?;
        if self.fault == Fault::ReadPastEof && n < buf.len() {
            buf[n] = 0x77;
            return Ok(n + 1);
        }
        Ok(n)
    }
    fn size(&mut self, file: usize) -> io::Result<u64> {
        self.inner.size(file)
    }
    fn truncate(&mut self, file: usize, len: u64) -> io::Result<()> {
        let old = self.inner.size(file)?;
        self.inner.truncate(file, len)?;
        if self.fault == Fault::TruncateKeepsSize && len < old {
            self.inner.truncate(file, old)?;
        }
        Ok(())
    }
    fn fallocate(
        &mut self,
        file: usize,
        mode: FallocMode,
        offset: u64,
        len: u64,
    ) -> io::Result<()> {
        if self.fault == Fault::PunchIgnored && mode == FallocMode::PunchHole {
            return Ok(());
        }
        self.inner.fallocate(file, mode, offset, len)
    }
    fn copy_file_range(
        &mut self,
        src: usize,
        src_offset: u64,
        dst: usize,
        dst_offset: u64,
        len: u64,
    ) -> io::Result<u64> {
        if self.fault == Fault::CopyOffByOne {
            let size = self.inner.size(src)?;
            if src_offset + 1 < size {
                let n = self
                    .inner
                    .copy_file_range(src, src_offset + 1, dst, dst_offset, len)?;
                return Ok(n);
            }
        }
        self.inner
            .copy_file_range(src, src_offset, dst, dst_offset, len)
    }
    fn seek(&mut self, file: usize, offset: u64, whence: Whence) -> io::Result<u64> {
        let r = self.inner.seek(file, offset, whence)?;
        if self.fault == Fault::SeekHoleLies && whence == Whence::Hole {
            return Ok(offset);
        }
        Ok(r)
    }
    fn fsync(&mut self, file: usize, datasync: bool) -> io::Result<()> {
        self.inner.fsync(file, datasync)
    }
    fn append(&mut self, file: usize, data: &[u8]) -> io::Result<u64> {
        if self.fault == Fault::AppendAtZero {
            self.inner.pwrite(file, 0, data)?;
            return self.inner.size(file);
        }
        self.inner.append(file, data)
    }
    fn map_read(&mut self, file: usize, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.map_read(file, offset, buf)
    }
    fn map_write(&mut self, file: usize, offset: u64, data: &[u8]) -> io::Result<()> {
        if self.fault == Fault::MapWriteLost {
            return Ok(());
        }
        self.inner.map_write(file, offset, data)
    }
}

fn run_faulty(fault: Fault, remount_every: u64) -> Failure {
    let mut t = Faulty::new(fault, 3);
    let flag = t.remounted.clone();
    let mut hook = move || {
        flag.set(true);
        Ok(())
    };
    let c = Config {
        remount_every,
        ..cfg(12345, 20_000)
    };
    match Fsx::new(c).run(&mut t, Some(&mut hook)) {
        Ok(r) => panic!("fault {fault:?} went unnoticed: {r}"),
        Err(f) => f,
    }
}

#[test]
fn flipped_byte_is_caught_with_seed_and_history() {
    let f = run_faulty(Fault::FlipOnWrite(50), 0);
    assert_eq!(f.seed, 12345);
    assert!(f.message.contains("data mismatch"), "{f}");
    assert!(!f.history.is_empty() && f.history.len() <= 20);
    assert!(
        f.history
            .last()
            .unwrap()
            .starts_with(&format!("#{} ", f.op))
    );
    let text = f.to_string();
    assert!(text.contains("seed 12345"), "{text}");
    assert!(
        text.contains("expected:") && text.contains("got:"),
        "{text}"
    );
    // It must not fail before the corruption happened.
    assert!(f.op >= 50);
}

#[test]
fn lost_writes_are_caught_after_remount() {
    let f = run_faulty(Fault::LoseOnRemount(30), 500);
    assert!(f.message.contains("after remount"), "{f}");
    assert!(f.history.iter().any(|h| h.contains("REMOUNT")), "{f}");
}

#[test]
fn wrong_size_after_truncate_is_caught() {
    let f = run_faulty(Fault::TruncateKeepsSize, 0);
    assert!(f.message.contains("size mismatch"), "{f}");
    assert!(f.history.last().unwrap().contains("TRUNC"), "{f}");
}

#[test]
fn ignored_punch_hole_is_caught() {
    let f = run_faulty(Fault::PunchIgnored, 0);
    assert!(f.message.contains("mismatch"), "{f}");
    assert!(f.history.iter().any(|h| h.contains("PUNCH_HOLE")), "{f}");
}

#[test]
fn lying_seek_hole_is_caught() {
    let f = run_faulty(Fault::SeekHoleLies, 0);
    assert!(f.message.contains("SEEK_HOLE"), "{f}");
    assert!(f.message.contains("holds data"), "{f}");
}

#[test]
fn misplaced_copy_is_caught() {
    let f = run_faulty(Fault::CopyOffByOne, 0);
    assert!(f.message.contains("mismatch"), "{f}");
    assert!(f.history.iter().any(|h| h.contains("COPY")), "{f}");
}

#[test]
fn data_past_eof_is_caught() {
    let f = run_faulty(Fault::ReadPastEof, 0);
    assert!(f.message.contains("returned"), "{f}");
    assert!(f.history.last().unwrap().contains("READ"), "{f}");
}

#[test]
fn remount_hook_error_is_a_failure() {
    let mut t = MemTarget::new(3);
    let mut hook = || Err(io::Error::other("mount refused"));
    let c = Config {
        remount_every: 10,
        ..cfg(5, 100)
    };
    let f = Fsx::new(c).run(&mut t, Some(&mut hook)).unwrap_err();
    assert_eq!(f.op, 10);
    assert!(f.message.contains("mount refused"), "{f}");
}

/// The real system-call target on whatever filesystem holds the temp directory, remounting
/// being simulated by closing and reopening. Unsupported modes are tolerated here (tmpfs has
/// no ZERO_RANGE); the mount test runs strict.
#[test]
fn dir_target_on_a_real_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = DirTarget::new(dir.path(), 3);
    let mut hook = || Ok(());
    let c = Config {
        remount_every: 500,
        ..cfg(777, 3_000)
    };
    let report = Fsx::new(c).run(&mut t, Some(&mut hook)).unwrap();
    assert_eq!(report.remounts, 6);
    assert!(report.counts["write"] > 500, "{report}");
    assert!(!report.unsupported.contains("copy_file_range"), "{report}");
}

/// The same real target, corrupted behind the tester's back through another descriptor.
#[test]
fn dir_target_corrupted_from_outside_is_caught() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let mut t = DirTarget::new(dir.path(), 2);
    let path = t.path(1);
    let mut n = 0;
    let mut hook = || {
        n += 1;
        if n == 2 {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)?;
            let len = f.metadata()?.len();
            // Invert 8 bytes in the middle: whatever they held, they are now wrong.
            let mut b = [0u8; 8];
            f.read_exact_at(&mut b, len / 2)?;
            f.write_all_at(&b.map(|x| !x), len / 2)?;
        }
        Ok(())
    };
    let c = Config {
        files: 2,
        remount_every: 300,
        ..cfg(4242, 3_000)
    };
    let f = Fsx::new(c).run(&mut t, Some(&mut hook)).unwrap_err();
    assert_eq!(f.op, 600, "{f}");
    assert!(f.message.contains("after remount"), "{f}");
    assert!(f.message.contains("file 1 data mismatch"), "{f}");
}

#[test]
fn lost_mmap_write_is_caught() {
    let f = run_faulty(Fault::MapWriteLost, 0);
    assert!(f.message.contains("mismatch"), "{f}");
    assert!(f.history.iter().any(|h| h.contains("MAPWRITE")), "{f}");
}

#[test]
fn ignored_o_append_is_caught() {
    let f = run_faulty(Fault::AppendAtZero, 0);
    assert!(f.history.last().unwrap().contains("APPEND"), "{f}");
}

#[test]
fn sync_before_seek_draws_nothing_from_the_random_stream() {
    let run = |sync_before_seek| {
        let mut t = MemTarget::new(3);
        let c = Config {
            sync_before_seek,
            ..cfg(31, 3_000)
        };
        let r = Fsx::new(c).run(&mut t, None).unwrap();
        let contents: Vec<Vec<u8>> = (0..3).map(|i| t.contents(i).to_vec()).collect();
        (r, contents)
    };
    let (a, ca) = run(false);
    let (b, cb) = run(true);
    assert_eq!(a, b);
    assert_eq!(ca, cb);
    assert!(a.counts["SEEK_DATA"] > 0);
}

/// A memory target with real crash semantics: each file has a durable copy taken at fsync;
/// a crash brings every file back to it. `broken_fsync` ignores fsync of file 0.
struct CrashMem {
    inner: MemTarget,
    durable: Vec<Vec<u8>>,
    crashed: Rc<Cell<bool>>,
    broken_fsync: bool,
}

impl CrashMem {
    fn new(files: usize, broken_fsync: bool) -> CrashMem {
        CrashMem {
            inner: MemTarget::new(files),
            durable: vec![Vec::new(); files],
            crashed: Rc::new(Cell::new(false)),
            broken_fsync,
        }
    }
}

impl Target for CrashMem {
    fn open(&mut self, file: usize, create: bool) -> io::Result<()> {
        if self.crashed.replace(false) {
            for (i, d) in self.durable.iter().enumerate() {
                if let Some(m) = self.inner.contents_mut(i) {
                    *m = d.clone();
                }
            }
        }
        self.inner.open(file, create)
    }
    fn close(&mut self, file: usize) {
        self.inner.close(file)
    }
    fn pwrite(&mut self, file: usize, offset: u64, data: &[u8]) -> io::Result<usize> {
        self.inner.pwrite(file, offset, data)
    }
    fn pread(&mut self, file: usize, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.pread(file, offset, buf)
    }
    fn size(&mut self, file: usize) -> io::Result<u64> {
        self.inner.size(file)
    }
    fn truncate(&mut self, file: usize, len: u64) -> io::Result<()> {
        self.inner.truncate(file, len)
    }
    fn fallocate(
        &mut self,
        file: usize,
        mode: FallocMode,
        offset: u64,
        len: u64,
    ) -> io::Result<()> {
        self.inner.fallocate(file, mode, offset, len)
    }
    fn copy_file_range(
        &mut self,
        src: usize,
        src_offset: u64,
        dst: usize,
        dst_offset: u64,
        len: u64,
    ) -> io::Result<u64> {
        self.inner
            .copy_file_range(src, src_offset, dst, dst_offset, len)
    }
    fn seek(&mut self, file: usize, offset: u64, whence: Whence) -> io::Result<u64> {
        self.inner.seek(file, offset, whence)
    }
    fn fsync(&mut self, file: usize, datasync: bool) -> io::Result<()> {
        self.inner.fsync(file, datasync)?;
        if !(self.broken_fsync && file == 0) {
            self.durable[file] = self.inner.contents(file).to_vec();
        }
        Ok(())
    }
    fn append(&mut self, file: usize, data: &[u8]) -> io::Result<u64> {
        self.inner.append(file, data)
    }
    fn map_read(&mut self, file: usize, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.map_read(file, offset, buf)
    }
    fn map_write(&mut self, file: usize, offset: u64, data: &[u8]) -> io::Result<()> {
        self.inner.map_write(file, offset, data)
    }
}

fn crash_run(broken_fsync: bool) -> Result<Report, Failure> {
    let mut t = CrashMem::new(3, broken_fsync);
    let flag = t.crashed.clone();
    let mut crash = move || {
        flag.set(true);
        Ok(())
    };
    let c = Config {
        crash_every: 250,
        ..cfg(21, 5_000)
    };
    Fsx::new(c).run_with_crashes(&mut t, None, Some(&mut crash))
}

#[test]
fn crashes_that_keep_fsynced_data_pass() {
    let r = crash_run(false).unwrap();
    assert_eq!(r.crashes, 20);
    assert!(r.crash_checked_files >= 20, "{r:?}");
}

#[test]
fn an_fsync_that_is_not_durable_is_caught_after_a_crash() {
    let f = crash_run(true).unwrap_err();
    assert!(f.message.contains("after crash"), "{f}");
    assert!(f.message.contains("file 0"), "{f}");
    assert!(f.history.iter().any(|h| h.contains("CRASH")), "{f}");
}
