//! What several store tests share: a stand-in cipher for the data path.
#![allow(dead_code)]

use store::data_io::{CryptError, DataCrypt};

/// A test-only cipher: XOR with a byte derived from each data unit's number, so every unit
/// (and so its position inside the extent) changes the stored bytes.
pub struct ToyCrypt;

impl ToyCrypt {
    fn xor(first: u64, buf: &mut [u8]) {
        for (i, unit) in buf.chunks_mut(4096).enumerate() {
            let key = (first + i as u64).wrapping_mul(0x9e37_79b9) as u8 | 1;
            unit.iter_mut().for_each(|b| *b ^= key);
        }
    }
}

impl DataCrypt for ToyCrypt {
    fn data_unit_size(&self) -> usize {
        4096
    }
    fn encrypt(&self, first: u64, buf: &mut [u8]) -> Result<(), CryptError> {
        Self::xor(first, buf);
        Ok(())
    }
    fn decrypt(&self, first: u64, buf: &mut [u8]) -> Result<(), CryptError> {
        Self::xor(first, buf);
        Ok(())
    }
}
