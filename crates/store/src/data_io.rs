//! The one I/O path for file data, shaped like Linux's blk-crypto: the caller hands over
//! plaintext and an optional crypt context, and this path encrypts on the way to the device and
//! decrypts on the way back, so nothing above it handles ciphertext by hand.
//!
//! Addresses are an extent's logical start plus a byte offset inside the extent. The offset, not
//! the physical or logical address, fixes the data unit number the crypt context sees, so an
//! extent can be moved (by chunk or by relocation of its ciphertext) without re-encryption.
//!
//! Checksums are CRC-32C per sector over the bytes on the device, ciphertext when encrypted: scrub
//! and relocation verify them with no key, and a read checks them before anything is decrypted,
//! so a damaged sector is an error and never garbage plaintext.
//!
//! An authenticating crypt context also makes a tag (a MAC) per data unit over the ciphertext
//! when writing, and a read checks the tags (after the checksums, before decrypting), so
//! tampered data that still matches its keyless checksums is refused too. The store keeps no
//! tags itself: the caller stores what [`DataIo::write`] returns, as it does the checksums.
//!
//! [`DataIo`] borrows the device and the chunk map for the length of a call or a batch; whoever
//! owns the chunk map (the transaction layer) decides how it is shared.

use crate::checksum::checksum;
use crate::chunk::ChunkMap;
use crate::device::BlockDevice;
use crate::error::{Error, Result};
use crate::read_buf::ReadBuf;

/// The largest single request, so a hostile length in an extent item cannot make a read allocate
/// without bound. Extents are never larger than this.
pub const MAX_IO_BYTES: usize = 128 << 20;

/// A failure reported by a crypt context.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CryptError(pub String);

/// Encrypts and decrypts whole data units of one extent. Implemented by the fs layer with the
/// extent's fscrypt key; the store never sees a key. Data unit `n` is the `n`-th unit of the
/// extent counted from its start, which is what fscrypt's extent IVs are built from.
pub trait DataCrypt: Send + Sync {
    /// Bytes of one data unit: a power of two.
    fn data_unit_size(&self) -> usize;
    /// Encrypts `buf` in place; `buf` holds whole data units, the first being `first_data_unit`.
    fn encrypt(&self, first_data_unit: u64, buf: &mut [u8]) -> Result<(), CryptError>;
    /// Decrypts `buf` in place; `buf` holds whole data units, the first being `first_data_unit`.
    fn decrypt(&self, first_data_unit: u64, buf: &mut [u8]) -> Result<(), CryptError>;
    /// Bytes of tag per data unit; 0 for a context that does not authenticate.
    fn tag_size(&self) -> usize {
        0
    }
    /// Writes the tag of each data unit of `ciphertext` into `tags` ([`DataCrypt::tag_size`]
    /// bytes each).
    fn seal(
        &self,
        _first_data_unit: u64,
        _ciphertext: &[u8],
        _tags: &mut [u8],
    ) -> Result<(), CryptError> {
        Ok(())
    }
    /// Checks `ciphertext` against `tags`; `Err(Some(n))` names the first data unit whose tag
    /// does not match, `Err(None)` is any other failure.
    fn check(
        &self,
        _first_data_unit: u64,
        _ciphertext: &[u8],
        _tags: &[u8],
    ) -> Result<(), Option<u64>> {
        Ok(())
    }
}

/// What a write leaves for the caller to store: the checksum of each sector as written, and the
/// tags of an authenticating crypt context (empty otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub checksums: Vec<u32>,
    pub tags: Vec<u8>,
}

/// The data path over one device and chunk map.
pub struct DataIo<'a> {
    dev: &'a dyn BlockDevice,
    chunks: &'a ChunkMap,
    sector_size: usize,
}

impl<'a> DataIo<'a> {
    /// A data path with checksums per `sector_size` bytes (the superblock's sector size).
    pub fn new(dev: &'a dyn BlockDevice, chunks: &'a ChunkMap, sector_size: u32) -> Result<Self> {
        let sector_size = sector_size as usize;
        if !sector_size.is_power_of_two() || sector_size < 512 {
            return Err(Error::InvalidRequest(format!(
                "sector size {sector_size} is not a power of two of at least 512"
            )));
        }
        Ok(DataIo {
            dev,
            chunks,
            sector_size,
        })
    }

    /// Writes `plaintext` at `offset_in_extent` inside the extent starting at logical `extent`,
    /// encrypting it first when `crypt` is given. Returns the checksum of each sector as written
    /// to the device, and the crypt context's tags. The offset and length must be whole sectors
    /// (and whole data units).
    pub fn write(
        &self,
        extent: u64,
        offset_in_extent: u64,
        plaintext: &[u8],
        crypt: Option<&dyn DataCrypt>,
    ) -> Result<Written> {
        if crypt.is_some() {
            // Encryption needs a buffer of its own.
            return self.write_owned(extent, offset_in_extent, plaintext.to_vec(), crypt);
        }
        let physical = self.locate(extent, offset_in_extent, plaintext.len(), None)?;
        self.dev.write_at(plaintext, physical)?;
        Ok(Written {
            checksums: self.sector_checksums(plaintext),
            tags: Vec::new(),
        })
    }

    /// [`DataIo::write`] of a buffer the caller gives up: encrypted in place, so a large extent
    /// is not copied once more on its way to the device.
    pub fn write_owned(
        &self,
        extent: u64,
        offset_in_extent: u64,
        mut buf: Vec<u8>,
        crypt: Option<&dyn DataCrypt>,
    ) -> Result<Written> {
        let physical = self.locate(extent, offset_in_extent, buf.len(), crypt)?;
        match crypt {
            None => {
                self.dev.write_at(&buf, physical)?;
                Ok(Written {
                    checksums: self.sector_checksums(&buf),
                    tags: Vec::new(),
                })
            }
            Some(crypt) => {
                let mut tags = vec![0u8; buf.len() / crypt.data_unit_size() * crypt.tag_size()];
                let mut sums = vec![0u32; buf.len() / self.sector_size];
                // Two halves, on a boundary of both data units and sectors (both powers of
                // two, so the larger is a multiple of the smaller), for two threads.
                let align = crypt.data_unit_size().max(self.sector_size);
                let split = buf.len() / 2 / align * align;
                let mut halves: Vec<&mut [u8]> = if split == 0 {
                    vec![&mut buf[..]]
                } else {
                    let (first, second) = buf.split_at_mut(split);
                    vec![first, second]
                };
                self.seal(
                    offset_in_extent,
                    &mut halves,
                    Some(crypt),
                    &mut tags,
                    &mut sums,
                )?;
                self.dev.write_at(&buf, physical)?;
                Ok(Written {
                    checksums: sums,
                    tags,
                })
            }
        }
    }

    /// [`DataIo::write_owned`] of a new extent held as consecutive pieces (a flush's dirty
    /// blocks), each a whole number of sectors and data units: each piece is encrypted in
    /// place and all are written with one vectored write, so they are never copied into one
    /// buffer. Large extents are worked on in two halves on two threads, as in `write_owned`.
    pub fn write_pieces(
        &self,
        extent: u64,
        pieces: &mut [Box<[u8]>],
        crypt: Option<&dyn DataCrypt>,
    ) -> Result<Written> {
        let unit = crypt.map_or(self.sector_size, |c| c.data_unit_size());
        let align = unit.max(self.sector_size);
        if pieces
            .iter()
            .any(|p| p.is_empty() || !p.len().is_multiple_of(align))
        {
            return Err(Error::InvalidRequest(format!(
                "extent pieces must be whole multiples of {align} bytes"
            )));
        }
        let total: usize = pieces.iter().map(|p| p.len()).sum();
        let physical = self.locate(extent, 0, total, crypt)?;
        let mut tags = vec![0u8; total / unit * crypt.map_or(0, |c| c.tag_size())];
        let mut sums = vec![0u32; total / self.sector_size];
        let mut parts: Vec<&mut [u8]> = pieces.iter_mut().map(|p| &mut p[..]).collect();
        self.seal(0, &mut parts, crypt, &mut tags, &mut sums)?;
        let bufs: Vec<&[u8]> = pieces.iter().map(|p| &p[..]).collect();
        self.dev.write_vectored_at(&bufs, physical)?;
        Ok(Written {
            checksums: sums,
            tags,
        })
    }

    /// Asks the device to start writing back the extents just written (logical start and
    /// length each), merged into as few physical ranges as they allow: a flush of thousands
    /// of 4 KiB extents allocated one after another is one range.
    pub fn start_writeback(&self, extents: &[(u64, u64)]) -> Result<()> {
        let mut ranges = Vec::with_capacity(extents.len());
        for &(logical, len) in extents {
            ranges.push((self.chunks.to_physical(logical, len)?, len));
        }
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (at, len) in ranges {
            match merged.last_mut() {
                Some((start, n)) if *start + *n == at => *n += len,
                _ => merged.push((at, len)),
            }
        }
        for (at, len) in merged {
            self.dev.start_writeback(at, len)?;
        }
        Ok(())
    }

    /// Reads `len` bytes at `offset_in_extent` inside the extent at logical `extent`. With
    /// `expected` checksums (one per sector), the bytes on the device are verified first; then,
    /// with `crypt`, its tags are checked against `tags` (required when it authenticates) and
    /// the bytes decrypted. Returns plaintext.
    pub fn read(
        &self,
        extent: u64,
        offset_in_extent: u64,
        len: usize,
        crypt: Option<&dyn DataCrypt>,
        expected: Option<&[u32]>,
        tags: Option<&[u8]>,
    ) -> Result<ReadBuf> {
        let physical = self.locate(extent, offset_in_extent, len, crypt)?;
        let mut buf = self.dev.read_buf(physical, len)?;
        // Checked (checksums, then tags) before anything is decrypted. In one piece: reads are
        // done outside the filesystem lock, so concurrent requests already keep both cores busy
        // and splitting them measured slower; a flush of written data, done under the lock,
        // is what gains from two threads.
        if let Some(expected) = expected {
            self.verify(extent, offset_in_extent, &buf, expected)?;
        }
        if let Some(crypt) = crypt {
            let first = first_unit(offset_in_extent, crypt);
            let tags = required_tags(&buf, crypt, tags)?;
            if !tags.is_empty() {
                let unit = crypt.data_unit_size() as u64;
                crypt
                    .check(first, &buf, tags)
                    .map_err(|bad| Error::AuthenticationFailed {
                        logical: extent.saturating_add(bad.unwrap_or(first).saturating_mul(unit)),
                    })?;
            }
            crypt.decrypt(first, &mut buf)?;
        }
        Ok(buf)
    }

    /// Reads the bytes exactly as on the device (ciphertext when encrypted), unverified: for
    /// relocation, which moves ciphertext without a key.
    pub fn read_raw(&self, extent: u64, offset_in_extent: u64, len: usize) -> Result<ReadBuf> {
        let physical = self.locate(extent, offset_in_extent, len, None)?;
        self.dev.read_buf(physical, len)
    }

    /// Checks the bytes on the device against `expected` (one checksum per sector), with no key:
    /// scrub. Fails with [`Error::ChecksumMismatch`] at the first bad sector.
    pub fn verify_raw(
        &self,
        extent: u64,
        offset_in_extent: u64,
        len: usize,
        expected: &[u32],
    ) -> Result<()> {
        let buf = self.read_raw(extent, offset_in_extent, len)?;
        self.verify(extent, offset_in_extent, &buf, expected)
    }

    /// The checksum of each sector of `bytes` (a whole number of sectors).
    pub fn sector_checksums(&self, bytes: &[u8]) -> Vec<u32> {
        bytes.chunks(self.sector_size).map(checksum).collect()
    }

    /// The sector size checksums are taken over.
    pub fn sector_size(&self) -> usize {
        self.sector_size
    }

    /// Encrypts and seals (with `crypt`) and checksums consecutive `pieces` of an extent in
    /// place, the first at byte `start` of the extent; `tags` and `sums` get one entry per data
    /// unit and per sector of them all. Large work runs in two halves of the pieces on two
    /// threads when the machine has more than one CPU: encryption, MACs and checksums are the
    /// cost of a flush, which runs under the filesystem lock and would otherwise keep one core
    /// busy while the other waits.
    fn seal(
        &self,
        start: u64,
        pieces: &mut [&mut [u8]],
        crypt: Option<&dyn DataCrypt>,
        tags: &mut [u8],
        sums: &mut [u32],
    ) -> Result<()> {
        let total: usize = pieces.iter().map(|p| p.len()).sum();
        if total < PARALLEL_MIN || pieces.len() < 2 || cpus() < 2 {
            return self.seal_in_turn(start, pieces, crypt, tags, sums);
        }
        let unit = crypt.map_or(self.sector_size, |c| c.data_unit_size());
        let tag_size = crypt.map_or(0, |c| c.tag_size());
        let (first, second) = pieces.split_at_mut(pieces.len() / 2);
        let split: usize = first.iter().map(|p| p.len()).sum();
        let (t1, t2) = tags.split_at_mut(split / unit * tag_size);
        let (c1, c2) = sums.split_at_mut(split / self.sector_size);
        let (r1, r2) = join(
            || self.seal_in_turn(start, first, crypt, t1, c1),
            move || self.seal_in_turn(start + split as u64, second, crypt, t2, c2),
        );
        r1.and(r2.unwrap_or_else(worker_failed))
    }

    /// [`DataIo::seal`] on this thread, one piece after another.
    fn seal_in_turn(
        &self,
        start: u64,
        pieces: &mut [&mut [u8]],
        crypt: Option<&dyn DataCrypt>,
        mut tags: &mut [u8],
        mut sums: &mut [u32],
    ) -> Result<()> {
        let unit = crypt.map_or(self.sector_size, |c| c.data_unit_size());
        let tag_size = crypt.map_or(0, |c| c.tag_size());
        let mut offset = start;
        for piece in pieces {
            let n = piece.len();
            let (piece_tags, rest_tags) = tags.split_at_mut(n / unit * tag_size);
            let (piece_sums, rest_sums) = sums.split_at_mut(n / self.sector_size);
            if let Some(crypt) = crypt {
                let first = first_unit(offset, crypt);
                crypt.encrypt(first, piece)?;
                crypt.seal(first, piece, piece_tags)?;
            }
            for (sum, sector) in piece_sums.iter_mut().zip(piece.chunks(self.sector_size)) {
                *sum = checksum(sector);
            }
            (tags, sums) = (rest_tags, rest_sums);
            offset += n as u64;
        }
        Ok(())
    }

    fn verify(
        &self,
        extent: u64,
        offset_in_extent: u64,
        on_disk: &[u8],
        expected: &[u32],
    ) -> Result<()> {
        let sectors = on_disk.len() / self.sector_size;
        if expected.len() != sectors {
            return Err(Error::InvalidRequest(format!(
                "{} checksums given for {sectors} sectors",
                expected.len()
            )));
        }
        for (i, (sector, &want)) in on_disk.chunks(self.sector_size).zip(expected).enumerate() {
            let found = checksum(sector);
            if found != want {
                // locate() proved extent + offset + len does not overflow.
                let logical = extent + offset_in_extent + (i * self.sector_size) as u64;
                return Err(Error::ChecksumMismatch {
                    logical,
                    expected: want,
                    found,
                });
            }
        }
        Ok(())
    }

    /// Checks a request and returns the physical offset it starts at.
    fn locate(
        &self,
        extent: u64,
        offset_in_extent: u64,
        len: usize,
        crypt: Option<&dyn DataCrypt>,
    ) -> Result<u64> {
        let sector = self.sector_size as u64;
        if len == 0 || len > MAX_IO_BYTES || !len.is_multiple_of(self.sector_size) {
            return Err(Error::InvalidRequest(format!(
                "length {len} is not a whole number of {sector}-byte sectors up to {MAX_IO_BYTES}"
            )));
        }
        if !offset_in_extent.is_multiple_of(sector) {
            return Err(Error::InvalidRequest(format!(
                "offset {offset_in_extent} inside the extent is not sector aligned"
            )));
        }
        if let Some(crypt) = crypt {
            let unit = crypt.data_unit_size();
            if !unit.is_power_of_two()
                || !offset_in_extent.is_multiple_of(unit as u64)
                || !len.is_multiple_of(unit)
            {
                return Err(Error::InvalidRequest(format!(
                    "offset {offset_in_extent} and length {len} are not whole data units of \
                     {unit} bytes"
                )));
            }
        }
        let logical = extent
            .checked_add(offset_in_extent)
            .ok_or(Error::Unmapped {
                logical: extent,
                len: len as u64,
            })?;
        self.chunks.to_physical(logical, len as u64)
    }
}

/// The tags a read of `ciphertext` needs from the caller (none when `crypt` does not
/// authenticate), checked for length.
fn required_tags<'t>(
    ciphertext: &[u8],
    crypt: &dyn DataCrypt,
    tags: Option<&'t [u8]>,
) -> Result<&'t [u8]> {
    let size = crypt.tag_size();
    if size == 0 {
        return Ok(&[]);
    }
    let want = ciphertext.len() / crypt.data_unit_size() * size;
    match tags {
        Some(t) if t.len() == want => Ok(t),
        _ => Err(Error::InvalidRequest(format!(
            "{want} bytes of tags needed to read authenticated data"
        ))),
    }
}

/// Buffers from this size up are checked, encrypted and authenticated in two parts at once
/// (below it a second thread costs more than it saves).
pub const PARALLEL_MIN: usize = 256 << 10;

/// Runs `first` on this thread and `second` on a scoped thread at the same time, and returns
/// both results (`None` for a `second` that panicked): the two halves of large data path work.
pub fn join<A, B: Send>(
    first: impl FnOnce() -> A,
    second: impl FnOnce() -> B + Send,
) -> (A, Option<B>) {
    std::thread::scope(|s| {
        let worker = s.spawn(second);
        let a = first();
        (a, worker.join().ok())
    })
}

fn worker_failed() -> Result<()> {
    Err(Error::InvalidRequest("data path worker failed".into()))
}

/// The CPUs this process may use (looked up once).
pub fn cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The data unit number of the unit at `offset_in_extent` (checked to be unit aligned).
fn first_unit(offset_in_extent: u64, crypt: &dyn DataCrypt) -> u64 {
    offset_in_extent / crypt.data_unit_size() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::{ChunkKind, ChunkMapping, FIRST_LOGICAL};
    use crate::device::MemDevice;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const MIB: u64 = 1 << 20;
    const PHYS: u64 = 2 * MIB;
    const EXTENT: u64 = FIRST_LOGICAL + 64 * 1024;

    /// A test-only cipher: XOR with bytes derived from the data unit number. Counts decryptions
    /// so tests can see whether unverified bytes reached it.
    struct ToyCrypt {
        unit: usize,
        decrypts: AtomicUsize,
    }

    impl ToyCrypt {
        fn new(unit: usize) -> Self {
            ToyCrypt {
                unit,
                decrypts: AtomicUsize::new(0),
            }
        }

        fn xor(&self, first: u64, buf: &mut [u8]) {
            for (i, unit) in buf.chunks_mut(self.unit).enumerate() {
                let n = first + i as u64;
                for (j, b) in unit.iter_mut().enumerate() {
                    *b ^= (n as u8).wrapping_mul(31) ^ (j as u8) ^ 0x5c;
                }
            }
        }
    }

    impl DataCrypt for ToyCrypt {
        fn data_unit_size(&self) -> usize {
            self.unit
        }
        fn encrypt(&self, first: u64, buf: &mut [u8]) -> Result<(), CryptError> {
            self.xor(first, buf);
            Ok(())
        }
        fn decrypt(&self, first: u64, buf: &mut [u8]) -> Result<(), CryptError> {
            self.decrypts.fetch_add(1, Ordering::SeqCst);
            self.xor(first, buf);
            Ok(())
        }
    }

    struct FailingCrypt;
    impl DataCrypt for FailingCrypt {
        fn data_unit_size(&self) -> usize {
            4096
        }
        fn encrypt(&self, _: u64, _: &mut [u8]) -> Result<(), CryptError> {
            Err(CryptError("key was removed".into()))
        }
        fn decrypt(&self, _: u64, _: &mut [u8]) -> Result<(), CryptError> {
            Err(CryptError("key was removed".into()))
        }
    }

    fn setup() -> (MemDevice, ChunkMap) {
        let dev = MemDevice::new((4 * MIB) as usize);
        let mut chunks = ChunkMap::new();
        chunks
            .insert(ChunkMapping {
                logical: FIRST_LOGICAL,
                length: MIB,
                physical: PHYS,
                kind: ChunkKind::Data,
            })
            .unwrap();
        (dev, chunks)
    }

    fn plaintext(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    fn on_disk(dev: &MemDevice, offset_in_extent: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        dev.read_at(&mut buf, PHYS + 64 * 1024 + offset_in_extent)
            .unwrap();
        buf
    }

    /// Records the writeback hints it is given.
    struct HintLog {
        inner: MemDevice,
        hints: std::sync::Mutex<Vec<(u64, u64)>>,
    }
    impl BlockDevice for HintLog {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
            self.inner.read_at(buf, offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
            self.inner.write_at(buf, offset)
        }
        fn flush(&self) -> Result<()> {
            self.inner.flush()
        }
        fn size(&self) -> u64 {
            self.inner.size()
        }
        fn start_writeback(&self, offset: u64, len: u64) -> Result<()> {
            self.hints.lock().unwrap().push((offset, len));
            Ok(())
        }
    }

    /// Extents one after another, in any order, make one physical range; a gap starts another;
    /// an extent outside every chunk is an error.
    #[test]
    fn writeback_hints_merge_adjacent_extents() {
        let (inner, chunks) = setup();
        let dev = HintLog {
            inner,
            hints: std::sync::Mutex::new(Vec::new()),
        };
        let io = DataIo::new(&dev, &chunks, 4096).unwrap();
        let at = |i: u64| FIRST_LOGICAL + i * 4096;
        io.start_writeback(&[(at(2), 4096), (at(0), 8192), (at(3), 4096), (at(6), 4096)])
            .unwrap();
        assert_eq!(
            *dev.hints.lock().unwrap(),
            vec![(PHYS, 4 * 4096), (PHYS + 6 * 4096, 4096)]
        );
        assert!(
            io.start_writeback(&[(FIRST_LOGICAL + 2 * MIB, 4096)])
                .is_err()
        );
    }

    #[test]
    fn encrypted_write_puts_ciphertext_on_disk_and_checksums_it() {
        let (dev, chunks) = setup();
        let io = DataIo::new(&dev, &chunks, 4096).unwrap();
        let crypt = ToyCrypt::new(1024);
        let data = plaintext(3 * 4096);
        // Offset 8 KiB inside the extent: data unit 8 with 1 KiB units.
        let csums = io
            .write(EXTENT, 8192, &data, Some(&crypt))
            .unwrap()
            .checksums;
        let raw = on_disk(&dev, 8192, data.len());
        let mut expected = data.clone();
        crypt.xor(8, &mut expected);
        assert_eq!(raw, expected);
        assert_ne!(raw, data);
        assert_eq!(csums.len(), 3);
        for (i, c) in csums.iter().enumerate() {
            assert_eq!(*c, checksum(&raw[i * 4096..(i + 1) * 4096]));
        }
        // Whole and partial reads give plaintext; a partial read derives its unit number from
        // the offset.
        assert_eq!(
            io.read(EXTENT, 8192, data.len(), Some(&crypt), Some(&csums), None)
                .unwrap(),
            data
        );
        assert_eq!(
            io.read(EXTENT, 12288, 4096, Some(&crypt), Some(&csums[1..2]), None)
                .unwrap(),
            &data[4096..8192]
        );
        assert_eq!(io.read_raw(EXTENT, 8192, data.len()).unwrap(), raw);
        io.verify_raw(EXTENT, 8192, data.len(), &csums).unwrap();
    }

    /// ToyCrypt with a toy tag per unit: the unit number plus the sum of its bytes.
    struct TaggingCrypt(ToyCrypt);

    impl TaggingCrypt {
        fn tag(n: u64, unit: &[u8]) -> [u8; 8] {
            unit.iter()
                .fold(n, |a, &b| a.wrapping_mul(31).wrapping_add(u64::from(b)))
                .to_le_bytes()
        }
    }

    impl DataCrypt for TaggingCrypt {
        fn data_unit_size(&self) -> usize {
            self.0.data_unit_size()
        }
        fn encrypt(&self, first: u64, buf: &mut [u8]) -> Result<(), CryptError> {
            self.0.encrypt(first, buf)
        }
        fn decrypt(&self, first: u64, buf: &mut [u8]) -> Result<(), CryptError> {
            self.0.decrypt(first, buf)
        }
        fn tag_size(&self) -> usize {
            8
        }
        fn seal(&self, first: u64, ct: &[u8], tags: &mut [u8]) -> Result<(), CryptError> {
            for (i, (u, t)) in ct.chunks(self.0.unit).zip(tags.chunks_mut(8)).enumerate() {
                t.copy_from_slice(&Self::tag(first + i as u64, u));
            }
            Ok(())
        }
        fn check(&self, first: u64, ct: &[u8], tags: &[u8]) -> Result<(), Option<u64>> {
            for (i, (u, t)) in ct.chunks(self.0.unit).zip(tags.chunks(8)).enumerate() {
                if Self::tag(first + i as u64, u) != t {
                    return Err(Some(first + i as u64));
                }
            }
            Ok(())
        }
    }

    #[test]
    fn tags_are_made_on_write_and_checked_before_decrypting() {
        let (dev, chunks) = setup();
        let io = DataIo::new(&dev, &chunks, 4096).unwrap();
        let crypt = TaggingCrypt(ToyCrypt::new(4096));
        let data = plaintext(3 * 4096);
        let w = io.write(EXTENT, 4096, &data, Some(&crypt)).unwrap();
        assert_eq!(w.tags.len(), 3 * 8);
        let raw = on_disk(&dev, 4096, data.len());
        assert_eq!(&w.tags[8..16], &TaggingCrypt::tag(2, &raw[4096..8192]));
        let read = |tags: Option<&[u8]>| {
            io.read(
                EXTENT,
                4096,
                data.len(),
                Some(&crypt),
                Some(&w.checksums),
                tags,
            )
        };
        assert_eq!(read(Some(&w.tags)).unwrap(), data);
        // Tags are required, whole, and matching; a mismatch names the data unit.
        assert!(matches!(read(None), Err(Error::InvalidRequest(_))));
        assert!(matches!(
            read(Some(&w.tags[..16])),
            Err(Error::InvalidRequest(_))
        ));
        let mut bad = w.tags.clone();
        bad[17] ^= 1;
        let before = crypt.0.decrypts.load(Ordering::SeqCst);
        assert!(matches!(
            read(Some(&bad)),
            Err(Error::AuthenticationFailed { logical }) if logical == EXTENT + 3 * 4096
        ));
        assert_eq!(crypt.0.decrypts.load(Ordering::SeqCst), before);
    }

    /// Large requests run in two halves on two threads: the same bytes, tags and failures.
    #[test]
    fn large_requests_split_in_halves_agree() {
        let (dev, chunks) = setup();
        let io = DataIo::new(&dev, &chunks, 4096).unwrap();
        let crypt = TaggingCrypt(ToyCrypt::new(4096));
        let n = PARALLEL_MIN / 4096 + 3; // odd: the halves differ in size
        let data = plaintext(n * 4096);
        let w = io.write(EXTENT, 0, &data, Some(&crypt)).unwrap();
        let raw = on_disk(&dev, 0, data.len());
        let mut expected = data.clone();
        crypt.0.xor(0, &mut expected);
        assert_eq!(raw, expected);
        assert_eq!(w.checksums, io.sector_checksums(&raw));
        for (i, (u, t)) in raw.chunks(4096).zip(w.tags.chunks(8)).enumerate() {
            assert_eq!(t, TaggingCrypt::tag(i as u64, u), "tag {i}");
        }
        let read = |tags: &[u8]| {
            io.read(
                EXTENT,
                0,
                data.len(),
                Some(&crypt),
                Some(&w.checksums),
                Some(tags),
            )
        };
        assert_eq!(read(&w.tags).unwrap(), data);
        // A damaged sector in the second half is a checksum error, wherever the split falls.
        let mut bad_sums = w.checksums.clone();
        bad_sums[n - 1] ^= 1;
        assert!(matches!(
            io.read(EXTENT, 0, data.len(), Some(&crypt), Some(&bad_sums), Some(&w.tags)),
            Err(Error::ChecksumMismatch { logical, .. }) if logical == EXTENT + (n as u64 - 1) * 4096
        ));
        // A bad unit in the second half fails the whole read, naming that unit.
        let mut bad = w.tags.clone();
        bad[(n - 2) * 8] ^= 1;
        assert!(matches!(
            read(&bad),
            Err(Error::AuthenticationFailed { logical }) if logical == EXTENT + (n as u64 - 2) * 4096
        ));
    }

    /// An extent written from pieces is the same on disk, with the same checksums and tags,
    /// as one written from a single buffer: small (one thread) and large (two), plain and
    /// encrypted, pieces of one unit and of several.
    #[test]
    fn pieces_write_the_same_extent_as_one_buffer() {
        let crypt = TaggingCrypt(ToyCrypt::new(4096));
        for n in [3, PARALLEL_MIN / 4096 + 3] {
            for piece_units in [1, 2] {
                for encrypted in [false, true] {
                    let c = encrypted.then_some(&crypt as &dyn DataCrypt);
                    let data = plaintext(n * piece_units * 4096);
                    let (dev_a, chunks) = setup();
                    let a = DataIo::new(&dev_a, &chunks, 4096).unwrap();
                    let whole = a.write(EXTENT, 0, &data, c).unwrap();
                    let (dev_b, chunks) = setup();
                    let b = DataIo::new(&dev_b, &chunks, 4096).unwrap();
                    let mut pieces: Vec<Box<[u8]>> =
                        data.chunks(piece_units * 4096).map(Box::from).collect();
                    let pieced = b.write_pieces(EXTENT, &mut pieces, c).unwrap();
                    let what = format!("{n} pieces of {piece_units} units, encrypted {encrypted}");
                    assert_eq!(pieced, whole, "{what}");
                    assert_eq!(dev_a.snapshot(), dev_b.snapshot(), "{what}");
                    let back = b
                        .read(
                            EXTENT,
                            0,
                            data.len(),
                            c,
                            Some(&pieced.checksums),
                            c.map(|_| &pieced.tags[..]),
                        )
                        .unwrap();
                    assert_eq!(back, data, "{what}");
                }
            }
        }
        // Pieces that are not whole units, or empty, are refused before anything is written.
        let (dev, chunks) = setup();
        let io = DataIo::new(&dev, &chunks, 4096).unwrap();
        for bad in [vec![4096usize, 100], vec![0], vec![4096, 0]] {
            let mut pieces: Vec<Box<[u8]>> = bad.iter().map(|&n| vec![1u8; n].into()).collect();
            assert!(matches!(
                io.write_pieces(EXTENT, &mut pieces, None),
                Err(Error::InvalidRequest(_))
            ));
        }
        assert!(dev.snapshot().iter().all(|&b| b == 0));
        // A failing cipher fails the write, and nothing reaches the device.
        let mut pieces: Vec<Box<[u8]>> = vec![vec![1u8; 4096].into(); 2];
        assert!(
            io.write_pieces(EXTENT, &mut pieces, Some(&FailingCrypt))
                .is_err()
        );
        assert!(dev.snapshot().iter().all(|&b| b == 0));
    }

    #[test]
    fn plaintext_write_and_read() {
        let (dev, chunks) = setup();
        let io = DataIo::new(&dev, &chunks, 4096).unwrap();
        let data = plaintext(8192);
        let csums = io.write(EXTENT, 0, &data, None).unwrap().checksums;
        assert_eq!(on_disk(&dev, 0, 8192), data);
        assert_eq!(
            io.read(EXTENT, 0, 8192, None, Some(&csums), None).unwrap(),
            data
        );
        assert_eq!(
            io.read(EXTENT, 4096, 4096, None, None, None).unwrap(),
            &data[4096..]
        );
    }

    #[test]
    fn flipped_bit_is_a_checksum_error_before_any_decryption() {
        let (dev, chunks) = setup();
        let io = DataIo::new(&dev, &chunks, 4096).unwrap();
        let crypt = ToyCrypt::new(4096);
        let csums = io
            .write(EXTENT, 0, &plaintext(4 * 4096), Some(&crypt))
            .unwrap()
            .checksums;
        let at = PHYS + 64 * 1024 + 2 * 4096 + 100;
        let mut b = [0u8];
        dev.read_at(&mut b, at).unwrap();
        dev.write_at(&[b[0] ^ 0x10], at).unwrap();
        let e = io
            .read(EXTENT, 0, 4 * 4096, Some(&crypt), Some(&csums), None)
            .unwrap_err();
        match e {
            Error::ChecksumMismatch {
                logical, expected, ..
            } => {
                assert_eq!(logical, EXTENT + 2 * 4096);
                assert_eq!(expected, csums[2]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(crypt.decrypts.load(Ordering::SeqCst), 0);
        assert!(matches!(
            io.verify_raw(EXTENT, 0, 4 * 4096, &csums),
            Err(Error::ChecksumMismatch { .. })
        ));
        // Sectors before the damage still read.
        assert_eq!(
            io.read(EXTENT, 0, 8192, Some(&crypt), Some(&csums[..2]), None)
                .unwrap(),
            &plaintext(4 * 4096)[..8192]
        );
    }

    #[test]
    fn bad_requests_are_refused() {
        let (dev, chunks) = setup();
        let io = DataIo::new(&dev, &chunks, 4096).unwrap();
        let crypt = ToyCrypt::new(4096);
        let data = plaintext(4096);
        for (offset, len) in [(100, 4096), (0, 100), (0, 0)] {
            assert!(matches!(
                io.write(EXTENT, offset, &data[..len.min(4096)], None),
                Err(Error::InvalidRequest(_))
            ));
            assert!(matches!(
                io.read(EXTENT, offset, len, None, None, None),
                Err(Error::InvalidRequest(_))
            ));
        }
        // Data units larger than a sector must be whole too.
        let big = ToyCrypt::new(8192);
        assert!(matches!(
            io.write(EXTENT, 4096, &plaintext(8192), Some(&big)),
            Err(Error::InvalidRequest(_))
        ));
        // Crossing the end of the chunk, or an address nobody mapped.
        assert!(matches!(
            io.write(FIRST_LOGICAL + MIB - 4096, 0, &plaintext(8192), None),
            Err(Error::Unmapped { .. })
        ));
        assert!(matches!(
            io.read(u64::MAX - 4095, 4096, 4096, None, None, None),
            Err(Error::Unmapped { .. })
        ));
        assert!(matches!(
            io.read(EXTENT, 0, MAX_IO_BYTES + 4096, None, None, None),
            Err(Error::InvalidRequest(_))
        ));
        // Wrong number of checksums.
        let csums = io.write(EXTENT, 0, &data, Some(&crypt)).unwrap().checksums;
        assert!(matches!(
            io.read(EXTENT, 0, 8192, Some(&crypt), Some(&csums), None),
            Err(Error::InvalidRequest(_))
        ));
        // The crypt context's own failure surfaces, and nothing is written.
        let before = on_disk(&dev, 0, 4096);
        let e = io
            .write(EXTENT, 0, &plaintext(4096), Some(&FailingCrypt))
            .unwrap_err();
        assert!(matches!(e, Error::Crypt(_)));
        assert!(e.to_string().contains("key was removed"));
        assert_eq!(on_disk(&dev, 0, 4096), before);
        assert!(DataIo::new(&dev, &chunks, 1000).is_err());
    }
}
