//! Control channel frames from any client: decoding never panics, and what decodes re-encodes
//! to a frame that decodes to the same message.
#![no_main]

use cowfs::control::{Request, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Request::decode(data)
        && let Ok(f) = r.encode()
    {
        assert_eq!(Request::decode(&f).unwrap(), r);
    }
    if let Ok(r) = Response::decode(data)
        && let Ok(f) = r.encode()
    {
        assert_eq!(Response::decode(&f).unwrap(), r);
    }
});
