//! No-key name decoding never panics; a decoded name matches the disk name it carries, and a
//! full (unabbreviated) name re-encodes to the input.
#![no_main]

use fscrypt::nokey::{self, NoKeyName};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(name) = NoKeyName::decode(data) {
        if let Some(disk) = name.disk_name() {
            assert!(name.matches(disk));
        }
        let _ = name.is_abbreviated();
    }
    if let Some(bytes) = nokey::base64url_decode(data) {
        assert_eq!(nokey::base64url_decode(nokey::base64url_encode(&bytes).as_bytes()), Some(bytes));
    }
});
