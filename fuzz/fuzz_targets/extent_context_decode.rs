//! Extent context decoding never panics, and whatever decodes re-encodes to the same bytes.
#![no_main]

use fscrypt::extent::ExtentContext;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ctx) = ExtentContext::decode(data) {
        assert_eq!(&ctx.encode()[..], data);
    }
});
