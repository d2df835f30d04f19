//! The one checksum of the store: CRC-32C over metadata nodes, superblocks and data sectors.
//!
//! Keeping it in one place means changing the algorithm is a format version bump and one edit.
//! CRC-32C detects the corruption we care about (torn writes, bit rot, misdirected blocks) and the
//! `crc32c` crate picks SSE4.2 at run time. It is not a MAC: authentication of encrypted data is
//! the crypt layer's job, above the store.

/// Bytes a checksum takes on disk.
pub const CSUM_SIZE: usize = 4;

/// The checksum of `data`.
pub fn checksum(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// The checksum of several pieces taken as one contiguous buffer, without joining them.
pub fn checksum_parts(parts: &[&[u8]]) -> u32 {
    parts
        .iter()
        .fold(0, |crc, part| crc32c::crc32c_append(crc, part))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        // RFC 3720 appendix B.4: 32 bytes of zeros.
        assert_eq!(checksum(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(checksum(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn parts_equal_whole() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        assert_eq!(
            checksum_parts(&[&data[..10], &data[10..500], &data[500..]]),
            checksum(&data)
        );
        assert_ne!(checksum(&data[..999]), checksum(&data));
    }
}
