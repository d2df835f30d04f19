//! Decoding an encrypted symlink blob never panics: with a key (decrypt) or without (the no-key
//! form), for any blob and any size limit.
#![no_main]

use fscrypt::FilenamesMode;
use fscrypt::fname::FilenameCipher;
use fscrypt::iv::FscryptIv;
use fscrypt::symlink;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&control, blob)) = data.split_first() else {
        return;
    };
    let max = usize::from(control) * 16 + 1;
    let _ = symlink::nokey_target(blob, max);
    let mode = if control & 1 == 0 {
        FilenamesMode::Aes256Cts
    } else {
        FilenamesMode::Aes256Hctr2
    };
    let cipher = FilenameCipher::new(mode, &[0x42; 32], &FscryptIv::from_index(0)).expect("valid key");
    if let Ok(target) = symlink::decrypt_target(&cipher, blob, max) {
        assert!(!target.is_empty());
    }
});
