//! Every fs item decoder on arbitrary bytes: errors, never panics. The first byte picks the item
//! type, the next eight the key offset (hashes and indexes are checked against it).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((head, value)) = data.split_at_checked(9) else {
        return;
    };
    let mut off = [0u8; 8];
    off.copy_from_slice(&head[1..9]);
    let key = store::Key::new(3, head[0] & 0x7f, u64::from_le_bytes(off));
    let _ = cowfs::items::decode_any(&key, value);
});
