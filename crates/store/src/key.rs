//! Item keys: (object id, item type, offset), ordered in that order, as btrfs keys are. Every
//! tree (root tree, extent tree, free-space tree, subvolume trees) stores items under these keys;
//! the item type says how the value is encoded, and the well-known tree ids live here too.

use std::fmt;

/// Tree ids of the store's own trees. Subvolume trees use ids from [`FIRST_SUBVOL_TREE`] up.
pub mod tree_id {
    /// Maps tree id -> root item (the roots of every other tree).
    pub const ROOT_TREE: u64 = 1;
    /// Reference counts of shared tree blocks and data extents, with back-references.
    pub const EXTENT_TREE: u64 = 2;
    /// Chunk mappings (logical -> physical).
    pub const CHUNK_TREE: u64 = 3;
    /// Free space per chunk, so a mount never scans the extent tree.
    pub const FREE_SPACE_TREE: u64 = 4;
    /// Data checksums (kept by the layer above).
    pub const CSUM_TREE: u64 = 5;
    /// A tree the layer above owns for its own index (cowfs: its subvolumes). The store keeps it
    /// like any tree and never reads its items.
    pub const UPPER_INDEX_TREE: u64 = 7;
    /// The first subvolume tree; only trees from here up may be snapshotted.
    pub const FIRST_SUBVOL_TREE: u64 = 256;
}

/// Item types the store itself defines. The layer above defines its own in 1..=127; the store
/// keeps 128..=255.
pub mod item_type {
    /// Root tree: (tree id, ROOT_ITEM, 0) -> root item.
    pub const ROOT_ITEM: u8 = 132;
    /// Root tree: ([`super::objectid::DROP_QUEUE`], DROP_ITEM, sequence) -> a tree dropped in
    /// the background: its root and how far its blocks have been released.
    pub const DROP_ITEM: u8 = 134;
    /// Extent tree: (bytenr, TREE_BLOCK_REF, 0) -> u64 refcount of a tree block shared by more
    /// than one parent. Absent means a count of one.
    pub const TREE_BLOCK_REF: u8 = 169;
    /// Extent tree: (bytenr, EXTENT_ITEM, length) -> data extent item (total refs, flags).
    pub const EXTENT_ITEM: u8 = 168;
    /// Extent tree: (bytenr, EXTENT_DATA_REF, hash of owner) -> back-reference to one owner.
    pub const EXTENT_DATA_REF: u8 = 178;
    /// Chunk tree: (logical, CHUNK_ITEM, length) -> encoded chunk mapping.
    pub const CHUNK_ITEM: u8 = 228;
    /// Free-space tree: (start, FREE_SPACE_EXTENT, length) -> empty.
    pub const FREE_SPACE_EXTENT: u8 = 199;
}

/// Object ids of items that belong to no tree or inode.
pub mod objectid {
    /// The root tree's queue of trees being dropped in the background, keyed by sequence.
    pub const DROP_QUEUE: u64 = 6;
}

/// The key of one item. Ordered by object id, then item type, then offset.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Key {
    pub objectid: u64,
    pub item_type: u8,
    pub offset: u64,
}

impl Key {
    /// Bytes of an encoded key.
    pub const ENCODED_SIZE: usize = 17;
    /// The smallest key.
    pub const MIN: Key = Key::new(0, 0, 0);
    /// The largest key.
    pub const MAX: Key = Key::new(u64::MAX, u8::MAX, u64::MAX);

    pub const fn new(objectid: u64, item_type: u8, offset: u64) -> Key {
        Key {
            objectid,
            item_type,
            offset,
        }
    }

    /// objectid (u64 LE), item type (u8), offset (u64 LE).
    pub fn encode(&self) -> [u8; Self::ENCODED_SIZE] {
        let mut b = [0u8; Self::ENCODED_SIZE];
        b[0..8].copy_from_slice(&self.objectid.to_le_bytes());
        b[8] = self.item_type;
        b[9..17].copy_from_slice(&self.offset.to_le_bytes());
        b
    }

    /// Decodes the first [`Key::ENCODED_SIZE`] bytes of `b`; `None` if `b` is shorter.
    pub fn decode(b: &[u8]) -> Option<Key> {
        let b = b.get(..Self::ENCODED_SIZE)?;
        let mut id = [0u8; 8];
        id.copy_from_slice(&b[0..8]);
        let mut off = [0u8; 8];
        off.copy_from_slice(&b[9..17]);
        Some(Key::new(
            u64::from_le_bytes(id),
            b[8],
            u64::from_le_bytes(off),
        ))
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({} {} {})", self.objectid, self.item_type, self.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn encode_round_trips(a in any::<u64>(), t in any::<u8>(), o in any::<u64>()) {
            let k = Key::new(a, t, o);
            prop_assert_eq!(Key::decode(&k.encode()), Some(k));
        }

        #[test]
        fn order_is_field_order(a: (u64, u8, u64), b: (u64, u8, u64)) {
            let (ka, kb) = (Key::new(a.0, a.1, a.2), Key::new(b.0, b.1, b.2));
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
        }
    }

    #[test]
    fn short_input_is_refused() {
        assert_eq!(Key::decode(&[0u8; 16]), None);
        assert!(Key::MIN < Key::new(0, 0, 1) && Key::new(1, 0, 0) > Key::new(0, 255, u64::MAX));
        assert_eq!(Key::decode(&Key::MAX.encode()), Some(Key::MAX));
    }
}
