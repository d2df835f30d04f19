//! File data: buffered writes, reads through file extent items, the flush that turns dirty
//! blocks into new data extents, and the range operations (truncate, punch, fallocate, seek).
//!
//! Data is never overwritten in place. Dirty blocks are kept per inode until a flush (fsync,
//! commit, or the global dirty bound) writes each run of consecutive blocks as one new extent,
//! so sequential writes become large extents. A flush works in three steps: it allocates every
//! run's extent (tree work), then encrypts, checksums and writes the extents' blocks where they
//! lie in the buffer with vectored writes, on two threads since no tree is touched there, and
//! then maps the extents into the file. A file extent item holds one reference on its
//! extent, owned by (tree, inode, file offset of the extent's start); splitting an item keeps
//! both halves' references under that same owner. Sector checksums live in the checksum tree,
//! keyed by extent, and are verified on every read; so are the data unit MACs of an
//! authenticated extent, which sit beside them.

use store::{DataRefOwner, Key, tree_id};

use crate::error::{Error, Result};
use crate::items::{self, CSUMS_PER_ITEM, ExtentKind, FileExtent, InodeItem, MACS_PER_ITEM, ty};
use crate::state::{BLOCK, State, local, tree_of};

/// Largest file size: offsets stay far from u64 overflow and from the 48-bit block index space.
pub(crate) const MAX_FILE_SIZE: u64 = 1 << 52;
const CSUM_SPAN: u64 = CSUMS_PER_ITEM * BLOCK;
/// Bytes of extent one DATA_MAC item covers.
pub(crate) const MAC_SPAN: u64 = MACS_PER_ITEM * BLOCK;

fn owner(obj: u64, key_offset: u64, fe: &FileExtent) -> DataRefOwner {
    DataRefOwner {
        root: tree_of(obj),
        inode: local(obj),
        // Where the extent's start would be in the file: modulo 2^64 (as btrfs), so a
        // reflink may put a piece of an extent nearer a file's start than it was in its extent.
        offset: key_offset.wrapping_sub(fe.offset),
    }
}

/// One part of a read, in file order.
pub(crate) enum ReadPiece {
    /// Bytes known without the device: a buffered block, or a hole's zeros.
    Bytes(Vec<u8>),
    /// A range of an extent, where the file holds it, with what verifying it needs.
    Extent {
        file_offset: u64,
        bytenr: u64,
        offset: u64,
        len: usize,
        crypt: Option<fscrypt::extent::ExtentCryptInfo>,
        sums: Vec<u32>,
        macs: Option<Vec<u8>>,
    },
}

impl ReadPiece {
    fn zeros(len: u64) -> Self {
        ReadPiece::Bytes(vec![0; len as usize])
    }

    /// The piece's plaintext: checksums verified, then MACs, then decrypted.
    fn read(&self, io: &store::DataIo<'_>) -> Result<store::ReadBuf> {
        match self {
            ReadPiece::Bytes(b) => Ok(store::ReadBuf::from_vec(b.clone())),
            ReadPiece::Extent {
                bytenr,
                offset,
                len,
                crypt,
                sums,
                macs,
                ..
            } => {
                let cipher = crypt.as_ref().map(crate::crypt::ExtentCipher);
                Ok(io.read(
                    *bytenr,
                    *offset,
                    *len,
                    cipher.as_ref().map(|c| c as &dyn store::DataCrypt),
                    Some(sums),
                    macs.as_deref(),
                )?)
            }
        }
    }

    /// Appends the piece's plaintext to `out` (see [`ReadPiece::read`]).
    fn append_to(&self, io: &store::DataIo<'_>, out: &mut Vec<u8>) -> Result<()> {
        match self {
            ReadPiece::Bytes(b) => out.extend_from_slice(b),
            ReadPiece::Extent { .. } => {
                let data = self.read(io)?;
                if out.is_empty() {
                    *out = data.into_vec();
                } else {
                    out.extend_from_slice(&data);
                }
            }
        }
        Ok(())
    }
}

/// A file read planned under the filesystem lock and done without it, so the device reads,
/// checksums and decryption of one request overlap with other requests (the kernel's readahead
/// sends several at once). The read view it holds keeps every committed extent it names from
/// being reused, even if a file change frees it meanwhile.
pub struct PlannedRead {
    store: std::sync::Arc<store::Store>,
    _view: store::ReadTxn,
    pieces: Vec<ReadPiece>,
    skip: usize,
    len: usize,
}

impl PlannedRead {
    fn new(
        s: &State,
        view: store::ReadTxn,
        pieces: Vec<ReadPiece>,
        skip: usize,
        len: usize,
    ) -> Self {
        PlannedRead {
            store: s.store().clone(),
            _view: view,
            pieces,
            skip,
            len,
        }
    }

    /// The bytes asked for. Any failure is for the caller to confirm under the lock (where it
    /// is logged and answered): a damaged or tampered extent fails there too.
    ///
    /// A read inside one extent (the usual large read) is answered in the memory the device
    /// read it into, decrypted in place, with no further copy.
    pub(crate) fn execute(self) -> Result<store::ReadBuf> {
        let io = self.store.data_io()?;
        let blocks = match &self.pieces[..] {
            [one] => one.read(&io)?,
            pieces => {
                let mut out = Vec::new();
                for p in pieces {
                    p.append_to(&io, &mut out)?;
                }
                store::ReadBuf::from_vec(out)
            }
        };
        Ok(blocks.window(self.skip, self.len))
    }
}

/// Whether stored extent context bytes say the extent is authenticated (has DATA_MAC items). A
/// context that does not decode is not: it has no MACs to find.
pub(crate) fn context_is_authenticated(context: &[u8]) -> bool {
    fscrypt::extent::ExtentContext::decode(context).is_ok_and(|c| c.authenticated())
}

/// A flushed run of dirty blocks with the extent allocated for it, before its bytes are written.
struct NewExtent {
    obj: u64,
    /// File offset of the run.
    start: u64,
    bytenr: u64,
    blocks: Vec<Box<[u8]>>,
    /// The file's crypt state, in an encrypted file (it pins the key until the extent is
    /// written).
    common: Option<fscrypt::common::CryptCommon>,
}

/// A new extent as written: what the file's item and the checksum tree need.
pub(crate) struct WrittenExtent {
    obj: u64,
    start: u64,
    bytenr: u64,
    len: u64,
    /// The extent's crypt state, in an encrypted file.
    crypt: Option<fscrypt::extent::ExtentCryptInfo>,
    sums: store::Written,
}

/// Buffered data on its way to disk without the filesystem lock (write-behind): the blocks are
/// out of the buffer and their extents allocated, but the files do not map them yet. While a
/// flight is up the filesystem takes writes that need nothing in it and nothing else (see
/// [`crate::Filesystem::write`]); [`State::land`] maps what it wrote.
pub(crate) struct Flight {
    store: std::sync::Arc<store::Store>,
    extents: Vec<NewExtent>,
}

impl Flight {
    pub(crate) fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    /// Encrypts, checksums and writes every extent: device and CPU work that touches no tree.
    /// Then the device is asked to start writing them back: they must be durable at the next
    /// commit, and an fsync after a large write then waits for its tail only.
    pub(crate) fn write(self) -> Result<Vec<WrittenExtent>> {
        let io = self.store.data_io()?;
        let written = write_new_extents(&io, self.extents)?;
        let ranges: Vec<(u64, u64)> = written.iter().map(|w| (w.bytenr, w.len)).collect();
        // Only a hint: if it fails, the commit's flush writes the same bytes back.
        let _ = io.start_writeback(&ranges);
        Ok(written)
    }
}

/// Writes the new extents of a flush: each encrypted extent gets a fresh nonce and its own key,
/// then its bytes are encrypted in place, checksummed (and MACed) and written. This is most of
/// a flush of many small extents (random writes: a key setup and a device write each), and it
/// touches no tree, so the extents are split by bytes into two halves done on two threads; a
/// single large extent is split inside the data path instead.
fn write_new_extents(
    io: &store::DataIo<'_>,
    extents: Vec<NewExtent>,
) -> Result<Vec<WrittenExtent>> {
    let write_all = |extents: Vec<NewExtent>| -> Result<Vec<WrittenExtent>> {
        extents
            .into_iter()
            .map(|e| {
                let crypt = e
                    .common
                    .as_ref()
                    .map(|c| {
                        fscrypt::extent::ExtentCryptInfo::new_extent(c, crate::crypt::BLOCK_BITS)
                    })
                    .transpose()
                    .map_err(crate::crypt::crypt_error)?;
                let mut blocks = e.blocks;
                let len = blocks.len() as u64 * BLOCK;
                let cipher = crypt.as_ref().map(crate::crypt::ExtentCipher);
                // The dirty blocks are encrypted where they are and written in one vectored
                // write, never copied into one buffer.
                let sums = io.write_pieces(
                    e.bytenr,
                    &mut blocks,
                    cipher.as_ref().map(|c| c as &dyn store::DataCrypt),
                )?;
                Ok(WrittenExtent {
                    obj: e.obj,
                    start: e.start,
                    bytenr: e.bytenr,
                    len,
                    crypt,
                    sums,
                })
            })
            .collect()
    };
    let bytes = |e: &NewExtent| e.blocks.len() as u64 * BLOCK;
    let total: u64 = extents.iter().map(bytes).sum();
    if extents.len() < 2
        || total < store::data_io::PARALLEL_MIN as u64
        || store::data_io::cpus() < 2
    {
        return write_all(extents);
    }
    // The first half by bytes stays here, the rest goes to a second thread.
    let mut first = extents;
    let mut acc = 0;
    let cut = first
        .iter()
        .position(|e| {
            acc += bytes(e);
            acc >= total / 2
        })
        .map_or(first.len(), |i| i + 1)
        .min(first.len() - 1);
    let second = first.split_off(cut);
    let (done, rest) = store::data_io::join(|| write_all(first), || write_all(second));
    let mut done = done?;
    done.extend(rest.unwrap_or(Err(Error::Invalid("flush worker failed")))?);
    Ok(done)
}

impl State {
    // --- References and checksums -------------------------------------------------------------

    pub(crate) fn add_extent_ref(
        &mut self,
        obj: u64,
        key_offset: u64,
        fe: &FileExtent,
    ) -> Result<()> {
        let o = owner(obj, key_offset, fe);
        self.changes += 1;
        self.txn()?.add_data_ref(fe.bytenr, fe.extent_len, o, 1)?;
        Ok(())
    }

    /// Drops one item's reference; when the extent goes, the store deletes its checksums and
    /// MACs with it (as it does when a background subvolume drop frees an extent).
    pub(crate) fn drop_extent_ref(
        &mut self,
        obj: u64,
        key_offset: u64,
        fe: &FileExtent,
    ) -> Result<()> {
        let o = owner(obj, key_offset, fe);
        self.changes += 1;
        self.txn()?.drop_data_ref(fe.bytenr, fe.extent_len, o, 1)?;
        Ok(())
    }

    /// Stores the data unit MACs of the extent at `bytenr` (4096-byte units from its start).
    pub(crate) fn put_macs(&mut self, bytenr: u64, macs: &[u8]) -> Result<()> {
        let per_item = MACS_PER_ITEM as usize * fscrypt::extent::MAC_SIZE;
        for (i, group) in macs.chunks(per_item).enumerate() {
            let key = Key::new(bytenr, ty::DATA_MAC, i as u64 * MAC_SPAN);
            self.put_in(tree_id::CSUM_TREE, key, &items::encode_macs(group))?;
        }
        Ok(())
    }

    /// The MACs of the data units in `[offset, offset + len)` of the extent at `bytenr`.
    pub(crate) fn macs(&mut self, bytenr: u64, offset: u64, len: u64) -> Result<Vec<u8>> {
        let per_block = fscrypt::extent::MAC_SIZE;
        self.block_entries(
            bytenr,
            ty::DATA_MAC,
            MAC_SPAN,
            per_block,
            offset,
            len,
            items::decode_macs,
        )
    }

    /// The entries for the blocks in `[offset, offset + len)` of the extent at `bytenr`, from
    /// its checksum-tree items of `item_type`: each item covers `span` bytes of the extent from
    /// its key offset and holds `per_block` entries per block (checksums: one u32; MACs: 16
    /// bytes).
    #[allow(clippy::too_many_arguments)]
    fn block_entries<T: Copy>(
        &mut self,
        bytenr: u64,
        item_type: u8,
        span: u64,
        per_block: usize,
        offset: u64,
        len: u64,
        decode: impl Fn(&Key, &[u8]) -> Result<Vec<T>>,
    ) -> Result<Vec<T>> {
        let mut out = Vec::with_capacity((len / BLOCK) as usize * per_block);
        let end = offset + len;
        let mut group = offset / span * span;
        while group < end {
            let key = Key::new(bytenr, item_type, group);
            let v = self
                .txn()?
                .get(tree_id::CSUM_TREE, &key)?
                .ok_or_else(|| Error::corrupt(&key, "missing data checksums or MACs"))?;
            let entries = decode(&key, &v)?;
            let lo = offset.max(group);
            let hi = end.min(group + span);
            let (a, b) = (
                ((lo - group) / BLOCK) as usize * per_block,
                ((hi - group) / BLOCK) as usize * per_block,
            );
            out.extend_from_slice(
                entries
                    .get(a..b)
                    .ok_or_else(|| Error::corrupt(&key, "too few data checksums or MACs"))?,
            );
            group += span;
        }
        Ok(out)
    }

    /// Writes a new extent's bytes and records their checksums.
    pub(crate) fn write_extent(&mut self, bytenr: u64, buf: &[u8]) -> Result<()> {
        let written = self.txn()?.data_io()?.write(bytenr, 0, buf, None)?;
        self.record_sums(bytenr, written)
    }

    /// Stores what a write left to keep: the checksums, and the MACs of an authenticated
    /// extent.
    fn record_sums(&mut self, bytenr: u64, written: store::Written) -> Result<()> {
        for (i, group) in written
            .checksums
            .chunks(CSUMS_PER_ITEM as usize)
            .enumerate()
        {
            let key = Key::new(bytenr, ty::DATA_CSUM, i as u64 * CSUM_SPAN);
            self.put_in(tree_id::CSUM_TREE, key, &items::encode_csums(group))?;
        }
        if !written.tags.is_empty() {
            self.put_macs(bytenr, &written.tags)?;
        }
        Ok(())
    }

    /// Reads `len` bytes at `offset` inside the extent at `bytenr`, verified against the
    /// checksum tree. Offset and length are whole blocks.
    pub(crate) fn read_extent(&mut self, bytenr: u64, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.read_extent_crypt(bytenr, offset, len, None)
    }

    /// [`State::read_extent`], decrypting under `crypt` after the checksums (over the
    /// ciphertext) are verified.
    pub(crate) fn read_extent_crypt(
        &mut self,
        bytenr: u64,
        offset: u64,
        len: u64,
        crypt: Option<&fscrypt::extent::ExtentCryptInfo>,
    ) -> Result<Vec<u8>> {
        let piece = self.extent_piece(0, bytenr, offset, len, crypt.cloned())?;
        let mut out = Vec::new();
        piece.append_to(&self.txn()?.data_io()?, &mut out)?;
        Ok(out)
    }

    /// What reading `[offset, offset + len)` of the extent at `bytenr` needs besides the device:
    /// its checksums and, for an authenticated extent, its MACs.
    fn extent_piece(
        &mut self,
        file_offset: u64,
        bytenr: u64,
        offset: u64,
        len: u64,
        crypt: Option<fscrypt::extent::ExtentCryptInfo>,
    ) -> Result<ReadPiece> {
        let sums = self.block_entries(
            bytenr,
            ty::DATA_CSUM,
            CSUM_SPAN,
            1,
            offset,
            len,
            items::decode_csums,
        )?;
        let macs = match &crypt {
            Some(c) if c.authenticator().is_some() => Some(self.macs(bytenr, offset, len)?),
            _ => None,
        };
        let len = usize::try_from(len).map_err(|_| Error::Invalid("read too large"))?;
        Ok(ReadPiece::Extent {
            file_offset,
            bytenr,
            offset,
            len,
            crypt,
            sums,
            macs,
        })
    }

    /// Plans a read of `[offset, offset + size)` of file `obj` (size `it.size`): buffered blocks
    /// and holes are copied now, extents are left for [`PlannedRead::execute`] to read outside
    /// the filesystem lock. `None` when some extent was written by the open transaction (its
    /// space could be reused at once if freed), which must be read under the lock.
    pub(crate) fn plan_read(
        &mut self,
        obj: u64,
        it: &InodeItem,
        offset: u64,
        size: u64,
    ) -> Result<Option<PlannedRead>> {
        // Registered before anything is looked at: every committed extent the plan names stays
        // allocated (pinned if freed) until the plan is dropped.
        let view = self.store().read();
        Ok(self
            .file_pieces(obj, it, offset, size, true)?
            .map(|(pieces, skip, len)| PlannedRead::new(self, view, pieces, skip, len)))
    }

    /// The pieces covering the blocks of `[offset, offset + size)` of file `obj` (size
    /// `it.size`), buffered blocks first, then extents; with where the asked bytes start in
    /// them and how many there are. With `committed_only`, `None` as soon as an extent was
    /// written by the open transaction.
    fn file_pieces(
        &mut self,
        obj: u64,
        it: &InodeItem,
        offset: u64,
        size: u64,
        committed_only: bool,
    ) -> Result<Option<(Vec<ReadPiece>, usize, usize)>> {
        let mut pieces = Vec::new();
        if offset >= it.size || size == 0 {
            return Ok(Some((pieces, 0, 0)));
        }
        let end = it.size.min(offset.saturating_add(size));
        let first = offset / BLOCK;
        let last = (end - 1) / BLOCK;
        let mut blk = first;
        while blk <= last {
            if let Some(b) = self.dirty.get(&obj).and_then(|m| m.get(&blk)) {
                pieces.push(ReadPiece::Bytes(b.to_vec()));
                blk += 1;
                continue;
            }
            // A run of blocks not buffered: from the extent items.
            let mut n = 1;
            while blk + n <= last
                && !self
                    .dirty
                    .get(&obj)
                    .is_some_and(|m| m.contains_key(&(blk + n)))
            {
                n += 1;
            }
            if !self.block_pieces(obj, blk, n, committed_only, &mut pieces)? {
                return Ok(None);
            }
            blk += n;
        }
        let skip = (offset - first * BLOCK) as usize;
        Ok(Some((pieces, skip, (end - offset) as usize)))
    }

    // --- File extent items --------------------------------------------------------------------

    /// File extent items of `obj` overlapping `[start, end)`, in file order.
    pub(crate) fn extents(
        &mut self,
        obj: u64,
        start: u64,
        end: u64,
    ) -> Result<Vec<(u64, FileExtent)>> {
        let mut out = Vec::new();
        if start >= end {
            return Ok(out);
        }
        if let Some((k, v)) = self.last_item(
            Key::new(obj, ty::FILE_EXTENT, 0),
            Key::new(obj, ty::FILE_EXTENT, start),
        )? {
            let fe = FileExtent::decode(&k, &v)?;
            if k.offset + fe.len > start {
                out.push((k.offset, fe));
            }
        }
        if start < u64::MAX {
            for (k, v) in self.items(
                Key::new(obj, ty::FILE_EXTENT, start + 1),
                Key::new(obj, ty::FILE_EXTENT, end - 1),
            )? {
                let fe = FileExtent::decode(&k, &v)?;
                out.push((k.offset, fe));
            }
        }
        Ok(out)
    }

    /// Unmaps `[start, end)` (block aligned; `end` may be `u64::MAX`): items inside go, items
    /// across an edge are trimmed. Returns the bytes unmapped.
    pub(crate) fn unmap(&mut self, obj: u64, start: u64, end: u64) -> Result<u64> {
        let mut removed = 0;
        for (at, fe) in self.extents(obj, start, end)? {
            let item_end = at + fe.len;
            let key = Key::new(obj, ty::FILE_EXTENT, at);
            // New pieces take their references before the old item drops its own, so the
            // extent never reaches zero in between.
            if at < start {
                let left = FileExtent {
                    len: start - at,
                    ..fe.clone()
                };
                self.put(key, &left.encode())?;
                self.add_extent_ref(obj, at, &left)?;
            } else {
                self.del(&key)?;
            }
            if item_end > end {
                let right = FileExtent {
                    offset: fe.offset + (end - at),
                    len: item_end - end,
                    ..fe.clone()
                };
                self.put(Key::new(obj, ty::FILE_EXTENT, end), &right.encode())?;
                self.add_extent_ref(obj, end, &right)?;
            }
            self.drop_extent_ref(obj, at, &fe)?;
            removed += item_end.min(end) - at.max(start);
        }
        Ok(removed)
    }

    /// The pieces of blocks `[first, first + n)` from extent items alone (holes and
    /// preallocated ranges are zeros), appended to `out`. With `committed_only`, false (and
    /// `out` partly filled) as soon as an extent was written by the open transaction.
    fn block_pieces(
        &mut self,
        obj: u64,
        first: u64,
        n: u64,
        committed_only: bool,
        out: &mut Vec<ReadPiece>,
    ) -> Result<bool> {
        let (start, end) = (first * BLOCK, (first + n) * BLOCK);
        let mut done = start;
        for (at, fe) in self.extents(obj, start, end)? {
            if fe.kind == ExtentKind::Prealloc {
                continue;
            }
            if committed_only && self.txn()?.is_new_data(fe.bytenr) {
                return Ok(false);
            }
            let a = at.max(start);
            let b = (at + fe.len).min(end);
            if a > done {
                out.push(ReadPiece::zeros(a - done));
            }
            // Never hand out ciphertext: decrypted with the extent's own key, or ENOKEY.
            let crypt = match &fe.crypt {
                Some(ctx) => Some(self.stored_extent_crypt(obj, ctx)?),
                None => None,
            };
            out.push(self.extent_piece(a, fe.bytenr, fe.offset + (a - at), b - a, crypt)?);
            done = b;
        }
        if end > done {
            out.push(ReadPiece::zeros(end - done));
        }
        Ok(true)
    }

    /// Reads blocks `[first, first + n)` under the lock (see [`State::block_pieces`]).
    fn read_blocks(&mut self, obj: u64, first: u64, n: u64) -> Result<Vec<u8>> {
        let mut pieces = Vec::new();
        self.block_pieces(obj, first, n, false, &mut pieces)?;
        self.read_pieces(obj, &pieces)
    }

    /// Reads the pieces of file `obj` under the lock; data that fails authentication is logged
    /// with its file offset.
    fn read_pieces(&mut self, obj: u64, pieces: &[ReadPiece]) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        for p in pieces {
            let r = p.append_to(&self.txn()?.data_io()?, &mut buf);
            if let (
                Err(Error::Store(store::Error::AuthenticationFailed { logical })),
                ReadPiece::Extent {
                    file_offset,
                    bytenr,
                    offset,
                    ..
                },
            ) = (&r, p)
            {
                // The file offset of the unit that failed, from its extent address.
                self.log_tampered(obj, file_offset + logical.saturating_sub(bytenr + offset));
            }
            r?;
        }
        Ok(buf)
    }

    /// Logs a read refused because data failed authentication: which subvolume, file and
    /// offset, so an administrator can find what was tampered with.
    fn log_tampered(&mut self, obj: u64, offset: u64) {
        let path = self.file_path(obj).unwrap_or_default();
        eprintln!(
            "cowfs: authentication failed: subvolume {}, inode {obj} ({}), file offset {offset}: \
             the data was altered or misplaced; the read gets EIO",
            crate::state::subvol_of(obj),
            if path.is_empty() { "no name" } else { &path },
        );
    }

    /// Whether block `blk` holds written data (buffered or in a regular extent).
    fn block_has_data(&mut self, obj: u64, blk: u64) -> Result<bool> {
        if self.dirty.get(&obj).is_some_and(|m| m.contains_key(&blk)) {
            return Ok(true);
        }
        let ex = self.extents(obj, blk * BLOCK, (blk + 1) * BLOCK)?;
        Ok(ex.iter().any(|(_, fe)| fe.kind == ExtentKind::Regular))
    }

    /// The buffered copy of block `blk`, loaded from disk unless `whole` (about to be
    /// overwritten entirely).
    fn dirty_block(&mut self, obj: u64, blk: u64, whole: bool) -> Result<&mut [u8]> {
        let present = self.dirty.get(&obj).is_some_and(|m| m.contains_key(&blk));
        if !present {
            let data = if whole {
                vec![0u8; BLOCK as usize]
            } else {
                self.read_blocks(obj, blk, 1)?
            };
            self.dirty
                .entry(obj)
                .or_default()
                .insert(blk, data.into_boxed_slice());
            self.dirty_bytes += BLOCK;
        }
        self.dirty
            .get_mut(&obj)
            .and_then(|m| m.get_mut(&blk))
            .map(|b| &mut b[..])
            .ok_or(Error::Invalid("dirty block vanished"))
    }

    /// Buffers a whole block of new data, copied straight from the request (a new block is not
    /// zero-filled first: large writes are mostly whole blocks).
    fn put_whole_block(&mut self, obj: u64, blk: u64, bytes: &[u8]) {
        use std::collections::btree_map::Entry;
        match self.dirty.entry(obj).or_default().entry(blk) {
            Entry::Occupied(mut e) => e.get_mut().copy_from_slice(bytes),
            Entry::Vacant(e) => {
                e.insert(Box::from(bytes));
                self.dirty_bytes += BLOCK;
            }
        }
    }

    /// Zeroes bytes `[from, to)` of block `blk` if it holds data.
    fn zero_in_block(&mut self, obj: u64, blk: u64, from: usize, to: usize) -> Result<()> {
        if from < to && self.block_has_data(obj, blk)? {
            self.dirty_block(obj, blk, false)?[from..to].fill(0);
        }
        Ok(())
    }

    fn drop_dirty_range(&mut self, obj: u64, first: u64, end: u64) {
        if let Some(m) = self.dirty.get_mut(&obj) {
            let gone: Vec<u64> = m.range(first..end).map(|(b, _)| *b).collect();
            for b in gone {
                m.remove(&b);
                self.dirty_bytes -= BLOCK;
            }
        }
    }

    // --- Operations ---------------------------------------------------------------------------

    /// Refuses a write that data space could not hold once flushed, committing first to
    /// release space freed by earlier overwrites.
    pub(crate) fn reserve_data(&mut self, bytes: u64) -> Result<()> {
        let free = |s: &mut Self| -> Result<u64> { Ok(s.txn()?.stats().data.free) };
        if free(self)? >= self.dirty_bytes + bytes {
            return Ok(());
        }
        self.commit()?;
        if free(self)? >= self.dirty_bytes + bytes {
            Ok(())
        } else {
            Err(Error::NoSpace)
        }
    }

    /// Reads up to `size` bytes at `offset`, stopping at end of file.
    pub(crate) fn read_data(
        &mut self,
        obj: u64,
        it: &InodeItem,
        offset: u64,
        size: u64,
    ) -> Result<Vec<u8>> {
        let (pieces, skip, len) = self
            .file_pieces(obj, it, offset, size, false)?
            .ok_or(Error::Invalid("read plan refused"))?;
        let blocks = store::ReadBuf::from_vec(self.read_pieces(obj, &pieces)?);
        Ok(blocks.window(skip, len).into_vec())
    }

    /// Buffers `data` at `offset` and grows the size; the caller sets times and writes `it`.
    pub(crate) fn write_data(
        &mut self,
        obj: u64,
        it: &mut InodeItem,
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&e| e <= MAX_FILE_SIZE)
            .ok_or(Error::TooBig)?;
        let first = offset / BLOCK;
        let last = (end - 1) / BLOCK;
        let new_blocks = (first..=last)
            .filter(|b| !self.dirty.get(&obj).is_some_and(|m| m.contains_key(b)))
            .count() as u64;
        self.reserve_data(new_blocks * BLOCK)?;
        for blk in first..=last {
            let bs = blk * BLOCK;
            let a = offset.max(bs);
            let b = end.min(bs + BLOCK);
            let whole = a == bs && b == bs + BLOCK;
            if whole {
                self.put_whole_block(
                    obj,
                    blk,
                    &data[(a - offset) as usize..(b - offset) as usize],
                );
                continue;
            }
            let beyond_eof = bs >= it.size.next_multiple_of(BLOCK);
            let block = self.dirty_block(obj, blk, beyond_eof)?;
            block[(a - bs) as usize..(b - bs) as usize]
                .copy_from_slice(&data[(a - offset) as usize..(b - offset) as usize]);
        }
        if end > it.size {
            it.size = end;
        }
        Ok(())
    }

    /// Writes the buffered blocks of `obj` as new extents; a closed file's key pin goes with
    /// its last buffered block.
    pub(crate) fn flush_data(&mut self, obj: u64) -> Result<()> {
        let r = self.write_buffered(obj);
        self.release_idle_pin(obj);
        r
    }

    fn write_buffered(&mut self, obj: u64) -> Result<()> {
        if !self.dirty.contains_key(&obj) {
            return Ok(());
        }
        let settled_before = self.changes == self.settled_changes;
        let mut extents = Vec::new();
        self.allocate_buffered(obj, &mut extents)?;
        let written = write_new_extents(&self.txn()?.data_io()?, extents)?;
        self.map_written(written)?;
        // The flushed data is a whole change by itself: an lseek that flushes and then answers
        // ENXIO has not failed part way (unless something unsettled came before the flush).
        if settled_before {
            self.settled_changes = self.changes;
        }
        Ok(())
    }

    /// The first step of a flush: takes the buffered blocks of `obj` out of the buffer and
    /// allocates an extent for each run of them (tree work, in file order), appended to `out`.
    /// On an error the extents allocated so far are in `out`. Returns false, having changed
    /// nothing, when room needs a commit and `out` already holds extents (a commit must not
    /// record extents allocated for no file yet).
    fn allocate_buffered(&mut self, obj: u64, out: &mut Vec<NewExtent>) -> Result<bool> {
        if !self.dirty.contains_key(&obj) {
            return Ok(true);
        }
        // Encrypted data needs its key before anything changes (ENOKEY keeps it buffered).
        let common = self.crypt_common(obj)?;
        let need = self.dirty.get(&obj).map_or(0, |b| b.len() as u64 * BLOCK);
        let st = self.txn()?.stats();
        if st.data.free < need && st.data.pinned > 0 {
            if !out.is_empty() {
                return Ok(false);
            }
            // Space freed since the last commit (an unlink just before) comes back once the
            // tree is committed.
            self.commit_to_reclaim()?;
        }
        let Some(blocks) = self.dirty.remove(&obj) else {
            return Ok(true);
        };
        self.dirty_bytes -= blocks.len() as u64 * BLOCK;
        let max_run = (self.opts.max_extent_bytes / BLOCK).max(1);
        let mut runs: Vec<(u64, Vec<Box<[u8]>>)> = Vec::new();
        for (blk, data) in blocks {
            match runs.last_mut() {
                Some((first, v))
                    if *first + v.len() as u64 == blk && (v.len() as u64) < max_run =>
                {
                    v.push(data)
                }
                _ => runs.push((blk, vec![data])),
            }
        }
        runs.reverse();
        while let Some((first, run)) = runs.pop() {
            let start = first * BLOCK;
            let len = run.len() as u64 * BLOCK;
            let o = DataRefOwner {
                root: tree_of(obj),
                inode: local(obj),
                offset: start,
            };
            // A run whose extent does not fit a free range is split in two.
            let bytenr = match self.txn()?.alloc_data_extent(len, o) {
                Ok(b) => b,
                Err(store::Error::NoSpace { kind: "data", .. }) if run.len() > 1 => {
                    let mut left = run;
                    let right = left.split_off(left.len() / 2);
                    runs.push((first + left.len() as u64, right));
                    runs.push((first, left));
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            self.changes += 1;
            out.push(NewExtent {
                obj,
                start,
                bytenr,
                blocks: run,
                common: common.clone(),
            });
        }
        Ok(true)
    }

    /// The last step of a flush: the files map their written extents.
    fn map_written(&mut self, written: Vec<WrittenExtent>) -> Result<()> {
        let mut inode: Option<(u64, InodeItem)> = None;
        for WrittenExtent {
            obj,
            start,
            bytenr,
            len,
            crypt,
            sums,
        } in written
        {
            if inode.as_ref().is_none_or(|(o, _)| *o != obj) {
                if let Some((o, it)) = inode.take() {
                    self.put_inode(o, &it)?;
                }
                inode = Some((obj, self.inode(obj)?));
            }
            self.record_sums(bytenr, sums)?;
            let removed = self.unmap(obj, start, start + len)?;
            let fe = FileExtent {
                kind: ExtentKind::Regular,
                bytenr,
                extent_len: len,
                offset: 0,
                len,
                crypt: crypt.map(|c| c.context().encode().to_vec()),
            };
            self.put(Key::new(obj, ty::FILE_EXTENT, start), &fe.encode())?;
            if let Some((_, it)) = inode.as_mut() {
                it.bytes = it.bytes.saturating_sub(removed).saturating_add(len);
            }
        }
        if let Some((o, it)) = inode {
            self.put_inode(o, &it)?;
        }
        Ok(())
    }

    /// Starts a flight of all buffered data (write-behind): every file's blocks leave the buffer
    /// with their extents allocated, and the blocks in flight are remembered until
    /// [`State::land`], so that nothing reads or rewrites part of them meanwhile. On an error
    /// the flight holds what was allocated before it, and must still be landed.
    pub(crate) fn take_flight(&mut self) -> (Flight, Result<()>) {
        let objs: Vec<u64> = self.dirty.keys().copied().collect();
        let mut extents = Vec::new();
        let mut r = Ok(());
        for obj in objs {
            let settled_before = self.changes == self.settled_changes;
            match self.allocate_buffered(obj, &mut extents) {
                Ok(true) => {}
                // The rest waits for the next flight, after a commit.
                Ok(false) => break,
                Err(e) => {
                    r = Err(e);
                    break;
                }
            }
            // A file's data allocated whole will land whole: an error at the next file (no
            // key) leaves nothing half done.
            if settled_before {
                self.settled_changes = self.changes;
            }
        }
        for e in &extents {
            let first = e.start / BLOCK;
            self.in_flight
                .entry(e.obj)
                .or_default()
                .insert(first, first + e.blocks.len() as u64);
        }
        let flight = Flight {
            store: self.store().clone(),
            extents,
        };
        (flight, r)
    }

    /// Ends a flight: the files map what it wrote (nothing, if it failed), and closed files
    /// drop the key pins their data held.
    pub(crate) fn land(&mut self, written: Result<Vec<WrittenExtent>>) -> Result<()> {
        let objs: Vec<u64> = self.in_flight.drain().map(|(obj, _)| obj).collect();
        let r = written.and_then(|w| self.map_written(w));
        for obj in objs {
            self.release_idle_pin(obj);
        }
        r
    }

    /// Whether block `blk` of `obj` is in the flight up now.
    pub(crate) fn block_in_flight(&self, obj: u64, blk: u64) -> bool {
        self.in_flight.get(&obj).is_some_and(|runs| {
            runs.range(..=blk)
                .next_back()
                .is_some_and(|(_, &end)| blk < end)
        })
    }

    pub(crate) fn flush_all_data(&mut self) -> Result<()> {
        let objs: Vec<u64> = self.dirty.keys().copied().collect();
        for obj in objs {
            self.flush_data(obj)?;
        }
        Ok(())
    }

    /// Sets the size: shrinking zeroes the tail of the last block and unmaps everything after.
    pub(crate) fn truncate(&mut self, obj: u64, it: &mut InodeItem, size: u64) -> Result<()> {
        if size > MAX_FILE_SIZE {
            return Err(Error::TooBig);
        }
        if size < it.size {
            let keep = size.div_ceil(BLOCK);
            self.drop_dirty_range(obj, keep, u64::MAX);
            if !size.is_multiple_of(BLOCK) {
                self.zero_in_block(obj, size / BLOCK, (size % BLOCK) as usize, BLOCK as usize)?;
            }
            let removed = self.unmap(obj, keep * BLOCK, u64::MAX)?;
            it.bytes = it.bytes.saturating_sub(removed);
        }
        it.size = size;
        Ok(())
    }

    /// Punches `[offset, end)`: whole blocks are unmapped, partial edges zeroed.
    pub(crate) fn punch(
        &mut self,
        obj: u64,
        it: &mut InodeItem,
        offset: u64,
        end: u64,
    ) -> Result<()> {
        if offset >= end {
            return Ok(());
        }
        let a = offset.next_multiple_of(BLOCK);
        let b = end / BLOCK * BLOCK;
        if a > b {
            // Inside one block.
            let blk = offset / BLOCK;
            let bs = blk * BLOCK;
            return self.zero_in_block(obj, blk, (offset - bs) as usize, (end - bs) as usize);
        }
        if offset < a {
            let blk = offset / BLOCK;
            self.zero_in_block(obj, blk, (offset - blk * BLOCK) as usize, BLOCK as usize)?;
        }
        if end > b {
            self.zero_in_block(obj, b / BLOCK, 0, (end - b) as usize)?;
        }
        self.drop_dirty_range(obj, a / BLOCK, b / BLOCK);
        let removed = self.unmap(obj, a, b)?;
        it.bytes = it.bytes.saturating_sub(removed);
        Ok(())
    }

    /// Preallocates the holes of `[offset, end)` (rounded out to blocks) as extents that read as
    /// zeros.
    pub(crate) fn preallocate(
        &mut self,
        obj: u64,
        it: &mut InodeItem,
        offset: u64,
        end: u64,
    ) -> Result<()> {
        let a = offset / BLOCK * BLOCK;
        let b = end.next_multiple_of(BLOCK);
        let mut holes = Vec::new();
        let mut pos = a;
        for (at, fe) in self.extents(obj, a, b)? {
            if at > pos {
                holes.push((pos, at));
            }
            pos = pos.max(at + fe.len);
        }
        if pos < b {
            holes.push((pos, b));
        }
        let need: u64 = holes.iter().map(|(s, e)| e - s).sum();
        self.reserve_data(need)?;
        let max = (self.opts.max_extent_bytes / BLOCK).max(1) * BLOCK;
        for (mut s, e) in holes {
            while s < e {
                let mut len = (e - s).min(max);
                let o = DataRefOwner {
                    root: tree_of(obj),
                    inode: local(obj),
                    offset: s,
                };
                // Space was reserved in total; a free range too short for `len` means a
                // smaller extent.
                let bytenr = loop {
                    match self.txn()?.alloc_data_extent(len, o) {
                        Ok(b) => break b,
                        Err(store::Error::NoSpace { kind: "data", .. }) if len > BLOCK => {
                            len = (len / 2).next_multiple_of(BLOCK);
                        }
                        Err(e) => return Err(e.into()),
                    }
                };
                self.changes += 1;
                let fe = FileExtent {
                    kind: ExtentKind::Prealloc,
                    bytenr,
                    extent_len: len,
                    offset: 0,
                    len,
                    crypt: None,
                };
                self.put(Key::new(obj, ty::FILE_EXTENT, s), &fe.encode())?;
                it.bytes = it.bytes.saturating_add(len);
                s += len;
            }
        }
        Ok(())
    }

    /// SEEK_DATA / SEEK_HOLE over extent items (preallocated ranges count as data).
    pub(crate) fn seek(
        &mut self,
        obj: u64,
        it: &InodeItem,
        offset: u64,
        data: bool,
    ) -> Result<u64> {
        if offset >= it.size {
            return Err(Error::NoSuchOffset);
        }
        self.flush_data(obj)?;
        let ex = self.extents(obj, offset, u64::MAX)?;
        if data {
            match ex.first() {
                Some((at, _)) if offset.max(*at) < it.size => Ok(offset.max(*at)),
                _ => Err(Error::NoSuchOffset),
            }
        } else {
            let mut pos = offset;
            for (at, fe) in &ex {
                if *at > pos {
                    break;
                }
                pos = pos.max(at + fe.len);
            }
            Ok(pos.min(it.size))
        }
    }

    /// Reflink: maps `n` bytes of `src` at `off_in` into `dst` at `off_out` by sharing extents
    /// (both offsets block aligned; a partial last block only where it ends `dst`).
    pub(crate) fn clone_range(
        &mut self,
        src: u64,
        off_in: u64,
        dst: u64,
        off_out: u64,
        n: u64,
    ) -> Result<()> {
        self.flush_data(src)?;
        self.flush_data(dst)?;
        let span = n.next_multiple_of(BLOCK);
        let mut pieces = Vec::new();
        for (at, fe) in self.extents(src, off_in, off_in + span)? {
            let a = at.max(off_in);
            let b = (at + fe.len).min(off_in + span);
            let piece = FileExtent {
                offset: fe.offset + (a - at),
                len: b - a,
                ..fe
            };
            let key_offset = off_out + (a - off_in);
            pieces.push((key_offset, piece));
        }
        let mut it = self.inode(dst)?;
        let removed = self.unmap(dst, off_out, off_out + span)?;
        it.bytes = it.bytes.saturating_sub(removed);
        for (key_offset, piece) in pieces {
            self.put(Key::new(dst, ty::FILE_EXTENT, key_offset), &piece.encode())?;
            self.add_extent_ref(dst, key_offset, &piece)?;
            it.bytes = it.bytes.saturating_add(piece.len);
        }
        it.size = it.size.max(off_out + n);
        self.put_inode(dst, &it)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use store::{BlockDevice, MemDevice, Store};

    use super::*;
    use crate::types::{FileKind, MkfsOptions, OpenOptions};

    fn state() -> (Arc<dyn BlockDevice>, State) {
        let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(32 << 20));
        crate::Filesystem::mkfs(dev.clone(), &MkfsOptions::default()).unwrap();
        let store = Arc::new(Store::open(dev.clone()).unwrap());
        (dev, State::new(store, OpenOptions::default()).unwrap())
    }

    /// Punching the middle of an extent leaves two items on it, both under the owner of the
    /// extent's start, so the back-reference counts two.
    #[test]
    fn split_items_share_one_owner() {
        let (_dev, mut s) = state();
        let (obj, mut it) = s.new_inode(0, FileKind::File, 0o644, 0, 0, 0).unwrap();
        s.write_data(obj, &mut it, 0, &vec![7u8; 64 * 1024])
            .unwrap();
        s.put_inode(obj, &it).unwrap();
        s.flush_data(obj).unwrap();
        let mut it = s.inode(obj).unwrap();
        assert_eq!(it.bytes, 65536);
        s.punch(obj, &mut it, 8192, 16384).unwrap();
        let ex = s.extents(obj, 0, u64::MAX).unwrap();
        assert_eq!(ex.len(), 2);
        assert_eq!((ex[0].0, ex[0].1.len), (0, 8192));
        assert_eq!(
            (ex[1].0, ex[1].1.offset, ex[1].1.len),
            (16384, 16384, 49152)
        );
        assert_eq!(it.bytes, 57344);
        let bytenr = ex[0].1.bytenr;
        let refs = s.txn().unwrap().data_backrefs(bytenr).unwrap();
        assert_eq!(refs.len(), 1);
        assert_eq!((refs[0].0.inode, refs[0].0.offset, refs[0].1), (obj, 0, 2));
        // Unmapping everything frees the extent and its checksums.
        s.unmap(obj, 0, u64::MAX).unwrap();
        assert!(s.txn().unwrap().data_extent(bytenr).unwrap().is_none());
        let csums = s
            .items_in(
                tree_id::CSUM_TREE,
                Key::new(bytenr, ty::DATA_CSUM, 0),
                Key::new(bytenr, ty::DATA_CSUM, u64::MAX),
                usize::MAX,
            )
            .unwrap();
        assert!(csums.is_empty());
    }

    /// A damaged sector is an error on read, never wrong data.
    #[test]
    fn reads_verify_checksums() {
        let (dev, mut s) = state();
        let (obj, mut it) = s.new_inode(0, FileKind::File, 0o644, 0, 0, 0).unwrap();
        s.write_data(obj, &mut it, 0, &[5u8; 8192]).unwrap();
        s.put_inode(obj, &it).unwrap();
        s.flush_data(obj).unwrap();
        let bytenr = s.extents(obj, 0, 1).unwrap()[0].1.bytenr;
        let phys = s.store().chunk_map().to_physical(bytenr, 8192).unwrap();
        assert_eq!(s.read_data(obj, &it, 0, 8192).unwrap(), vec![5u8; 8192]);
        let raw = s
            .txn()
            .unwrap()
            .data_io()
            .unwrap()
            .read_raw(bytenr, 4096, 4096)
            .unwrap();
        assert_eq!(raw, [5u8; 4096]);
        // Change one byte of the second sector on the device.
        dev.write_at(&[6], phys + 5000).unwrap();
        assert!(s.read_data(obj, &it, 0, 4096).is_ok());
        let err = s.read_data(obj, &it, 4096, 10).unwrap_err();
        assert_eq!(err.errno(), libc::EIO, "{err}");
    }

    /// An extent with a crypt context reads as an error without its key, never as ciphertext.
    #[test]
    fn encrypted_extents_need_a_key() {
        let (_dev, mut s) = state();
        let (obj, mut it) = s.new_inode(0, FileKind::File, 0o644, 0, 0, 0).unwrap();
        s.write_data(obj, &mut it, 0, &[1u8; 4096]).unwrap();
        s.put_inode(obj, &it).unwrap();
        s.flush_data(obj).unwrap();
        let (at, mut fe) = s.extents(obj, 0, 1).unwrap().remove(0);
        fe.crypt = Some(vec![1; 34]);
        s.put(Key::new(obj, ty::FILE_EXTENT, at), &fe.encode())
            .unwrap();
        let err = s.read_data(obj, &it, 0, 10).unwrap_err();
        assert_eq!(err.errno(), libc::ENOKEY);
    }

    /// Buffers `len` bytes of `byte` in file `obj`.
    fn buffer(s: &mut State, obj: u64, len: usize, byte: u8) {
        let mut it = s.inode(obj).unwrap();
        s.write_data(obj, &mut it, 0, &vec![byte; len]).unwrap();
        s.put_inode(obj, &it).unwrap();
    }

    /// A flight stops taking files where room would need a commit (space freed since the last
    /// commit is pinned until then): a commit with its extents allocated but not yet mapped
    /// would record them for no file. The files it took land; the next flight commits first
    /// and takes the rest.
    #[test]
    fn a_flight_stops_where_room_needs_a_commit() {
        let (_dev, mut s) = state();
        let mut file = || s.new_inode(0, FileKind::File, 0o644, 0, 0, 0).unwrap().0;
        let (big, small, large) = (file(), file(), file());
        let free = s.txn().unwrap().stats().data.free;
        // A committed file over all but 1 MiB of the free data space, truncated: its space
        // stays pinned until the next commit.
        buffer(
            &mut s,
            big,
            ((free - (1 << 20)) / BLOCK * BLOCK) as usize,
            1,
        );
        s.flush_data(big).unwrap();
        s.commit().unwrap();
        let mut it = s.inode(big).unwrap();
        s.truncate(big, &mut it, 0).unwrap();
        s.put_inode(big, &it).unwrap();
        buffer(&mut s, small, 256 << 10, 2);
        buffer(&mut s, large, 512 << 10, 3);
        // Buffering keeps the buffer within the free space; space taken after it (a test
        // stand-in for any allocation that does not go through the buffer) leaves room for the
        // first file only.
        let owner = DataRefOwner {
            root: tree_of(big),
            inode: local(big),
            offset: 0,
        };
        s.txn()
            .unwrap()
            .alloc_data_extent(512 << 10, owner)
            .unwrap();
        let st = s.txn().unwrap().stats().data;
        assert!(
            st.free >= 256 << 10 && st.free < 768 << 10 && st.pinned > 0,
            "{st:?}"
        );

        let committed = s.committed_changes;
        let (flight, r) = s.take_flight();
        r.unwrap();
        assert!(!flight.is_empty());
        assert!(flight.extents.iter().all(|e| e.obj == small));
        assert!(s.dirty.contains_key(&large) && !s.dirty.contains_key(&small));
        assert_eq!(
            s.committed_changes, committed,
            "no commit with a flight taken"
        );
        s.land(flight.write()).unwrap();

        let (flight, r) = s.take_flight();
        r.unwrap();
        assert!(!flight.is_empty());
        assert!(flight.extents.iter().all(|e| e.obj == large));
        s.land(flight.write()).unwrap();
        assert!(s.dirty.is_empty());
        for (obj, len, byte) in [(small, 256 << 10, 2u8), (large, 512 << 10, 3)] {
            let it = s.inode(obj).unwrap();
            assert!(s.read_data(obj, &it, 0, len).unwrap() == vec![byte; len as usize]);
        }
        s.commit().unwrap();
    }
}
