//! Hostile images at the device level: random bit flips across an image holding superblocks and
//! checksummed (encrypted and plain) extents. Every read returns the right bytes or an error:
//! the superblock reader returns the superblock that was written or refuses; an extent read
//! returns its plaintext or a checksum error, and always the error when its bytes changed.
//!
//! COWCRYPT_HOSTILE_ROUNDS scales the number of damaged images (default 400).

use store::chunk::{ChunkKind, ChunkMap, ChunkMapping, FIRST_LOGICAL, PHYSICAL_START};
use store::crash::{SplitMix64, flip_random_bits};
use store::data_io::{CryptError, DataCrypt, DataIo};
use store::superblock::{
    SUPERBLOCK_OFFSETS, Superblock, TreeRoot, read_superblock, write_superblocks,
};
use store::{Error, MemDevice};

const CHUNK_LEN: u64 = 512 << 10;
const DEVICE_SIZE: u64 = PHYSICAL_START + CHUNK_LEN;

struct ToyCrypt;

impl DataCrypt for ToyCrypt {
    fn data_unit_size(&self) -> usize {
        4096
    }
    fn encrypt(&self, first: u64, buf: &mut [u8]) -> Result<(), CryptError> {
        for (i, unit) in buf.chunks_mut(4096).enumerate() {
            let k = (first + i as u64) as u8 ^ 0xa7;
            unit.iter_mut().for_each(|b| *b ^= k);
        }
        Ok(())
    }
    fn decrypt(&self, first: u64, buf: &mut [u8]) -> Result<(), CryptError> {
        self.encrypt(first, buf)
    }
}

struct Extent {
    logical: u64,
    plaintext: Vec<u8>,
    csums: Vec<u32>,
    encrypted: bool,
}

#[test]
fn random_bit_flips_give_right_data_or_errors() {
    let rounds: u64 = std::env::var("COWCRYPT_HOSTILE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let mut rng = SplitMix64::new(0xbad_1a6e);
    let chunk = ChunkMapping {
        logical: FIRST_LOGICAL,
        length: CHUNK_LEN,
        physical: PHYSICAL_START,
        kind: ChunkKind::Data,
    };
    let mut chunks = ChunkMap::new();
    chunks.insert(chunk).unwrap();

    let dev = MemDevice::new(DEVICE_SIZE as usize);
    let mut extents = Vec::new();
    let mut next = FIRST_LOGICAL;
    {
        let io = DataIo::new(&dev, &chunks, 4096).unwrap();
        for i in 0..24 {
            let mut plaintext = vec![0u8; 4096 * (1 + rng.below(4) as usize)];
            rng.fill(&mut plaintext);
            let encrypted = i % 3 != 0;
            let crypt: Option<&dyn DataCrypt> = if encrypted { Some(&ToyCrypt) } else { None };
            let csums = io.write(next, 0, &plaintext, crypt).unwrap().checksums;
            extents.push(Extent {
                logical: next,
                plaintext,
                csums,
                encrypted,
            });
            next += 16 << 10;
        }
    }
    let mut sb = Superblock::new([9; 16], DEVICE_SIZE);
    sb.generation = 12;
    sb.label = "hostile".into();
    sb.root_tree = TreeRoot {
        bytenr: FIRST_LOGICAL,
        generation: 11,
        level: 2,
    };
    sb.system_chunks = vec![chunk];
    write_superblocks(&dev, &sb).unwrap();
    let pristine = dev.snapshot();
    assert_eq!(read_superblock(&dev).unwrap(), sb);

    let sb_area = SUPERBLOCK_OFFSETS[0] as usize..(SUPERBLOCK_OFFSETS[1] as usize + 4096);
    let data_area = PHYSICAL_START as usize..DEVICE_SIZE as usize;
    let (mut sb_refused, mut extents_refused, mut extents_read) = (0, 0, 0);
    for round in 0..rounds {
        let mut image = pristine.clone();
        let flips = 1 + rng.below(if round % 10 == 0 { 20_000 } else { 64 }) as usize;
        let seed = rng.next_u64();
        match round % 3 {
            0 => flip_random_bits(&mut image, flips, seed),
            1 => flip_random_bits(&mut image[sb_area.clone()], flips, seed),
            _ => flip_random_bits(&mut image[data_area.clone()], flips, seed),
        };
        let damaged = MemDevice::from_bytes(image.clone());

        match read_superblock(&damaged) {
            Ok(found) => assert_eq!(found, sb, "round {round}"),
            Err(Error::NoValidSuperblock { .. }) => sb_refused += 1,
            Err(e) => panic!("round {round}: unexpected error {e}"),
        }

        let io = DataIo::new(&damaged, &chunks, 4096).unwrap();
        for e in &extents {
            let crypt: Option<&dyn DataCrypt> = if e.encrypted { Some(&ToyCrypt) } else { None };
            let physical = chunks.to_physical(e.logical, 1).unwrap() as usize;
            let range = physical..physical + e.plaintext.len();
            let changed = image[range.clone()] != pristine[range];
            match io.read(e.logical, 0, e.plaintext.len(), crypt, Some(&e.csums), None) {
                Ok(got) => {
                    assert!(
                        !changed,
                        "round {round}: damage at {} not detected",
                        e.logical
                    );
                    assert!(
                        got == e.plaintext,
                        "round {round}: wrong data at {}",
                        e.logical
                    );
                    extents_read += 1;
                }
                Err(Error::ChecksumMismatch { logical, .. }) => {
                    assert!(changed, "round {round}: false alarm at {}", e.logical);
                    assert!(logical >= e.logical && logical < e.logical + e.plaintext.len() as u64);
                    extents_refused += 1;
                }
                Err(other) => panic!("round {round}: unexpected error {other}"),
            }
        }
    }
    // The damage really reached both kinds of structure.
    assert!(sb_refused > 0 && extents_refused > 0 && extents_read > 0);
}
