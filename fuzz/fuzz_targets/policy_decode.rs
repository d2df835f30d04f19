//! Policy and inode context decoding never panics, and whatever decodes re-encodes to the same
//! bytes (both structures are fixed-size and canonical).
#![no_main]

use fscrypt::PolicyV2;
use fscrypt::context::InodeContext;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(policy) = PolicyV2::decode(data) {
        assert_eq!(&policy.encode()[..], data);
    }
    if let Ok(ctx) = InodeContext::decode(data) {
        assert_eq!(&ctx.encode()[..], data);
    }
});
