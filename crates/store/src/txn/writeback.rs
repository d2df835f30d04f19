//! Writing a commit's nodes: encoded in address order into one buffer per run of adjacent
//! blocks and written with one request per run.
//!
//! Allocation is next-fit, so a commit's new blocks mostly sit side by side; writing each run
//! with one request instead of one per node saves a system call (and a trip through the page
//! cache's locking) per node. A run ends where the next node is not the next block in logical
//! and in physical space, or at [`MAX_RUN`] bytes so the buffer stays small.

use std::sync::Arc;

use crate::chunk::ChunkMap;
use crate::device::BlockDevice;
use crate::error::Result;
use crate::node::Node;

/// The largest single write.
pub(crate) const MAX_RUN: usize = 1 << 20;

/// Writes `nodes` (each `node_size` bytes at its logical address) and returns the forms to keep
/// in the node cache once the commit is durable.
pub(crate) fn write_nodes(
    dev: &dyn BlockDevice,
    chunks: &ChunkMap,
    fs_uuid: &[u8; 16],
    node_size: usize,
    mut nodes: Vec<Arc<Node>>,
) -> Result<Vec<Arc<Node>>> {
    nodes.sort_unstable_by_key(|n| n.bytenr);
    let per_run = (MAX_RUN / node_size).max(1);
    let mut buf = vec![0u8; node_size * per_run.min(nodes.len().max(1))];
    let mut cached = Vec::with_capacity(nodes.len());
    let mut i = 0;
    while i < nodes.len() {
        let first = &nodes[i];
        let physical = chunks.to_physical(first.bytenr, node_size as u64)?;
        // Extend the run while the next node is the next block, logically and physically (a
        // chunk boundary may break physical adjacency).
        let mut end = i + 1;
        while end < nodes.len() && end - i < per_run {
            let off = ((end - i) * node_size) as u64;
            let adjacent = nodes[end].bytenr == first.bytenr + off
                && chunks.to_physical(nodes[end].bytenr, node_size as u64)? == physical + off;
            if !adjacent {
                break;
            }
            end += 1;
        }
        let run = &mut buf[..(end - i) * node_size];
        for (n, out) in nodes[i..end].iter().zip(run.chunks_exact_mut(node_size)) {
            n.encode_into(fs_uuid, out)?;
            cached.push(Arc::new(n.cached_form(out)));
        }
        dev.write_at(run, physical)?;
        i = end;
    }
    Ok(cached)
}
