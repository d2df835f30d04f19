//! Crash consistency of the device-level commit protocol, through the crash harness.
//!
//! The workload is the commit protocol the transaction layer uses, reduced to what this layer
//! owns: each commit writes a new state blob (encrypted, through the data path) to a place no
//! committed state uses, flushes, writes every superblock copy naming it, and flushes again.
//! Every crash image of the recorded workload (every prefix, torn writes, writes reordered
//! between flushes) must open, show a generation no older than the last commit that returned
//! and no newer than the last one started, and hold exactly that generation's state.
//!
//! COWCRYPT_CRASH_OPS scales the workload (default 2000 device operations).

mod common;

use common::ToyCrypt;

use store::chunk::{ChunkKind, ChunkMap, ChunkMapping, FIRST_LOGICAL, PHYSICAL_START};
use store::crash::{CrashKind, CrashOptions, DeviceOp, RecordingDevice, SplitMix64, crash_images};
use store::data_io::DataIo;
use store::superblock::{Superblock, TreeRoot, read_superblock, write_superblocks};
use store::{BlockDevice, MemDevice};

const CHUNK_LEN: u64 = 512 << 10;
const DEVICE_SIZE: u64 = PHYSICAL_START + CHUNK_LEN;
const SLOT: u64 = 16 << 10;
const SLOTS: u64 = CHUNK_LEN / SLOT;

fn data_chunk() -> ChunkMapping {
    ChunkMapping {
        logical: FIRST_LOGICAL,
        length: CHUNK_LEN,
        physical: PHYSICAL_START,
        kind: ChunkKind::Data,
    }
}

/// What a committed generation holds.
struct Committed {
    logical: u64,
    plaintext: Vec<u8>,
    csums: Vec<u32>,
    /// The record's length when this commit returned (None for the mkfs generation, which is
    /// in the base image).
    returned_at: Option<usize>,
    /// The record's length when its superblock writes began.
    sb_written_at: usize,
}

fn superblock(generation: u64, logical: u64, len: u64) -> Superblock {
    let mut sb = Superblock::new([0x42; 16], DEVICE_SIZE);
    sb.generation = generation;
    sb.bytes_used = len;
    sb.root_tree = TreeRoot {
        bytenr: logical,
        generation,
        level: 0,
    };
    sb.system_chunks = vec![data_chunk()];
    sb
}

/// Commits `plaintext` as generation `generation` at `slot`.
fn commit(
    dev: &RecordingDevice<MemDevice>,
    chunks: &ChunkMap,
    rng: &mut SplitMix64,
    generation: u64,
    slot: u64,
    plaintext: Vec<u8>,
) -> Committed {
    let io = DataIo::new(dev, chunks, 4096).unwrap();
    let logical = FIRST_LOGICAL + slot * SLOT;
    // Written in a random number of pieces, as a transaction's extents would be.
    let mut csums = Vec::new();
    let mut at = 0;
    while at < plaintext.len() {
        let n = 4096 * (1 + rng.below(((plaintext.len() - at) / 4096) as u64) as usize);
        let c = io
            .write(logical, at as u64, &plaintext[at..at + n], Some(&ToyCrypt))
            .unwrap();
        csums.extend(c.checksums);
        at += n;
    }
    dev.flush().unwrap();
    let sb_written_at = dev.mark();
    write_superblocks(
        dev,
        &superblock(generation, logical, plaintext.len() as u64),
    )
    .unwrap();
    dev.flush().unwrap();
    Committed {
        logical,
        plaintext,
        csums,
        returned_at: Some(dev.mark()),
        sb_written_at,
    }
}

#[test]
fn every_crash_image_opens_at_a_returned_commit() {
    let target_ops: usize = std::env::var("COWCRYPT_CRASH_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let seed = 0x5eed_0001;
    let mut rng = SplitMix64::new(seed);
    let mut chunks = ChunkMap::new();
    chunks.insert(data_chunk()).unwrap();

    // mkfs: generation 1 with an empty state blob of one sector, written before recording.
    let base_dev = MemDevice::new(DEVICE_SIZE as usize);
    let mut history = Vec::new();
    {
        let io = DataIo::new(&base_dev, &chunks, 4096).unwrap();
        let plaintext = vec![0u8; 4096];
        let csums = io
            .write(FIRST_LOGICAL, 0, &plaintext, Some(&ToyCrypt))
            .unwrap()
            .checksums;
        write_superblocks(&base_dev, &superblock(1, FIRST_LOGICAL, 4096)).unwrap();
        history.push(Committed {
            logical: FIRST_LOGICAL,
            plaintext,
            csums,
            returned_at: None,
            sb_written_at: 0,
        });
    }
    let base = base_dev.snapshot();

    let dev = RecordingDevice::new(base_dev);
    let mut current_slot = 0;
    while dev.mark() < target_ops {
        let generation = history.len() as u64 + 1;
        let mut slot = rng.below(SLOTS);
        if slot == current_slot {
            slot = (slot + 1) % SLOTS;
        }
        let mut plaintext = vec![0u8; 4096 * (1 + rng.below(4) as usize)];
        rng.fill(&mut plaintext);
        // Now and then an aborted transaction leaves unflushed writes behind before the commit.
        if rng.below(4) == 0 {
            let io = DataIo::new(&dev, &chunks, 4096).unwrap();
            let mut junk = vec![0u8; 4096];
            rng.fill(&mut junk);
            let spare = (slot + 1 + rng.below(SLOTS - 2)) % SLOTS;
            if spare != current_slot && spare != slot {
                io.write(FIRST_LOGICAL + spare * SLOT, 0, &junk, None)
                    .unwrap();
            }
        }
        history.push(commit(&dev, &chunks, &mut rng, generation, slot, plaintext));
        current_slot = slot;
    }
    let log = dev.log();
    assert!(log.len() >= target_ops);
    assert!(log.iter().filter(|op| **op == DeviceOp::Flush).count() > target_ops / 10);

    let mut seen = [0usize; 3];
    let mut generations_seen = std::collections::BTreeSet::new();
    for img in crash_images(&base, &log, seed, CrashOptions::default()) {
        let what = &img.description;
        let newest_returned = history
            .iter()
            .rposition(|c| c.returned_at.is_none_or(|m| m <= img.ops_applied))
            .unwrap() as u64
            + 1;
        let newest_started = history
            .iter()
            .rposition(|c| c.sb_written_at <= img.ops_applied)
            .unwrap() as u64
            + 1;
        let sb = read_superblock(&img.image).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            sb.generation >= newest_returned && sb.generation <= newest_started,
            "{what}: generation {} outside {newest_returned}..={newest_started}",
            sb.generation
        );
        let state = &history[(sb.generation - 1) as usize];
        assert_eq!(sb.root_tree.bytenr, state.logical, "{what}");
        let map = sb.bootstrap_chunk_map().unwrap();
        let io = DataIo::new(&img.image, &map, sb.sector_size).unwrap();
        let got = io
            .read(
                state.logical,
                0,
                state.plaintext.len(),
                Some(&ToyCrypt),
                Some(&state.csums),
                None,
            )
            .unwrap_or_else(|e| panic!("{what}: generation {}: {e}", sb.generation));
        assert!(
            got == state.plaintext,
            "{what}: state of generation {}",
            sb.generation
        );
        generations_seen.insert(sb.generation);
        seen[match img.kind {
            CrashKind::Prefix => 0,
            CrashKind::TornWrite => 1,
            CrashKind::Reordered => 2,
        }] += 1;
    }
    assert_eq!(seen[0], log.len() + 1);
    assert!(seen[1] > 0 && seen[2] > 0, "{seen:?}");
    // Every generation was the answer for some crash point.
    assert_eq!(generations_seen.len(), history.len());
}
