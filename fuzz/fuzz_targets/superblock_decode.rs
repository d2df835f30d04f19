//! Superblock decoding never panics, and whatever decodes re-encodes to a copy that decodes to
//! the same superblock.
//!
//! Input: one control byte, then the copy. Control bits 0-1 pick the copy's offset; bit 7 asks
//! the target to zero-extend the copy to full size and forge a valid frame (magic, recorded
//! offset, checksum), so the fuzzer reaches the field checks instead of stopping at the checksum.
#![no_main]

use libfuzzer_sys::fuzz_target;
use store::checksum::checksum;
use store::superblock::{MAGIC, SUPERBLOCK_OFFSETS, SUPERBLOCK_SIZE, Superblock};

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let offset = SUPERBLOCK_OFFSETS[usize::from(control & 3) % SUPERBLOCK_OFFSETS.len()];
    let mut copy = rest.to_vec();
    if control & 0x80 != 0 {
        // Short inputs are zero-extended: most fields are valid as zeros or small values.
        copy.resize(SUPERBLOCK_SIZE, 0);
        copy[0..8].copy_from_slice(&MAGIC);
        copy[16..24].copy_from_slice(&offset.to_le_bytes());
        let csum = checksum(&copy[12..]);
        copy[8..12].copy_from_slice(&csum.to_le_bytes());
    }
    if let Ok(sb) = Superblock::decode(&copy, offset) {
        let again = sb.encode_for(offset).expect("a decoded superblock encodes");
        assert_eq!(Superblock::decode(&again, offset).expect("re-decodes"), sb);
    }
});
