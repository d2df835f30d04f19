//! Chunk mapping decoding never panics; decoded mappings round-trip; a chunk map built from any
//! sequence of them never holds overlapping chunks and translates each chunk's own range.
#![no_main]

use libfuzzer_sys::fuzz_target;
use store::chunk::{ChunkMap, ChunkMapping};

fuzz_target!(|data: &[u8]| {
    let _ = ChunkMapping::decode(data);
    let mut map = ChunkMap::new();
    for piece in data.chunks(ChunkMapping::ENCODED_SIZE) {
        if let Ok(m) = ChunkMapping::decode(piece) {
            assert_eq!(ChunkMapping::decode(&m.encode()).expect("round trip"), m);
            let _ = map.insert(m);
        }
    }
    let all: Vec<ChunkMapping> = map.iter().copied().collect();
    for (i, a) in all.iter().enumerate() {
        assert_eq!(
            map.to_physical(a.logical, a.length)
                .expect("own range maps"),
            a.physical
        );
        assert_eq!(map.lookup_physical(a.physical).expect("physical lookup"), a);
        for b in &all[i + 1..] {
            assert!(a.logical_end() <= b.logical || b.logical_end() <= a.logical);
            assert!(a.physical_end() <= b.physical || b.physical_end() <= a.physical);
        }
    }
    let _ = map.free_physical_ranges(u64::MAX, 0);
});
