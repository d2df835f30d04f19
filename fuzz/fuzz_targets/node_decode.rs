//! Tree node decoding never panics, and whatever decodes re-encodes to a node that decodes to
//! the same node.
//!
//! Input: one control byte, then the node (zero-extended or cut to 4096 bytes). Control bits 0-1
//! give the level the reader expects; bit 7 asks the target to forge a valid header (version,
//! uuid, address, generation, level, checksum) so the fuzzer reaches the item checks instead of
//! stopping at the checksum.
#![no_main]

use libfuzzer_sys::fuzz_target;
use store::checksum::checksum;
use store::node::{Expect, Node};

const NODE: usize = 4096;
const UUID: [u8; 16] = [0x5a; 16];

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let level = control & 3;
    let mut buf = rest.to_vec();
    buf.resize(NODE, 0);
    let expect = Expect {
        fs_uuid: UUID,
        bytenr: 1 << 20,
        generation: 7,
        level,
    };
    if control & 0x80 != 0 {
        buf[4] = 1;
        buf[5] = 0;
        buf[6] = level;
        buf[7] = 0;
        buf[8..24].copy_from_slice(&UUID);
        buf[24..32].copy_from_slice(&expect.bytenr.to_le_bytes());
        buf[32..40].copy_from_slice(&expect.generation.to_le_bytes());
        buf[52..64].fill(0);
        let csum = checksum(&buf[4..]);
        buf[0..4].copy_from_slice(&csum.to_le_bytes());
    }
    if let Ok(node) = Node::decode(&buf, &expect) {
        let again = node.encode(&UUID, NODE).expect("a decoded node encodes");
        assert_eq!(Node::decode(&again, &expect).expect("re-decodes"), node);
    }
});
