//! The superblock: the one fixed place an image is found from. It names the format and feature
//! bits, the filesystem's identity and size, the current generation and the roots of the root
//! tree and chunk tree, plus the bootstrap chunk mappings needed to read the chunk tree itself.
//!
//! Copies live at fixed offsets ([`SUPERBLOCK_OFFSETS`]); each is checksummed and records its own
//! offset, so a copy that a misdirected write put somewhere else is refused. A commit writes every
//! copy after the blocks it points to are durable, so a crash leaves each copy either the old or
//! the new generation, or torn; [`read_superblock`] takes the newest copy that passes every check.
//!
//! The first 16 bytes (magic, checksum, format version) are frozen for all future versions, so
//! any build can tell "damaged" from "written by a newer cowcrypt". The layout is in
//! docs/FORMAT.md, "Superblock".

use crate::checksum::{CSUM_SIZE, checksum};
use crate::chunk::{ChunkMap, ChunkMapping};
use crate::device::BlockDevice;
use crate::error::{Error, Result};

/// Bytes of one superblock copy.
pub const SUPERBLOCK_SIZE: usize = 4096;

/// Where the copies live: 64 KiB and 128 KiB (both inside the reserved first MiB, so every image
/// of at least 132 KiB has two), and 64 MiB when the device is large enough, far from the first
/// two so one damaged region cannot take them all. Chunks never cover any of them (see [`crate::chunk`]).
pub const SUPERBLOCK_OFFSETS: &[u64] = &[64 << 10, 128 << 10, 64 << 20];

/// The on-disk format version this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;

/// Identifies a superblock copy: ASCII "CoWCrypt".
pub const MAGIC: [u8; 8] = *b"CoWCrypt";

/// The only sector size format version 1 supports.
pub const SECTOR_SIZE: u32 = 4096;

/// The node size new filesystems get.
pub const DEFAULT_NODE_SIZE: u32 = 16384;

/// Tree levels are below this (a leaf is level 0).
pub const MAX_TREE_LEVEL: u8 = 8;

/// Most bootstrap chunk mappings a superblock carries; decoding refuses more.
pub const MAX_SYSTEM_CHUNKS: usize = 64;

/// Most bytes of a label.
pub const MAX_LABEL_LEN: usize = 255;

/// Feature bits. An unknown `compat` bit is ignored, an unknown `ro_compat` bit allows read-only
/// use only, an unknown `incompat` bit refuses the image. Format version 1 defines no feature
/// yet; a later feature takes the next bit here and gets its own entry in docs/FORMAT.md.
pub mod features {
    /// Compatible features this build knows.
    pub const COMPAT_SUPPORTED: u64 = 0;
    /// Read-only-compatible features this build knows (and so may write).
    pub const RO_COMPAT_SUPPORTED: u64 = 0;
    /// Incompatible features this build knows (and so may read).
    pub const INCOMPAT_SUPPORTED: u64 = 0;
}

/// The root of one tree: the logical address of its root node, the generation that wrote it, and
/// its level (0 for a leaf). `bytenr == 0` means the tree is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TreeRoot {
    pub bytenr: u64,
    pub generation: u64,
    pub level: u8,
}

/// A decoded, checked superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub format_version: u32,
    pub compat: u64,
    pub ro_compat: u64,
    pub incompat: u64,
    pub fs_uuid: [u8; 16],
    /// At most [`MAX_LABEL_LEN`] bytes of UTF-8.
    pub label: String,
    /// The generation of the last commit; every commit increments it.
    pub generation: u64,
    /// [`SECTOR_SIZE`].
    pub sector_size: u32,
    /// A power of two in 4096..=65536.
    pub node_size: u32,
    pub total_bytes: u64,
    pub bytes_used: u64,
    pub root_tree: TreeRoot,
    pub chunk_tree: TreeRoot,
    /// Bootstrap mappings covering the chunk tree's own nodes; at most [`MAX_SYSTEM_CHUNKS`].
    pub system_chunks: Vec<ChunkMapping>,
}

// Byte offsets inside a copy; docs/FORMAT.md has the table.
const OFF_MAGIC: usize = 0x000;
const OFF_CSUM: usize = 0x008;
const OFF_VERSION: usize = 0x00c;
const OFF_BYTENR: usize = 0x010;
const OFF_GENERATION: usize = 0x018;
const OFF_COMPAT: usize = 0x020;
const OFF_RO_COMPAT: usize = 0x028;
const OFF_INCOMPAT: usize = 0x030;
const OFF_UUID: usize = 0x038;
const OFF_SECTOR_SIZE: usize = 0x048;
const OFF_NODE_SIZE: usize = 0x04c;
const OFF_TOTAL_BYTES: usize = 0x050;
const OFF_BYTES_USED: usize = 0x058;
const OFF_ROOT_TREE: usize = 0x060;
const OFF_CHUNK_TREE: usize = 0x078;
const TREE_ROOT_SIZE: usize = 24;
const OFF_LABEL_LEN: usize = 0x090;
const OFF_LABEL: usize = 0x091;
const OFF_SYS_COUNT: usize = 0x190;
const OFF_SYS_ARRAY: usize = 0x198;
/// Everything after the checksum field is covered by it.
const CSUM_START: usize = OFF_CSUM + CSUM_SIZE;

const _: () = assert!(OFF_ROOT_TREE + TREE_ROOT_SIZE == OFF_CHUNK_TREE);
const _: () = assert!(OFF_CHUNK_TREE + TREE_ROOT_SIZE == OFF_LABEL_LEN);
const _: () = assert!(OFF_LABEL + MAX_LABEL_LEN == OFF_SYS_COUNT);
const _: () =
    assert!(OFF_SYS_ARRAY + MAX_SYSTEM_CHUNKS * ChunkMapping::ENCODED_SIZE <= SUPERBLOCK_SIZE);

impl Superblock {
    /// A superblock for a new, empty filesystem of `total_bytes`: generation 0, default sizes,
    /// no label, no feature bits, empty trees.
    pub fn new(fs_uuid: [u8; 16], total_bytes: u64) -> Self {
        Superblock {
            format_version: FORMAT_VERSION,
            compat: 0,
            ro_compat: 0,
            incompat: 0,
            fs_uuid,
            label: String::new(),
            generation: 0,
            sector_size: SECTOR_SIZE,
            node_size: DEFAULT_NODE_SIZE,
            total_bytes: total_bytes - total_bytes % u64::from(SECTOR_SIZE),
            bytes_used: 0,
            root_tree: TreeRoot::default(),
            chunk_tree: TreeRoot::default(),
            system_chunks: Vec::new(),
        }
    }

    /// Encodes the copy for the primary offset, `SUPERBLOCK_OFFSETS[0]`.
    pub fn encode(&self) -> Result<[u8; SUPERBLOCK_SIZE]> {
        self.encode_for(SUPERBLOCK_OFFSETS[0])
    }

    /// Encodes the copy that lives at `offset`: magic, checksum and the offset itself included.
    /// Refuses a superblock that [`Superblock::decode`] would refuse.
    pub fn encode_for(&self, offset: u64) -> Result<[u8; SUPERBLOCK_SIZE]> {
        let invalid = |reason: String| Error::BadSuperblock { offset, reason };
        if self.format_version != FORMAT_VERSION {
            return Err(invalid(format!(
                "this build writes only format version {FORMAT_VERSION}, not {}",
                self.format_version
            )));
        }
        self.validate().map_err(invalid)?;
        let mut b = [0u8; SUPERBLOCK_SIZE];
        b[OFF_MAGIC..OFF_MAGIC + 8].copy_from_slice(&MAGIC);
        put_u32(&mut b, OFF_VERSION, self.format_version);
        put_u64(&mut b, OFF_BYTENR, offset);
        put_u64(&mut b, OFF_GENERATION, self.generation);
        put_u64(&mut b, OFF_COMPAT, self.compat);
        put_u64(&mut b, OFF_RO_COMPAT, self.ro_compat);
        put_u64(&mut b, OFF_INCOMPAT, self.incompat);
        b[OFF_UUID..OFF_UUID + 16].copy_from_slice(&self.fs_uuid);
        put_u32(&mut b, OFF_SECTOR_SIZE, self.sector_size);
        put_u32(&mut b, OFF_NODE_SIZE, self.node_size);
        put_u64(&mut b, OFF_TOTAL_BYTES, self.total_bytes);
        put_u64(&mut b, OFF_BYTES_USED, self.bytes_used);
        put_tree_root(&mut b, OFF_ROOT_TREE, &self.root_tree);
        put_tree_root(&mut b, OFF_CHUNK_TREE, &self.chunk_tree);
        let label = self.label.as_bytes();
        // validate() bounded the label by MAX_LABEL_LEN (255), so it fits in one byte.
        b[OFF_LABEL_LEN] = label.len() as u8;
        b[OFF_LABEL..OFF_LABEL + label.len()].copy_from_slice(label);
        // validate() bounded the count by MAX_SYSTEM_CHUNKS.
        put_u32(&mut b, OFF_SYS_COUNT, self.system_chunks.len() as u32);
        for (i, m) in self.system_chunks.iter().enumerate() {
            let at = OFF_SYS_ARRAY + i * ChunkMapping::ENCODED_SIZE;
            b[at..at + ChunkMapping::ENCODED_SIZE].copy_from_slice(&m.encode());
        }
        let csum = checksum(&b[CSUM_START..]);
        put_u32(&mut b, OFF_CSUM, csum);
        Ok(b)
    }

    /// Decodes the copy read from `expected_offset`, checking in this order: size, magic,
    /// checksum, recorded offset, format version, incompat features, then every field.
    pub fn decode(bytes: &[u8], expected_offset: u64) -> Result<Superblock> {
        let b = check_frame(bytes, expected_offset)?;
        let invalid = |reason: String| Error::BadSuperblock {
            offset: expected_offset,
            reason,
        };
        let format_version = get_u32(b, OFF_VERSION);
        if format_version == 0 {
            return Err(invalid("format version 0".into()));
        }
        if format_version > FORMAT_VERSION {
            return Err(Error::UnsupportedFormatVersion {
                found: format_version,
                supported: FORMAT_VERSION,
            });
        }
        let incompat = get_u64(b, OFF_INCOMPAT);
        let unknown = incompat & !features::INCOMPAT_SUPPORTED;
        if unknown != 0 {
            return Err(Error::UnsupportedIncompatFeatures { unknown });
        }
        let label_len = usize::from(b[OFF_LABEL_LEN]);
        let label = std::str::from_utf8(&b[OFF_LABEL..OFF_LABEL + label_len])
            .map_err(|e| invalid(format!("label is not UTF-8: {e}")))?
            .to_owned();
        let sys_count = get_u32(b, OFF_SYS_COUNT) as usize;
        if sys_count > MAX_SYSTEM_CHUNKS {
            return Err(invalid(format!(
                "{sys_count} system chunks, at most {MAX_SYSTEM_CHUNKS} allowed"
            )));
        }
        let mut system_chunks = Vec::with_capacity(sys_count);
        for i in 0..sys_count {
            let at = OFF_SYS_ARRAY + i * ChunkMapping::ENCODED_SIZE;
            let m = ChunkMapping::decode(&b[at..at + ChunkMapping::ENCODED_SIZE])
                .map_err(|e| invalid(format!("system chunk {i}: {e}")))?;
            system_chunks.push(m);
        }
        let sb = Superblock {
            format_version,
            compat: get_u64(b, OFF_COMPAT),
            ro_compat: get_u64(b, OFF_RO_COMPAT),
            incompat,
            fs_uuid: b[OFF_UUID..OFF_UUID + 16]
                .try_into()
                .map_err(|_| invalid("uuid".into()))?,
            label,
            generation: get_u64(b, OFF_GENERATION),
            sector_size: get_u32(b, OFF_SECTOR_SIZE),
            node_size: get_u32(b, OFF_NODE_SIZE),
            total_bytes: get_u64(b, OFF_TOTAL_BYTES),
            bytes_used: get_u64(b, OFF_BYTES_USED),
            root_tree: get_tree_root(b, OFF_ROOT_TREE),
            chunk_tree: get_tree_root(b, OFF_CHUNK_TREE),
            system_chunks,
        };
        sb.validate().map_err(invalid)?;
        Ok(sb)
    }

    /// Read-only-compatible feature bits this build does not know. Non-zero means the image may
    /// be read but must not be written.
    pub fn unknown_ro_compat(&self) -> u64 {
        self.ro_compat & !features::RO_COMPAT_SUPPORTED
    }

    /// Refuses writing to an image with unknown read-only-compatible features.
    pub fn check_writable(&self) -> Result<()> {
        match self.unknown_ro_compat() {
            0 => Ok(()),
            unknown => Err(Error::UnsupportedRoCompatFeatures { unknown }),
        }
    }

    /// The chunk map made of the bootstrap mappings, enough to read the chunk tree.
    pub fn bootstrap_chunk_map(&self) -> Result<ChunkMap> {
        let mut map = ChunkMap::new();
        for m in &self.system_chunks {
            map.insert(*m)?;
        }
        Ok(map)
    }

    /// The field rules shared by encode and decode. Returns the reason a field is wrong.
    fn validate(&self) -> std::result::Result<(), String> {
        if self.sector_size != SECTOR_SIZE {
            return Err(format!(
                "sector size {} (only {SECTOR_SIZE} is supported)",
                self.sector_size
            ));
        }
        if !self.node_size.is_power_of_two() || !(4096..=65536).contains(&self.node_size) {
            return Err(format!(
                "node size {} is not a power of two in 4096..=65536",
                self.node_size
            ));
        }
        let sector = u64::from(self.sector_size);
        if self.total_bytes == 0 || !self.total_bytes.is_multiple_of(sector) {
            return Err(format!(
                "total bytes {} is not a positive multiple of the sector size",
                self.total_bytes
            ));
        }
        if self.bytes_used > self.total_bytes {
            return Err(format!(
                "bytes used {} exceeds total bytes {}",
                self.bytes_used, self.total_bytes
            ));
        }
        for (name, root) in [
            ("root tree", &self.root_tree),
            ("chunk tree", &self.chunk_tree),
        ] {
            if root.level >= MAX_TREE_LEVEL {
                return Err(format!("{name} level {} is too deep", root.level));
            }
            if root.bytenr % sector != 0 {
                return Err(format!("{name} root {} is not sector aligned", root.bytenr));
            }
            if root.generation > self.generation {
                return Err(format!(
                    "{name} generation {} is newer than the superblock's {}",
                    root.generation, self.generation
                ));
            }
        }
        if self.label.len() > MAX_LABEL_LEN {
            return Err(format!(
                "label is {} bytes, at most {MAX_LABEL_LEN}",
                self.label.len()
            ));
        }
        if self.system_chunks.len() > MAX_SYSTEM_CHUNKS {
            return Err(format!(
                "{} system chunks, at most {MAX_SYSTEM_CHUNKS}",
                self.system_chunks.len()
            ));
        }
        self.bootstrap_chunk_map()
            .map_err(|e| format!("system chunks: {e}"))?;
        Ok(())
    }
}

/// Checks what every format version shares (size, magic, checksum) plus the recorded offset,
/// returning the bytes as an array. The generation can be trusted once this passes.
fn check_frame(bytes: &[u8], expected_offset: u64) -> Result<&[u8; SUPERBLOCK_SIZE]> {
    let invalid = |reason: String| Error::BadSuperblock {
        offset: expected_offset,
        reason,
    };
    let b: &[u8; SUPERBLOCK_SIZE] = bytes
        .try_into()
        .map_err(|_| invalid(format!("{} bytes, expected {SUPERBLOCK_SIZE}", bytes.len())))?;
    if b[OFF_MAGIC..OFF_MAGIC + 8] != MAGIC {
        return Err(invalid("bad magic (not a cowcrypt superblock)".into()));
    }
    let stored = get_u32(b, OFF_CSUM);
    let computed = checksum(&b[CSUM_START..]);
    if stored != computed {
        return Err(invalid(format!(
            "checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
        )));
    }
    let recorded = get_u64(b, OFF_BYTENR);
    if recorded != expected_offset {
        return Err(invalid(format!(
            "copy records offset {recorded}: it was written for another place"
        )));
    }
    Ok(b)
}

/// Writes every superblock copy that fits on `dev`. Does not flush: the caller orders this after
/// the flush that made the new trees durable, and flushes after it.
pub fn write_superblocks(dev: &dyn BlockDevice, sb: &Superblock) -> Result<()> {
    let mut written = 0;
    for &offset in copies_on(dev) {
        dev.write_at(&sb.encode_for(offset)?, offset)?;
        written += 1;
    }
    if written == 0 {
        return Err(Error::InvalidRequest(format!(
            "device of {} bytes is too small for a superblock",
            dev.size()
        )));
    }
    Ok(())
}

/// Reads the newest valid superblock copy.
///
/// A copy is a candidate when its magic, checksum and recorded offset are right; candidates are
/// tried newest generation first, and the first that decodes wins. A newest candidate from a
/// newer format or with unknown incompat features refuses the image outright: falling back to an
/// older copy would silently roll the filesystem back. Unknown ro_compat bits are allowed; see
/// [`Superblock::check_writable`].
pub fn read_superblock(dev: &dyn BlockDevice) -> Result<Superblock> {
    let mut tried = Vec::new();
    let mut candidates = Vec::new();
    for &offset in copies_on(dev) {
        let mut buf = vec![0u8; SUPERBLOCK_SIZE];
        match dev
            .read_at(&mut buf, offset)
            .and_then(|()| check_frame(&buf, offset).map(|b| get_u64(b, OFF_GENERATION)))
        {
            Ok(generation) => candidates.push((generation, offset, buf)),
            Err(e) => tried.push(e.to_string()),
        }
    }
    // Newest first; on equal generations the lower offset (the primary) first.
    candidates.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, offset, buf) in candidates {
        match Superblock::decode(&buf, offset) {
            Ok(sb) => return Ok(sb),
            Err(
                e @ (Error::UnsupportedFormatVersion { .. }
                | Error::UnsupportedIncompatFeatures { .. }),
            ) => return Err(e),
            Err(e) => tried.push(e.to_string()),
        }
    }
    if tried.is_empty() {
        tried.push(format!("device of {} bytes holds no copy", dev.size()));
    }
    Err(Error::NoValidSuperblock {
        tried: tried.join("; "),
    })
}

/// The copy offsets that fit on `dev`.
fn copies_on(dev: &dyn BlockDevice) -> &'static [u64] {
    let size = dev.size();
    let fit = SUPERBLOCK_OFFSETS
        .iter()
        .take_while(|&&o| o + SUPERBLOCK_SIZE as u64 <= size)
        .count();
    &SUPERBLOCK_OFFSETS[..fit]
}

fn put_u32(b: &mut [u8; SUPERBLOCK_SIZE], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8; SUPERBLOCK_SIZE], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn put_tree_root(b: &mut [u8; SUPERBLOCK_SIZE], at: usize, r: &TreeRoot) {
    put_u64(b, at, r.bytenr);
    put_u64(b, at + 8, r.generation);
    b[at + 16] = r.level;
}

fn get_u32(b: &[u8; SUPERBLOCK_SIZE], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn get_u64(b: &[u8; SUPERBLOCK_SIZE], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

fn get_tree_root(b: &[u8; SUPERBLOCK_SIZE], at: usize) -> TreeRoot {
    TreeRoot {
        bytenr: get_u64(b, at),
        generation: get_u64(b, at + 8),
        level: b[at + 16],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::{ChunkKind, FIRST_LOGICAL};
    use crate::device::MemDevice;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    fn sample(generation: u64) -> Superblock {
        let mut sb = Superblock::new([7; 16], 256 * MIB);
        sb.generation = generation;
        sb.label = "home".into();
        sb.bytes_used = 3 * MIB;
        sb.root_tree = TreeRoot {
            bytenr: 40 * MIB,
            generation,
            level: 1,
        };
        sb.chunk_tree = TreeRoot {
            bytenr: FIRST_LOGICAL,
            generation: generation.saturating_sub(1),
            level: 0,
        };
        sb.system_chunks = vec![ChunkMapping {
            logical: FIRST_LOGICAL,
            length: 4 * MIB,
            physical: 2 * MIB,
            kind: ChunkKind::System,
        }];
        sb
    }

    fn arb_superblock() -> impl Strategy<Value = Superblock> {
        (
            (any::<u64>(), any::<u64>(), any::<[u8; 16]>(), "\\PC{0,60}"),
            (0u64..u64::MAX / 2, 12u32..=16, 1u64..(1 << 40)),
            (
                any::<u64>(),
                any::<u64>(),
                0u8..MAX_TREE_LEVEL,
                0u8..MAX_TREE_LEVEL,
            ),
            0usize..=MAX_SYSTEM_CHUNKS,
        )
            .prop_map(
                |((compat, used, uuid, label), (generation, node_shift, sectors), roots, nsys)| {
                    let (r1, r2, l1, l2) = roots;
                    let total_bytes = sectors * 4096;
                    Superblock {
                        format_version: FORMAT_VERSION,
                        compat,
                        ro_compat: 0,
                        incompat: 0,
                        fs_uuid: uuid,
                        label,
                        generation,
                        sector_size: SECTOR_SIZE,
                        node_size: 1 << node_shift,
                        total_bytes,
                        bytes_used: used % (total_bytes + 1),
                        root_tree: TreeRoot {
                            bytenr: (r1 >> 20) * 4096,
                            generation: r1 % (generation + 1),
                            level: l1,
                        },
                        chunk_tree: TreeRoot {
                            bytenr: (r2 >> 20) * 4096,
                            generation: r2 % (generation + 1),
                            level: l2,
                        },
                        system_chunks: (0..nsys as u64)
                            .map(|i| ChunkMapping {
                                logical: FIRST_LOGICAL + i * MIB,
                                length: MIB,
                                physical: 128 * MIB + i * 2 * MIB,
                                kind: ChunkKind::System,
                            })
                            .collect(),
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn round_trip(sb in arb_superblock(), copy in 0usize..3) {
            let offset = SUPERBLOCK_OFFSETS[copy];
            let b = sb.encode_for(offset).unwrap();
            prop_assert_eq!(Superblock::decode(&b, offset).unwrap(), sb.clone());
            // The same bytes are refused at any other copy's place.
            let other = SUPERBLOCK_OFFSETS[(copy + 1) % 3];
            prop_assert!(Superblock::decode(&b, other).is_err());
        }

        #[test]
        fn random_bytes_never_decode(b in proptest::collection::vec(any::<u8>(), 0..5000)) {
            prop_assert!(Superblock::decode(&b, SUPERBLOCK_OFFSETS[0]).is_err());
        }

        #[test]
        fn random_bytes_behind_valid_magic_and_checksum_never_panic(
            mut b in proptest::collection::vec(any::<u8>(), SUPERBLOCK_SIZE),
            version in 0u32..3,
        ) {
            // Forge the frame so decoding reaches the field checks.
            b[..8].copy_from_slice(&MAGIC);
            b[OFF_VERSION..OFF_VERSION + 4].copy_from_slice(&version.to_le_bytes());
            b[OFF_BYTENR..OFF_BYTENR + 8].copy_from_slice(&(64u64 << 10).to_le_bytes());
            let csum = checksum(&b[CSUM_START..]);
            b[OFF_CSUM..OFF_CSUM + 4].copy_from_slice(&csum.to_le_bytes());
            if let Ok(sb) = Superblock::decode(&b, 64 << 10) {
                // Whatever decodes re-encodes and decodes to itself.
                let again = sb.encode().unwrap();
                prop_assert_eq!(Superblock::decode(&again, 64 << 10).unwrap(), sb);
            }
        }
    }

    #[test]
    fn every_single_bit_flip_is_refused() {
        let offset = SUPERBLOCK_OFFSETS[1];
        let good = sample(9).encode_for(offset).unwrap();
        for bit in 0..SUPERBLOCK_SIZE * 8 {
            let mut b = good;
            b[bit / 8] ^= 1 << (bit % 8);
            match Superblock::decode(&b, offset) {
                Err(Error::BadSuperblock { reason, .. }) => assert!(
                    reason.contains("checksum") || reason.contains("magic"),
                    "bit {bit}: {reason}"
                ),
                other => panic!("bit {bit}: {other:?}"),
            }
        }
    }

    #[test]
    fn encode_refuses_invalid_fields() {
        type Change = Box<dyn Fn(&mut Superblock)>;
        let cases: Vec<Change> = vec![
            Box::new(|sb| sb.node_size = 12288),
            Box::new(|sb| sb.node_size = 2048),
            Box::new(|sb| sb.node_size = 131072),
            Box::new(|sb| sb.sector_size = 512),
            Box::new(|sb| sb.total_bytes = 0),
            Box::new(|sb| sb.bytes_used = sb.total_bytes + 1),
            Box::new(|sb| sb.root_tree.level = MAX_TREE_LEVEL),
            Box::new(|sb| sb.chunk_tree.generation = sb.generation + 1),
            Box::new(|sb| sb.root_tree.bytenr += 1),
            Box::new(|sb| sb.label = "x".repeat(256)),
            Box::new(|sb| sb.format_version = 2),
            Box::new(|sb| {
                let m = sb.system_chunks[0];
                sb.system_chunks.push(m)
            }),
            Box::new(|sb| {
                sb.system_chunks = (0..=MAX_SYSTEM_CHUNKS as u64)
                    .map(|i| ChunkMapping {
                        logical: FIRST_LOGICAL + i * MIB,
                        length: MIB,
                        physical: 128 * MIB + i * MIB,
                        kind: ChunkKind::System,
                    })
                    .collect()
            }),
        ];
        for (i, change) in cases.iter().enumerate() {
            let mut sb = sample(4);
            change(&mut sb);
            assert!(
                matches!(sb.encode(), Err(Error::BadSuperblock { .. })),
                "case {i}"
            );
        }
        let mut sb = sample(4);
        sb.label = "é".repeat(127);
        assert_eq!(
            Superblock::decode(&sb.encode().unwrap(), 64 << 10).unwrap(),
            sb
        );
    }

    /// Sets a field of an encoded copy and fixes its checksum, as a newer or hostile writer would.
    fn forge(b: &mut [u8; SUPERBLOCK_SIZE], at: usize, bytes: &[u8]) {
        b[at..at + bytes.len()].copy_from_slice(bytes);
        let csum = checksum(&b[CSUM_START..]);
        put_u32(b, OFF_CSUM, csum);
    }

    #[test]
    fn newer_format_and_unknown_incompat_are_refused_clearly() {
        let mut b = sample(3).encode().unwrap();
        forge(&mut b, OFF_VERSION, &2u32.to_le_bytes());
        let e = Superblock::decode(&b, 64 << 10).unwrap_err();
        assert!(matches!(
            e,
            Error::UnsupportedFormatVersion {
                found: 2,
                supported: 1
            }
        ));
        assert!(e.to_string().contains("format version 2"), "{e}");

        let mut b = sample(3).encode().unwrap();
        forge(&mut b, OFF_INCOMPAT, &(1u64 << 40).to_le_bytes());
        let e = Superblock::decode(&b, 64 << 10).unwrap_err();
        assert!(matches!(e, Error::UnsupportedIncompatFeatures { unknown } if unknown == 1 << 40));
        assert!(
            e.to_string()
                .contains("incompatible features 0x10000000000"),
            "{e}"
        );

        // Unknown ro_compat decodes but may not be written.
        let mut b = sample(3).encode().unwrap();
        forge(&mut b, OFF_RO_COMPAT, &4u64.to_le_bytes());
        let sb = Superblock::decode(&b, 64 << 10).unwrap();
        assert_eq!(sb.unknown_ro_compat(), 4);
        assert!(matches!(
            sb.check_writable(),
            Err(Error::UnsupportedRoCompatFeatures { unknown: 4 })
        ));
        sample(3).check_writable().unwrap();
        // Unknown compat bits are simply carried.
        let mut b = sample(3).encode().unwrap();
        forge(&mut b, OFF_COMPAT, &8u64.to_le_bytes());
        assert_eq!(Superblock::decode(&b, 64 << 10).unwrap().compat, 8);
    }

    /// Generation 6 of `sample`, after a commit that also added system chunks, so the new copy
    /// differs from generation 5 in its first and in its later sectors.
    fn sample6() -> Superblock {
        let mut sb = sample(6);
        for i in 1..20 {
            sb.system_chunks.push(ChunkMapping {
                logical: FIRST_LOGICAL + i * 4 * MIB,
                length: MIB,
                physical: 2 * MIB + i * 4 * MIB,
                kind: ChunkKind::System,
            });
        }
        sb
    }

    #[test]
    fn newest_valid_copy_wins() {
        let dev = MemDevice::new(MIB as usize);
        write_superblocks(&dev, &sample(5)).unwrap();
        assert_eq!(read_superblock(&dev).unwrap(), sample(5));
        // Generation 6 torn on copy 0: only its first sector landed.
        let new0 = sample6().encode_for(SUPERBLOCK_OFFSETS[0]).unwrap();
        dev.write_at(&new0[..512], SUPERBLOCK_OFFSETS[0]).unwrap();
        assert_eq!(read_superblock(&dev).unwrap(), sample(5));
        // Only its later sectors landed.
        write_superblocks(&dev, &sample(5)).unwrap();
        dev.write_at(&new0[512..], SUPERBLOCK_OFFSETS[0] + 512)
            .unwrap();
        assert_eq!(read_superblock(&dev).unwrap(), sample(5));
        // Copy 0 complete, copy 1 torn: generation 6 wins.
        dev.write_at(&new0, SUPERBLOCK_OFFSETS[0]).unwrap();
        let new1 = sample6().encode_for(SUPERBLOCK_OFFSETS[1]).unwrap();
        dev.write_at(&new1[..1024], SUPERBLOCK_OFFSETS[1]).unwrap();
        assert_eq!(read_superblock(&dev).unwrap(), sample6());
        // Copy 0 destroyed entirely, copy 1 newer: the newest still wins.
        dev.write_at(
            &sample(7).encode_for(SUPERBLOCK_OFFSETS[1]).unwrap(),
            SUPERBLOCK_OFFSETS[1],
        )
        .unwrap();
        dev.write_at(&[0xa5; SUPERBLOCK_SIZE], SUPERBLOCK_OFFSETS[0])
            .unwrap();
        assert_eq!(read_superblock(&dev).unwrap().generation, 7);
        // A copy moved to the other place is not accepted there.
        dev.write_at(&new0, SUPERBLOCK_OFFSETS[1]).unwrap();
        let e = read_superblock(&dev).unwrap_err();
        assert!(matches!(e, Error::NoValidSuperblock { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("bad magic") && msg.contains("another place"),
            "{msg}"
        );
    }

    #[test]
    fn newest_copy_from_newer_format_is_not_skipped() {
        let dev = MemDevice::new(MIB as usize);
        write_superblocks(&dev, &sample(5)).unwrap();
        let mut b = sample(6).encode_for(SUPERBLOCK_OFFSETS[1]).unwrap();
        forge(&mut b, OFF_VERSION, &9u32.to_le_bytes());
        dev.write_at(&b, SUPERBLOCK_OFFSETS[1]).unwrap();
        assert!(matches!(
            read_superblock(&dev),
            Err(Error::UnsupportedFormatVersion { found: 9, .. })
        ));
    }

    #[test]
    fn copies_written_where_they_fit() {
        let small = MemDevice::new(MIB as usize);
        write_superblocks(&small, &sample(1)).unwrap();
        let big = MemDevice::new((65 * MIB) as usize);
        write_superblocks(&big, &sample(1)).unwrap();
        let mut buf = vec![0u8; SUPERBLOCK_SIZE];
        big.read_at(&mut buf, 64 * MIB).unwrap();
        assert_eq!(Superblock::decode(&buf, 64 * MIB).unwrap(), sample(1));
        // Destroy the first two: the 64 MiB copy carries the filesystem.
        big.write_at(&[0; SUPERBLOCK_SIZE], SUPERBLOCK_OFFSETS[0])
            .unwrap();
        big.write_at(&[0; SUPERBLOCK_SIZE], SUPERBLOCK_OFFSETS[1])
            .unwrap();
        assert_eq!(read_superblock(&big).unwrap(), sample(1));
        let tiny = MemDevice::new(64 << 10);
        assert!(write_superblocks(&tiny, &sample(1)).is_err());
        assert!(matches!(
            read_superblock(&tiny),
            Err(Error::NoValidSuperblock { .. })
        ));
    }
}
