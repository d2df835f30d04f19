//! POSIX ACL xattr decoding on arbitrary bytes: errors, never panics; what decodes re-encodes to
//! an ACL that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(acl) = cowfs::acl::Acl::decode(data) {
        let again = cowfs::acl::Acl::decode(&acl.encode()).expect("re-encoded ACL decodes");
        assert_eq!(again, acl);
    }
});
