//! The crash harness: a device that records every write and flush, and the set of images a
//! crash could have left behind at each point of that record.
//!
//! The model of a crash is the one disks give: a write that returned is durable only once a
//! later flush returns; writes since the last flush may reach the media in any order, any of them
//! may be lost, and the one in flight may be torn at an atomic-unit boundary (512 bytes by
//! default, the guarantee every disk gives). A test records a workload through
//! [`RecordingDevice`], notes with [`RecordingDevice::mark`] where each commit returned, then
//! opens every image [`crash_images`] yields and checks it against the commits that had returned.
//!
//! [`FaultyDevice`] fails writes and flushes on demand, for error paths.
//!
//! Randomness comes from [`SplitMix64`] seeded by the caller, so a failure replays exactly.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::device::{BlockDevice, MemDevice};
use crate::error::{Error, Result};

/// One recorded device operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceOp {
    /// A write that returned successfully.
    Write { offset: u64, data: Vec<u8> },
    /// A flush that returned successfully.
    Flush,
}

/// Wraps a device and records every successful write and flush, in the order they took effect.
#[derive(Debug)]
pub struct RecordingDevice<D: BlockDevice> {
    inner: D,
    log: Mutex<Vec<DeviceOp>>,
}

impl<D: BlockDevice> RecordingDevice<D> {
    /// Starts recording on `inner`; its current contents are the base of the record.
    pub fn new(inner: D) -> Self {
        RecordingDevice {
            inner,
            log: Mutex::new(Vec::new()),
        }
    }

    /// A copy of the record so far.
    pub fn log(&self) -> Vec<DeviceOp> {
        self.lock().clone()
    }

    /// The length of the record now: call it right after a commit returns to note that every
    /// crash image with at least this many operations must show that commit.
    pub fn mark(&self) -> usize {
        self.lock().len()
    }

    /// The wrapped device.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// The wrapped device and the record.
    pub fn into_parts(self) -> (D, Vec<DeviceOp>) {
        let log = self.log.into_inner().unwrap_or_else(|p| p.into_inner());
        (self.inner, log)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<DeviceOp>> {
        // A panic elsewhere while holding the lock leaves a complete Vec; keep using it.
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<D: BlockDevice> BlockDevice for RecordingDevice<D> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.inner.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        // Hold the lock across the write so the record's order is the order writes took effect.
        let mut log = self.lock();
        self.inner.write_at(buf, offset)?;
        log.push(DeviceOp::Write {
            offset,
            data: buf.to_vec(),
        });
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        let mut log = self.lock();
        self.inner.flush()?;
        log.push(DeviceOp::Flush);
        Ok(())
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }
}

/// Wraps a device and makes writes and flushes fail on demand, as a dying disk or a full host
/// file system would: for tests that a failed commit returns an error and changes nothing
/// visible. Reads always pass through.
#[derive(Debug)]
pub struct FaultyDevice<D: BlockDevice> {
    inner: D,
    /// Writes and flushes issued so far.
    issued: AtomicU64,
    /// The first op number that fails; `u64::MAX` means none.
    fail_from: AtomicU64,
}

impl<D: BlockDevice> FaultyDevice<D> {
    /// A device that fails nothing yet.
    pub fn new(inner: D) -> Self {
        FaultyDevice {
            inner,
            issued: AtomicU64::new(0),
            fail_from: AtomicU64::new(u64::MAX),
        }
    }

    /// Lets `ops` more writes or flushes succeed, then fails every later one.
    pub fn fail_after(&self, ops: u64) {
        let from = self.issued.load(Ordering::SeqCst).saturating_add(ops);
        self.fail_from.store(from, Ordering::SeqCst);
    }

    /// Stops failing.
    pub fn heal(&self) {
        self.fail_from.store(u64::MAX, Ordering::SeqCst);
    }

    /// The wrapped device.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    fn admit(&self, what: &str) -> Result<()> {
        let n = self.issued.fetch_add(1, Ordering::SeqCst);
        if n >= self.fail_from.load(Ordering::SeqCst) {
            return Err(Error::io(
                format!("{what} (op {n})"),
                std::io::Error::other("injected device fault"),
            ));
        }
        Ok(())
    }
}

impl<D: BlockDevice> BlockDevice for FaultyDevice<D> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.inner.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.admit("write")?;
        self.inner.write_at(buf, offset)
    }

    fn flush(&self) -> Result<()> {
        self.admit("flush")?;
        self.inner.flush()
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }
}

/// Which crash an image models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CrashKind {
    /// Exactly the first `ops_applied` operations landed, in order.
    Prefix,
    /// The first `ops_applied` operations landed and the next, a write, landed only in part.
    TornWrite,
    /// The operations up to the last flush landed; of the writes after it (up to
    /// `ops_applied`), some subset landed in some order, the last of them possibly torn.
    Reordered,
}

/// One image a crash could leave.
#[derive(Debug)]
pub struct CrashImage {
    pub image: MemDevice,
    /// The crash came after this many operations had returned: a commit whose mark is at most
    /// this must be visible in the image.
    pub ops_applied: usize,
    /// Operations up to the last flush before the crash: all of them are in the image.
    pub flushed_ops: usize,
    pub kind: CrashKind,
    /// What was applied, for failure messages.
    pub description: String,
}

/// How many variants [`crash_images`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashOptions {
    /// Torn images per write of more than one atomic unit.
    pub torn_variants: usize,
    /// Reordered images per prefix with at least two writes since the last flush.
    pub reorder_variants: usize,
    /// Writes tear only at multiples of this many bytes.
    pub atomic_unit: usize,
}

impl Default for CrashOptions {
    fn default() -> Self {
        CrashOptions {
            torn_variants: 2,
            reorder_variants: 2,
            atomic_unit: 512,
        }
    }
}

/// Every crash image of `log` applied to `base`: for each prefix length `k` in `0..=log.len()`,
/// the image after `log[..k]` (kind [`CrashKind::Prefix`]); before it, when `log[k-1]` is a write
/// of several atomic units, `torn_variants` images with that write torn (its first units only,
/// or a random subset of its units); after it, when at least two writes follow the last flush,
/// `reorder_variants` images with a random subset of those writes applied in a random order.
///
/// Writes are clipped to `base`'s length (a device refuses writes past its end, so a record made
/// on a device of that size never has any). Deterministic for a given `seed`.
pub fn crash_images<'a>(
    base: &[u8],
    log: &'a [DeviceOp],
    seed: u64,
    opts: CrashOptions,
) -> CrashImages<'a> {
    CrashImages {
        log,
        opts: CrashOptions {
            atomic_unit: opts.atomic_unit.max(1),
            ..opts
        },
        rng: SplitMix64::new(seed),
        current: base.to_vec(),
        flushed: base.to_vec(),
        flushed_ops: 0,
        pending: Vec::new(),
        prefix: 0,
        phase: Phase::Enter,
    }
}

/// The iterator [`crash_images`] returns. It keeps the image of the current prefix and of the
/// last flush, and builds each image only when asked for it, so at most one image it yielded
/// and two of its own are alive at a time (a batch of large images would make the allocator
/// hand memory back to the system and fault it in again for the next batch).
pub struct CrashImages<'a> {
    log: &'a [DeviceOp],
    opts: CrashOptions,
    rng: SplitMix64,
    /// The image after `log[..prefix]`, or after `log[..prefix - 1]` while torn variants of
    /// `log[prefix - 1]` are being made.
    current: Vec<u8>,
    /// The image after `log[..flushed_ops]`.
    flushed: Vec<u8>,
    flushed_ops: usize,
    /// Indices of the writes after the last flush, in log order.
    pending: Vec<usize>,
    /// The prefix length being worked on.
    prefix: usize,
    phase: Phase,
}

/// Where the iterator is inside the images of one prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Starting the prefix: decide whether its last op gets torn variants.
    Enter,
    /// `made` torn variants of `log[prefix - 1]` yielded; that op is not applied yet.
    Torn { made: usize },
    /// The op is applied; the plain prefix image is next.
    Prefix,
    /// `made` reordered variants yielded.
    Reordered { made: usize },
    /// Every image was yielded.
    Done,
}

impl Iterator for CrashImages<'_> {
    type Item = CrashImage;

    fn next(&mut self) -> Option<CrashImage> {
        loop {
            match self.phase {
                Phase::Done => return None,
                Phase::Enter => {
                    self.phase = match self.prefix.checked_sub(1).map(|i| &self.log[i]) {
                        Some(DeviceOp::Write { data, .. })
                            if data.len().div_ceil(self.opts.atomic_unit) >= 2 =>
                        {
                            Phase::Torn { made: 0 }
                        }
                        _ => {
                            self.apply_last_op();
                            Phase::Prefix
                        }
                    }
                }
                Phase::Torn { made } if made < self.opts.torn_variants => {
                    self.phase = Phase::Torn { made: made + 1 };
                    return Some(self.torn(made));
                }
                Phase::Torn { .. } => {
                    self.apply_last_op();
                    self.phase = Phase::Prefix;
                }
                Phase::Prefix => {
                    self.phase = Phase::Reordered { made: 0 };
                    return Some(CrashImage {
                        image: MemDevice::from_bytes(self.current.clone()),
                        ops_applied: self.prefix,
                        flushed_ops: self.flushed_ops,
                        kind: CrashKind::Prefix,
                        description: format!("prefix of {} of {} ops", self.prefix, self.log.len()),
                    });
                }
                Phase::Reordered { made }
                    if self.pending.len() >= 2 && made < self.opts.reorder_variants =>
                {
                    self.phase = Phase::Reordered { made: made + 1 };
                    return Some(self.reordered());
                }
                Phase::Reordered { .. } => {
                    self.prefix += 1;
                    self.phase = if self.prefix > self.log.len() {
                        Phase::Done
                    } else {
                        Phase::Enter
                    };
                }
            }
        }
    }
}

impl CrashImages<'_> {
    /// Applies `log[prefix - 1]` (if any) to the running images.
    fn apply_last_op(&mut self) {
        let Some(index) = self.prefix.checked_sub(1) else {
            return;
        };
        match &self.log[index] {
            DeviceOp::Write { offset, data } => {
                apply_write(&mut self.current, *offset, data);
                self.pending.push(index);
            }
            DeviceOp::Flush => {
                self.flushed.clone_from(&self.current);
                self.flushed_ops = self.prefix;
                self.pending.clear();
            }
        }
    }

    /// Variant `variant` of the write `log[prefix - 1]` torn over the current image: even
    /// variants keep its first units, odd ones a random subset.
    fn torn(&mut self, variant: usize) -> CrashImage {
        let index = self.prefix - 1;
        // Invariant: next() enters Phase::Torn only when log[prefix - 1] is a write.
        let DeviceOp::Write { offset, data } = &self.log[index] else {
            unreachable!("Phase::Torn is entered only for a write");
        };
        let units = data.len().div_ceil(self.opts.atomic_unit);
        let landed = if variant.is_multiple_of(2) {
            let n = 1 + self.rng.below(units as u64 - 1) as usize;
            (0..units).map(|u| u < n).collect()
        } else {
            self.random_proper_subset(units)
        };
        let mut image = self.current.clone();
        let described = self.apply_units(&mut image, *offset, data, &landed);
        CrashImage {
            image: MemDevice::from_bytes(image),
            ops_applied: index,
            flushed_ops: self.flushed_ops,
            kind: CrashKind::TornWrite,
            description: format!(
                "prefix of {index} ops, then write op {index} ({} bytes at {offset}) torn: \
                 units {described} of {units} landed",
                data.len()
            ),
        }
    }

    /// The last flush's image plus a random subset of the pending writes in a random order, the
    /// last one applied possibly torn.
    fn reordered(&mut self) -> CrashImage {
        let mut chosen: Vec<usize> = self
            .pending
            .iter()
            .copied()
            .filter(|_| self.rng.below(4) != 0)
            .collect();
        // Fisher-Yates.
        for i in (1..chosen.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            chosen.swap(i, j);
        }
        let mut image = self.flushed.clone();
        let mut torn_note = String::new();
        let tear_last = self.rng.below(2) == 0;
        for (n, &index) in chosen.iter().enumerate() {
            if let DeviceOp::Write { offset, data } = &self.log[index] {
                let units = data.len().div_ceil(self.opts.atomic_unit);
                if tear_last && n + 1 == chosen.len() && units >= 2 {
                    let landed = self.random_proper_subset(units);
                    let described = self.apply_units(&mut image, *offset, data, &landed);
                    torn_note = format!(", op {index} torn to units {described}");
                } else {
                    apply_write(&mut image, *offset, data);
                }
            }
        }
        CrashImage {
            image: MemDevice::from_bytes(image),
            ops_applied: self.prefix,
            flushed_ops: self.flushed_ops,
            kind: CrashKind::Reordered,
            description: format!(
                "crash after {} ops: the first {} flushed, then writes {} of pending {} \
                 landed in that order{torn_note}",
                self.prefix,
                self.flushed_ops,
                short_list(&chosen),
                short_list(&self.pending)
            ),
        }
    }

    /// A random subset of `0..units`, neither empty nor complete (units >= 2).
    fn random_proper_subset(&mut self, units: usize) -> Vec<bool> {
        let mut landed: Vec<bool> = (0..units).map(|_| self.rng.below(2) == 0).collect();
        let count = landed.iter().filter(|&&l| l).count();
        if count == 0 {
            landed[self.rng.below(units as u64) as usize] = true;
        } else if count == units {
            landed[self.rng.below(units as u64) as usize] = false;
        }
        landed
    }

    /// Applies the atomic units of a write marked in `landed`; returns them as a short list.
    fn apply_units(&self, image: &mut [u8], offset: u64, data: &[u8], landed: &[bool]) -> String {
        let unit = self.opts.atomic_unit;
        let mut list = Vec::new();
        for (u, piece) in data.chunks(unit).enumerate() {
            if landed[u] {
                apply_write(image, offset + (u * unit) as u64, piece);
                list.push(u.to_string());
            }
        }
        list.join(",")
    }
}

/// A list of op indices for a description, shortened when long.
fn short_list(ops: &[usize]) -> String {
    const SHOWN: usize = 12;
    if ops.len() <= SHOWN {
        format!("{ops:?}")
    } else {
        format!("{:?}... ({} in all)", &ops[..SHOWN], ops.len())
    }
}

/// Applies `ops` to `image` in order (flushes change nothing). Writes are clipped to the image.
pub fn apply_ops(image: &mut [u8], ops: &[DeviceOp]) {
    for op in ops {
        if let DeviceOp::Write { offset, data } = op {
            apply_write(image, *offset, data);
        }
    }
}

fn apply_write(image: &mut [u8], offset: u64, data: &[u8]) {
    let len = image.len() as u64;
    if offset >= len {
        return;
    }
    // offset < len, which is a usize, so the casts are lossless.
    let start = offset as usize;
    let n = data.len().min(image.len() - start);
    image[start..start + n].copy_from_slice(&data[..n]);
}

/// Flips `count` random bits of `image` (the same bit may be drawn twice, undoing itself), and
/// returns each flip as (byte offset, bit index). Deterministic for a given `seed`.
pub fn flip_random_bits(image: &mut [u8], count: usize, seed: u64) -> Vec<(u64, u8)> {
    if image.is_empty() {
        return Vec::new();
    }
    let mut rng = SplitMix64::new(seed);
    (0..count)
        .map(|_| {
            let byte = rng.below(image.len() as u64);
            let bit = rng.below(8) as u8;
            // byte < image.len(), so it indexes the image.
            image[byte as usize] ^= 1 << bit;
            (byte, bit)
        })
        .collect()
}

/// SplitMix64 (Steele, Lea and Flood, 2014): a tiny, fast, well-mixed generator for test
/// workloads. Not for anything secret.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (0 when `n` is 0). The modulo bias is irrelevant for test workloads.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: usize = 64 * 1024;

    fn image_of(img: &CrashImage) -> Vec<u8> {
        img.image.snapshot()
    }

    /// A recorded random workload: writes of 1..=6 sectors of random bytes, a flush now and then.
    fn workload(seed: u64, ops: usize) -> (Vec<u8>, Vec<DeviceOp>, Vec<u8>) {
        let mut rng = SplitMix64::new(seed);
        let mut base = vec![0u8; SIZE];
        rng.fill(&mut base);
        let dev = RecordingDevice::new(MemDevice::from_bytes(base.clone()));
        for _ in 0..ops {
            if rng.below(5) == 0 {
                dev.flush().unwrap();
            } else {
                let len = 512 * (1 + rng.below(6) as usize);
                let offset = 512 * rng.below(((SIZE - len) / 512) as u64 + 1);
                let mut data = vec![0u8; len];
                rng.fill(&mut data);
                dev.write_at(&data, offset).unwrap();
            }
        }
        let (inner, log) = dev.into_parts();
        (base, log, inner.snapshot())
    }

    #[test]
    fn records_writes_and_flushes_in_order() {
        let dev = RecordingDevice::new(MemDevice::new(8192));
        assert_eq!(dev.mark(), 0);
        dev.write_at(b"abc", 10).unwrap();
        dev.flush().unwrap();
        assert!(dev.write_at(b"abc", 8190).is_err());
        dev.write_at(b"z", 11).unwrap();
        assert_eq!(dev.mark(), 3);
        assert_eq!(
            dev.log(),
            vec![
                DeviceOp::Write {
                    offset: 10,
                    data: b"abc".to_vec()
                },
                DeviceOp::Flush,
                DeviceOp::Write {
                    offset: 11,
                    data: b"z".to_vec()
                },
            ]
        );
        let mut buf = [0u8; 3];
        dev.read_at(&mut buf, 10).unwrap();
        assert_eq!(&buf, b"azc");
        assert_eq!(dev.size(), 8192);
    }

    #[test]
    fn prefixes_replay_the_log_and_the_last_is_the_final_image() {
        let (base, log, last) = workload(1, 300);
        let images: Vec<CrashImage> = crash_images(&base, &log, 7, CrashOptions::default())
            .filter(|i| i.kind == CrashKind::Prefix)
            .collect();
        assert_eq!(images.len(), log.len() + 1);
        for (k, img) in images.iter().enumerate() {
            assert_eq!(img.ops_applied, k);
            let mut expected = base.clone();
            apply_ops(&mut expected, &log[..k]);
            assert_eq!(image_of(img), expected, "prefix {k}");
            // flushed_ops is the position right after the last flush in the prefix.
            let last_flush = log[..k].iter().rposition(|op| *op == DeviceOp::Flush);
            assert_eq!(img.flushed_ops, last_flush.map_or(0, |i| i + 1));
        }
        assert_eq!(image_of(images.last().unwrap()), last);
        assert_ne!(last, base);
    }

    #[test]
    fn torn_writes_mix_old_and_new_units() {
        let (base, log, _) = workload(2, 200);
        let mut torn = 0;
        for img in crash_images(&base, &log, 3, CrashOptions::default()) {
            if img.kind != CrashKind::TornWrite {
                continue;
            }
            torn += 1;
            let k = img.ops_applied;
            let mut before = base.clone();
            apply_ops(&mut before, &log[..k]);
            let mut after = before.clone();
            apply_ops(&mut after, &log[k..=k]);
            let got = image_of(&img);
            // Differs from both whole states; every 512-byte unit is one of the two.
            assert_ne!(got, before, "{}", img.description);
            assert_ne!(got, after, "{}", img.description);
            for u in (0..SIZE).step_by(512) {
                let unit = &got[u..u + 512];
                assert!(unit == &before[u..u + 512] || unit == &after[u..u + 512]);
            }
        }
        // Two variants for every multi-unit write.
        let multi = log
            .iter()
            .filter(|op| matches!(op, DeviceOp::Write { data, .. } if data.len() > 512))
            .count();
        assert_eq!(torn, 2 * multi);
        assert!(torn > 50);
    }

    #[test]
    fn reordered_images_keep_flushed_writes_and_reach_states_no_prefix_does() {
        // Three writes after a flush, two overlapping: a later write landing while an earlier one
        // was lost (or landed first and was overwritten) gives states no prefix of the log has.
        let base = vec![0u8; 4096];
        let log = vec![
            DeviceOp::Write {
                offset: 0,
                data: vec![9; 1024],
            },
            DeviceOp::Flush,
            DeviceOp::Write {
                offset: 1024,
                data: vec![1; 1024],
            },
            DeviceOp::Write {
                offset: 1024,
                data: vec![2; 1024],
            },
            DeviceOp::Write {
                offset: 3072,
                data: vec![3; 1024],
            },
        ];
        let opts = CrashOptions {
            reorder_variants: 40,
            ..CrashOptions::default()
        };
        let all: Vec<CrashImage> = crash_images(&base, &log, 11, opts).collect();
        let prefixes: Vec<Vec<u8>> = all
            .iter()
            .filter(|i| i.kind == CrashKind::Prefix)
            .map(image_of)
            .collect();
        let reordered: Vec<&CrashImage> = all
            .iter()
            .filter(|i| i.kind == CrashKind::Reordered)
            .collect();
        // Prefixes 4 and 5 have two or more writes pending.
        assert_eq!(reordered.len(), 80);
        let mut novel = 0;
        for img in reordered {
            let got = image_of(img);
            assert_eq!(&got[..1024], &[9; 1024][..], "{}", img.description);
            assert_eq!(img.flushed_ops, 2);
            if !prefixes.contains(&got) {
                novel += 1;
            }
        }
        assert!(novel > 0);
    }

    #[test]
    fn deterministic_for_a_seed() {
        let (base, log, _) = workload(4, 120);
        let run = |seed| -> Vec<(String, Vec<u8>)> {
            crash_images(&base, &log, seed, CrashOptions::default())
                .map(|i| (i.description.clone(), image_of(&i)))
                .collect()
        };
        let a = run(5);
        assert_eq!(a, run(5));
        assert_ne!(a, run(6));
        let kinds: Vec<CrashKind> = crash_images(&base, &log, 5, CrashOptions::default())
            .map(|i| i.kind)
            .collect();
        assert!(kinds.contains(&CrashKind::Reordered));
        assert!(kinds.contains(&CrashKind::TornWrite));
    }

    #[test]
    fn no_variants_when_disabled() {
        let (base, log, _) = workload(8, 50);
        let opts = CrashOptions {
            torn_variants: 0,
            reorder_variants: 0,
            atomic_unit: 512,
        };
        assert_eq!(crash_images(&base, &log, 1, opts).count(), log.len() + 1);
        assert_eq!(crash_images(&base, &[], 1, opts).count(), 1);
    }

    #[test]
    fn bit_flips_are_reported_and_deterministic() {
        let original = vec![0u8; 1000];
        let mut a = original.clone();
        let flips = flip_random_bits(&mut a, 50, 9);
        assert_eq!(flips.len(), 50);
        let mut b = original.clone();
        assert_eq!(flip_random_bits(&mut b, 50, 9), flips);
        assert_eq!(a, b);
        // Undoing the reported flips restores the image.
        for &(byte, bit) in &flips {
            a[byte as usize] ^= 1 << bit;
        }
        assert_eq!(a, original);
        assert_ne!(b, original);
        assert!(flip_random_bits(&mut [], 5, 1).is_empty());
    }

    #[test]
    fn faulty_device_fails_from_the_chosen_op() {
        let dev = FaultyDevice::new(MemDevice::new(4096));
        dev.write_at(b"a", 0).unwrap();
        dev.fail_after(2);
        dev.write_at(b"b", 1).unwrap();
        dev.flush().unwrap();
        let e = dev.write_at(b"c", 2).unwrap_err();
        assert!(e.to_string().contains("injected device fault"), "{e}");
        assert!(dev.flush().is_err());
        let mut buf = [0u8; 3];
        dev.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"ab\0");
        dev.heal();
        dev.write_at(b"c", 2).unwrap();
        assert_eq!(dev.inner().snapshot()[..3], *b"abc");
    }

    #[test]
    fn writes_past_the_image_are_clipped() {
        let mut image = vec![0u8; 10];
        apply_ops(
            &mut image,
            &[
                DeviceOp::Write {
                    offset: 8,
                    data: vec![1; 4],
                },
                DeviceOp::Write {
                    offset: u64::MAX,
                    data: vec![1; 4],
                },
            ],
        );
        assert_eq!(image, [0, 0, 0, 0, 0, 0, 0, 0, 1, 1]);
    }
}
