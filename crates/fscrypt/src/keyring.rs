//! The keyring of one filesystem: its master keys, each user's claims on them, the removal
//! states PRESENT / INCOMPLETELY_REMOVED / ABSENT, the pins open files hold, and the bounded cache
//! of keys derived from master keys.
//!
//! Semantics follow Linux's `fs/crypto/keyring.c` (FSCRYPT.md §7) with the per-extent rule of the
//! btrfs v7 series (§9.4 "Key removal"): removing the last claim stops *new* unlocks at once, but
//! the master secret stays while any pin remains, because an open file must still derive keys for
//! the new extents it writes. When the last pin of a removed key goes, the secret and every cached
//! key derived from it are dropped (each zeroizes itself) and the key leaves the keyring. A key
//! made for one use (a new extent's, for its flush) is counted among the live derived keys but
//! never cached, so writes do not push out the keys reads use.
//!
//! Everything sits behind one mutex: keyring operations are rare next to I/O, and one lock keeps
//! claims, pins and the cache consistent with each other. Values are dropped only after the lock
//! is released, so no foreign `Drop` runs under it.

use std::any::{Any, TypeId};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use crate::error::{Error, Result};
use crate::master_key::{KeyIdentifier, MasterKey};

/// A user id (the caller's fsuid in Linux).
pub type Uid = u32;

/// Cached derived keys a [`Keyring::default`] keeps.
pub const DEFAULT_DERIVED_CACHE_CAPACITY: usize = 1024;
/// Claims one unprivileged user may hold by default. Linux charges 64 bytes of the user's key
/// quota per claim; with the default 20000-byte quota of `/proc/sys/kernel/keys/maxbytes` that is
/// a little over 300 claims, less whatever else the user keeps in keyrings.
pub const DEFAULT_CLAIM_LIMIT: usize = 200;
/// Longest `info` of a [`DerivedSlot`]: enough for an extent or file nonce, or a mode and a UUID.
pub const MAX_DERIVED_INFO: usize = 32;

/// What FS_IOC_GET_ENCRYPTION_KEY_STATUS reports as `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Not in the keyring (or fully removed).
    Absent,
    /// In the keyring with at least one claim; inodes can be unlocked with it.
    Present,
    /// Every claim removed but files still pin it; no new unlocks.
    IncompletelyRemoved,
}

/// The answer of [`Keyring::key_status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyStatus {
    pub state: KeyState,
    /// Number of users with a claim (0 unless PRESENT, as in Linux).
    pub user_count: u32,
    /// The caller holds a claim (FSCRYPT_KEY_STATUS_FLAG_ADDED_BY_SELF).
    pub added_by_self: bool,
}

/// The status flags of a successful removal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RemovalStatus {
    /// Only the caller's claim went; other users still hold the key, which stays PRESENT.
    pub other_users: bool,
    /// Claims are gone but open files still pin the key: it is INCOMPLETELY_REMOVED.
    pub files_busy: bool,
}

/// Whose claims a removal drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemovalScope {
    /// FS_IOC_REMOVE_ENCRYPTION_KEY: the caller's own claim.
    OwnClaim,
    /// FS_IOC_REMOVE_ENCRYPTION_KEY_ALL_USERS: every claim; needs CAP_SYS_ADMIN.
    AllUsers,
}

/// Who is asking: uid and whether they hold CAP_SYS_ADMIN (root).
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: Uid,
    pub is_admin: bool,
}

/// Names one derived key of a master key: the HKDF context byte and its info (e.g. an extent
/// nonce), at most [`MAX_DERIVED_INFO`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DerivedSlot {
    pub context: u8,
    pub info: Vec<u8>,
}

/// Counters for tests and leak checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyringStats {
    /// Keys in the keyring, PRESENT or INCOMPLETELY_REMOVED.
    pub keys: usize,
    /// Master secrets this keyring installed that are still alive anywhere in the process.
    pub secrets_present: usize,
    /// Pins held, over all keys.
    pub pins: usize,
    /// Derived keys in the cache.
    pub derived_cached: usize,
    /// Derived keys made through [`UnlockedKey::derived`] still alive anywhere (cache or callers).
    pub derived_live: usize,
    /// Cached derived keys dropped because their master key went.
    pub derived_wiped_total: u64,
}

/// The keyring of one filesystem. Cheap to share by reference; `Send + Sync`.
pub struct Keyring {
    shared: Arc<Shared>,
}

/// One pin on a master key, held by each open file or unlocked inode. `Clone` takes another pin;
/// dropping it unpins, and the last unpin of a removed key wipes it.
pub struct UnlockedKey {
    shared: Arc<Shared>,
    identifier: KeyIdentifier,
    generation: u64,
    key: Arc<MasterKey>,
}

impl Default for Keyring {
    fn default() -> Self {
        Keyring::new(DEFAULT_DERIVED_CACHE_CAPACITY)
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Keyring {
    /// An empty keyring whose derived-key cache holds at most `derived_cache_capacity` keys
    /// (0 disables caching; derived keys are then made afresh on every call).
    pub fn new(derived_cache_capacity: usize) -> Self {
        Keyring {
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner {
                    keys: HashMap::new(),
                    claims_per_uid: HashMap::new(),
                    claim_limit: DEFAULT_CLAIM_LIMIT,
                    next_generation: 0,
                    cache: DerivedCache::new(derived_cache_capacity),
                    secrets: LiveSet::default(),
                    derived_live: LiveSet::default(),
                    derived_wiped_total: 0,
                }),
                file_locker: Mutex::new(None),
            }),
        }
    }

    /// Sets how many claims one unprivileged user may hold (EDQUOT beyond). Admins are unlimited.
    pub fn with_claim_limit(self, limit: usize) -> Self {
        self.shared.lock().claim_limit = limit;
        self
    }

    /// FS_IOC_ADD_ENCRYPTION_KEY: adds `key`, or the caller's claim on it, and returns its
    /// identifier. Supplying the key is the proof of knowledge: its identifier must match.
    /// A key INCOMPLETELY_REMOVED becomes PRESENT again. A caller who already claims it changes
    /// nothing.
    pub fn add_key(&self, key: MasterKey, caller: Caller) -> Result<KeyIdentifier> {
        let identifier = key.identifier();
        let mut inner = self.shared.lock();
        let claim_limit = inner.claim_limit;
        let held = inner.claims_per_uid.get(&caller.uid).copied().unwrap_or(0);
        let claimed = inner
            .keys
            .get(&identifier)
            .is_some_and(|entry| entry.claims.contains(&caller.uid));
        if claimed {
            return Ok(identifier);
        }
        if !caller.is_admin && held >= claim_limit {
            return Err(Error::QuotaExceeded);
        }
        if !inner.keys.contains_key(&identifier) {
            let key = Arc::new(key);
            let erased: Arc<dyn Any + Send + Sync> = key.clone();
            inner.secrets.register(&erased);
            let generation = inner.next_generation;
            inner.next_generation += 1;
            inner.keys.insert(
                identifier,
                KeyEntry {
                    key,
                    claims: BTreeSet::new(),
                    pins: 0,
                    generation,
                },
            );
        }
        // An INCOMPLETELY_REMOVED key kept its secret (the per-extent rule), and the supplied key
        // has the same identifier, so the same secret: adding the claim is what restores it.
        if let Some(entry) = inner.keys.get_mut(&identifier) {
            entry.claims.insert(caller.uid);
        }
        *inner.claims_per_uid.entry(caller.uid).or_insert(0) += 1;
        Ok(identifier)
    }

    /// FS_IOC_REMOVE_ENCRYPTION_KEY (`OwnClaim`) or `_ALL_USERS` (`AllUsers`, admin only).
    ///
    /// Errors: `PermissionDenied` for `AllUsers` without admin; `NoKey` if the key is absent, or
    /// the caller has no claim while others do. When claims remain, reports `other_users`. When
    /// none remain, first lets the filesystem drop idle pins (see [`Keyring::set_file_locker`]);
    /// if pins still remain, reports `files_busy` (INCOMPLETELY_REMOVED). Calling again retries
    /// the same way. The last pin to go removes the key by itself (ABSENT; a removal after that
    /// gets `NoKey`, as in Linux).
    pub fn remove_key(
        &self,
        id: &KeyIdentifier,
        caller: Caller,
        scope: RemovalScope,
    ) -> Result<RemovalStatus> {
        if scope == RemovalScope::AllUsers && !caller.is_admin {
            return Err(Error::PermissionDenied(
                "removing a key for all users needs CAP_SYS_ADMIN",
            ));
        }
        let mut garbage = Garbage::default();
        let busy_generation = {
            let mut inner = self.shared.lock();
            let Inner {
                keys,
                claims_per_uid,
                ..
            } = &mut *inner;
            let entry = keys.get_mut(id).ok_or(Error::NoKey)?;
            let dropped: Vec<Uid> = match scope {
                RemovalScope::OwnClaim if entry.claims.remove(&caller.uid) => vec![caller.uid],
                // No claim of one's own while others hold theirs: the caller may not know the key.
                RemovalScope::OwnClaim if !entry.claims.is_empty() => return Err(Error::NoKey),
                // No claims at all: a retry of a busy removal, open to anyone (as in Linux).
                RemovalScope::OwnClaim => Vec::new(),
                RemovalScope::AllUsers => std::mem::take(&mut entry.claims).into_iter().collect(),
            };
            for uid in dropped {
                release_claim(claims_per_uid, uid);
            }
            if !entry.claims.is_empty() {
                return Ok(RemovalStatus {
                    other_users: true,
                    files_busy: false,
                });
            }
            if entry.pins == 0 {
                garbage = inner.evict_key(id);
                None
            } else {
                Some(entry.generation)
            }
        };
        drop(garbage);
        let Some(generation) = busy_generation else {
            return Ok(RemovalStatus::default());
        };
        // Linux's step 4: ask the filesystem to let go of idle inodes, then count what is left.
        // The hook runs without the lock, since it drops pins, and dropping the last one finishes
        // the removal by itself.
        let locker = self.shared.file_locker();
        if let Some(locker) = locker {
            locker(id);
        }
        let still_pinned = self
            .shared
            .lock()
            .keys
            .get(id)
            .is_some_and(|entry| entry.generation == generation && entry.pins > 0);
        Ok(RemovalStatus {
            other_users: false,
            files_busy: still_pinned,
        })
    }

    /// Installs the filesystem's hook that [`Keyring::remove_key`] calls, without the keyring's
    /// lock, once a key has no claims left but is still pinned: the hook should drop the pins of
    /// inodes that are unlocked but not in use (Linux syncs and prunes dentries here), so that
    /// only truly open files keep the key INCOMPLETELY_REMOVED. It must not call back into
    /// `remove_key`, and should hold the filesystem weakly (a strong reference to whatever owns
    /// this keyring would be a cycle). Replaces any earlier hook.
    pub fn set_file_locker(&self, locker: impl Fn(&KeyIdentifier) + Send + Sync + 'static) {
        *self
            .shared
            .file_locker
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(locker));
    }

    /// FS_IOC_GET_ENCRYPTION_KEY_STATUS for `caller`.
    pub fn key_status(&self, id: &KeyIdentifier, caller: Caller) -> KeyStatus {
        let inner = self.shared.lock();
        match inner.keys.get(id) {
            None => KeyStatus {
                state: KeyState::Absent,
                user_count: 0,
                added_by_self: false,
            },
            Some(entry) if entry.claims.is_empty() => KeyStatus {
                state: KeyState::IncompletelyRemoved,
                user_count: 0,
                added_by_self: false,
            },
            Some(entry) => KeyStatus {
                state: KeyState::Present,
                user_count: u32::try_from(entry.claims.len()).unwrap_or(u32::MAX),
                added_by_self: entry.claims.contains(&caller.uid),
            },
        }
    }

    /// Unlocks with the key: what opening or looking up an inode that uses it does. Takes a pin.
    /// `NoKey` unless the key is PRESENT: an INCOMPLETELY_REMOVED key unlocks nothing new.
    pub fn unlock(&self, id: &KeyIdentifier) -> Result<UnlockedKey> {
        let mut inner = self.shared.lock();
        let entry = inner.keys.get_mut(id).ok_or(Error::NoKey)?;
        if entry.claims.is_empty() {
            return Err(Error::NoKey);
        }
        entry.pins += 1;
        Ok(UnlockedKey {
            shared: Arc::clone(&self.shared),
            identifier: *id,
            generation: entry.generation,
            key: Arc::clone(&entry.key),
        })
    }

    /// Counters for tests and leak checks.
    pub fn stats(&self) -> KeyringStats {
        let mut inner = self.shared.lock();
        KeyringStats {
            keys: inner.keys.len(),
            secrets_present: inner.secrets.live(),
            pins: inner.keys.values().map(|entry| entry.pins).sum(),
            derived_cached: inner.cache.len(),
            derived_live: inner.derived_live.live(),
            derived_wiped_total: inner.derived_wiped_total,
        }
    }
}

impl UnlockedKey {
    /// The identifier of the pinned master key.
    pub fn identifier(&self) -> KeyIdentifier {
        self.identifier
    }

    /// Whether removal of this key has started (INCOMPLETELY_REMOVED): its last pins are
    /// what it waits for.
    pub fn is_being_removed(&self) -> bool {
        self.shared
            .lock()
            .keys
            .get(&self.identifier)
            .is_none_or(|entry| entry.generation != self.generation || entry.claims.is_empty())
    }

    /// The master key, for deriving subkeys. Works while pinned, even once removal has started
    /// (INCOMPLETELY_REMOVED): open files keep deriving keys for the new extents they write.
    pub fn master_key(&self) -> &MasterKey {
        &self.key
    }

    /// The derived key named by `slot` (and by the type `T`), from the keyring's bounded cache,
    /// made by `derive` on a miss. `T` must wipe its secrets when dropped. The key lives while
    /// the cache or any caller holds it; the cache drops it when the master key goes.
    pub fn derived<T: Send + Sync + 'static>(
        &self,
        slot: &DerivedSlot,
        derive: impl FnOnce(&MasterKey) -> Result<T>,
    ) -> Result<Arc<T>> {
        check_slot(slot)?;
        let cache_key = CacheKey {
            identifier: self.identifier,
            slot: slot.clone(),
            type_id: TypeId::of::<T>(),
        };
        if let Some(hit) = self.shared.lock().cache.get(&cache_key) {
            return downcast(hit);
        }
        // Derive without the lock: `derive` is the caller's code. The pin we hold keeps the
        // master key, and so this slot's key, from being wiped meanwhile.
        let made: Arc<T> = Arc::new(derive(&self.key)?);
        let mut inner = self.shared.lock();
        if let Some(hit) = inner.cache.get(&cache_key) {
            // Another thread derived it first; share theirs, ours is dropped (wiped) below.
            drop(inner);
            drop(made);
            return downcast(hit);
        }
        let erased: Arc<dyn Any + Send + Sync> = made.clone();
        inner.derived_live.register(&erased);
        let evicted = inner.cache.insert(cache_key, erased);
        drop(inner);
        drop(evicted);
        Ok(made)
    }

    /// A derived key made for one use, not cached: a new extent's key, which encrypts the
    /// extent once when it is flushed. Caching it would cost a lookup structure update and an
    /// eviction per extent, and a flush of random writes makes thousands, pushing out the keys
    /// reads still use; a later read of the extent derives its key again through
    /// [`UnlockedKey::derived`]. Still counted in the live derived keys while it is held.
    pub fn derived_uncached<T: Send + Sync + 'static>(
        &self,
        slot: &DerivedSlot,
        derive: impl FnOnce(&MasterKey) -> Result<T>,
    ) -> Result<Arc<T>> {
        check_slot(slot)?;
        let made: Arc<T> = Arc::new(derive(&self.key)?);
        let erased: Arc<dyn Any + Send + Sync> = made.clone();
        self.shared.lock().derived_live.register(&erased);
        Ok(made)
    }
}

/// Refuses a slot whose info is longer than any fscrypt derivation uses.
fn check_slot(slot: &DerivedSlot) -> Result<()> {
    if slot.info.len() > MAX_DERIVED_INFO {
        return Err(Error::invalid(
            "derived key slot",
            format!(
                "info is {} bytes, at most {MAX_DERIVED_INFO}",
                slot.info.len()
            ),
        ));
    }
    Ok(())
}

impl Clone for UnlockedKey {
    fn clone(&self) -> Self {
        let mut inner = self.shared.lock();
        if let Some(entry) = inner.keys.get_mut(&self.identifier)
            && entry.generation == self.generation
        {
            entry.pins += 1;
        }
        UnlockedKey {
            shared: Arc::clone(&self.shared),
            identifier: self.identifier,
            generation: self.generation,
            key: Arc::clone(&self.key),
        }
    }
}

impl Drop for UnlockedKey {
    fn drop(&mut self) {
        let garbage = {
            let mut inner = self.shared.lock();
            let last_of_removed = match inner.keys.get_mut(&self.identifier) {
                // The entry lives while we pin it, so it is ours; the generation check only
                // guards against counting a pin on a later incarnation of the same key.
                Some(entry) if entry.generation == self.generation => {
                    entry.pins = entry.pins.saturating_sub(1);
                    entry.pins == 0 && entry.claims.is_empty()
                }
                _ => false,
            };
            if last_of_removed {
                // Linux: the last active ref of a key without a secret takes it off the keyring.
                inner.evict_key(&self.identifier)
            } else {
                Garbage::default()
            }
        };
        drop(garbage);
    }
}

impl fmt::Debug for UnlockedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UnlockedKey({}, redacted)", self.identifier)
    }
}

// ---------------------------------------------------------------------------------------------
// Internals.

/// What the filesystem does to drop idle pins of a key being removed.
type FileLocker = Arc<dyn Fn(&KeyIdentifier) + Send + Sync>;

struct Shared {
    inner: Mutex<Inner>,
    /// Kept apart from `inner` because it runs without that lock.
    file_locker: Mutex<Option<FileLocker>>,
}

impl Shared {
    /// Every update under the lock is completed before anything that could panic (no foreign
    /// code runs under it), so a poisoned lock still guards consistent state.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn file_locker(&self) -> Option<FileLocker> {
        self.file_locker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

struct Inner {
    keys: HashMap<KeyIdentifier, KeyEntry>,
    /// Claims each uid holds over all keys, for the quota.
    claims_per_uid: HashMap<Uid, usize>,
    claim_limit: usize,
    next_generation: u64,
    cache: DerivedCache,
    secrets: LiveSet,
    derived_live: LiveSet,
    derived_wiped_total: u64,
}

/// One master key in the keyring. PRESENT iff it has claims; without claims it stays only while
/// pinned (INCOMPLETELY_REMOVED).
struct KeyEntry {
    key: Arc<MasterKey>,
    claims: BTreeSet<Uid>,
    pins: usize,
    /// Tells a key apart from an earlier incarnation with the same identifier.
    generation: u64,
}

/// Secrets taken out of the keyring, dropped (and so wiped) once the lock is released.
#[derive(Default)]
struct Garbage {
    _master: Option<Arc<MasterKey>>,
    _derived: Vec<Arc<dyn Any + Send + Sync>>,
}

impl Inner {
    /// Takes key `id` off the keyring with every cached key derived from it.
    fn evict_key(&mut self, id: &KeyIdentifier) -> Garbage {
        let master = self.keys.remove(id).map(|entry| entry.key);
        let derived = self.cache.remove_master(id);
        self.derived_wiped_total += derived.len() as u64;
        Garbage {
            _master: master,
            _derived: derived,
        }
    }
}

fn release_claim(claims_per_uid: &mut HashMap<Uid, usize>, uid: Uid) {
    if let Some(count) = claims_per_uid.get_mut(&uid) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            claims_per_uid.remove(&uid);
        }
    }
}

fn downcast<T: Send + Sync + 'static>(value: Arc<dyn Any + Send + Sync>) -> Result<Arc<T>> {
    // The cache key includes T's TypeId, so this cannot fail; still, no panic on a broken cache.
    value
        .downcast::<T>()
        .map_err(|_| Error::invalid("derived key cache", "entry of an unexpected type"))
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    identifier: KeyIdentifier,
    slot: DerivedSlot,
    type_id: TypeId,
}

/// A least-recently-used cache: `entries` by key, `order` by last use.
struct DerivedCache {
    capacity: usize,
    tick: u64,
    entries: HashMap<CacheKey, (u64, Arc<dyn Any + Send + Sync>)>,
    order: BTreeMap<u64, CacheKey>,
}

impl DerivedCache {
    fn new(capacity: usize) -> Self {
        DerivedCache {
            capacity,
            tick: 0,
            entries: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    fn get(&mut self, key: &CacheKey) -> Option<Arc<dyn Any + Send + Sync>> {
        let tick = self.next_tick();
        let (used, value) = self.entries.get_mut(key)?;
        if let Some(k) = self.order.remove(used) {
            self.order.insert(tick, k);
        }
        *used = tick;
        Some(Arc::clone(value))
    }

    /// Inserts `value` (absent before) and returns what eviction pushed out.
    fn insert(
        &mut self,
        key: CacheKey,
        value: Arc<dyn Any + Send + Sync>,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        if self.capacity == 0 {
            return Some(value);
        }
        let mut evicted = None;
        if self.entries.len() >= self.capacity
            && let Some((_, oldest)) = self.order.pop_first()
        {
            evicted = self.entries.remove(&oldest).map(|(_, v)| v);
        }
        let tick = self.next_tick();
        self.order.insert(tick, key.clone());
        self.entries.insert(key, (tick, value));
        evicted
    }

    /// Removes every key derived from master key `id`.
    fn remove_master(&mut self, id: &KeyIdentifier) -> Vec<Arc<dyn Any + Send + Sync>> {
        let doomed: Vec<CacheKey> = self
            .entries
            .keys()
            .filter(|k| k.identifier == *id)
            .cloned()
            .collect();
        doomed
            .into_iter()
            .filter_map(|k| {
                let (tick, value) = self.entries.remove(&k)?;
                self.order.remove(&tick);
                Some(value)
            })
            .collect()
    }
}

/// Counts objects still alive anywhere in the process, through weak references: a leak check
/// that needs nothing from the objects' own types. Dead references are pruned as it grows.
#[derive(Default)]
struct LiveSet {
    weak: Vec<Weak<dyn Any + Send + Sync>>,
    prune_at: usize,
}

impl LiveSet {
    fn register(&mut self, value: &Arc<dyn Any + Send + Sync>) {
        if self.weak.len() >= self.prune_at {
            self.weak.retain(|w| w.strong_count() > 0);
            self.prune_at = (2 * self.weak.len()).max(64);
        }
        self.weak.push(Arc::downgrade(value));
    }

    fn live(&mut self) -> usize {
        self.weak.retain(|w| w.strong_count() > 0);
        self.weak.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hkdf::CONTEXT_PER_EXTENT_ENC_KEY;
    use crate::secret::Secret;

    /// A derived key as the filesystem's types hold one: wiped on drop.
    struct ExtentKey(Secret<64>);

    fn derive_extent_key(master: &MasterKey, nonce: &[u8]) -> ExtentKey {
        let mut out = Secret::<64>::zeroed();
        master
            .hkdf()
            .expand(CONTEXT_PER_EXTENT_ENC_KEY, nonce, out.expose_mut());
        ExtentKey(out)
    }

    fn slot(nonce: u8) -> DerivedSlot {
        DerivedSlot {
            context: CONTEXT_PER_EXTENT_ENC_KEY,
            info: vec![nonce; 16],
        }
    }

    fn extent_key(pin: &UnlockedKey, nonce: u8) -> Result<Arc<ExtentKey>> {
        let s = slot(nonce);
        pin.derived(&s, |m| Ok(derive_extent_key(m, &s.info)))
    }

    fn master(n: u8) -> MasterKey {
        MasterKey::from_raw(&[n; 32]).unwrap()
    }

    fn user(uid: Uid) -> Caller {
        Caller {
            uid,
            is_admin: false,
        }
    }

    fn root() -> Caller {
        Caller {
            uid: 0,
            is_admin: true,
        }
    }

    fn status(state: KeyState, user_count: u32, added_by_self: bool) -> KeyStatus {
        KeyStatus {
            state,
            user_count,
            added_by_self,
        }
    }

    const BUSY: RemovalStatus = RemovalStatus {
        other_users: false,
        files_busy: true,
    };
    const OTHERS: RemovalStatus = RemovalStatus {
        other_users: true,
        files_busy: false,
    };

    #[test]
    fn walks_every_transition_of_section_7() {
        let ring = Keyring::new(16);
        let (a, b, c) = (user(1000), user(1001), user(1002));
        let id = master(7).identifier();
        assert_eq!(ring.key_status(&id, a), status(KeyState::Absent, 0, false));

        // ADD by A: PRESENT, one user, added by self (not by C).
        assert_eq!(ring.add_key(master(7), a).unwrap(), id);
        assert_eq!(ring.key_status(&id, a), status(KeyState::Present, 1, true));
        assert_eq!(ring.key_status(&id, c), status(KeyState::Present, 1, false));
        // ADD again by A: nothing changes.
        ring.add_key(master(7), a).unwrap();
        assert_eq!(ring.key_status(&id, a), status(KeyState::Present, 1, true));
        // ADD by B: a second claim.
        ring.add_key(master(7), b).unwrap();
        assert_eq!(ring.key_status(&id, b), status(KeyState::Present, 2, true));

        // REMOVE by A: only A's claim goes; the key stays for B.
        assert_eq!(
            ring.remove_key(&id, a, RemovalScope::OwnClaim).unwrap(),
            OTHERS
        );
        assert_eq!(ring.key_status(&id, a), status(KeyState::Present, 1, false));
        assert_eq!(ring.key_status(&id, b), status(KeyState::Present, 1, true));
        // REMOVE by C, who never claimed it while B does: ENOKEY.
        assert_eq!(
            ring.remove_key(&id, c, RemovalScope::OwnClaim),
            Err(Error::NoKey)
        );
        // ALL_USERS without CAP_SYS_ADMIN: EACCES, nothing changes.
        assert!(matches!(
            ring.remove_key(&id, b, RemovalScope::AllUsers),
            Err(Error::PermissionDenied(_))
        ));
        assert_eq!(ring.key_status(&id, b), status(KeyState::Present, 1, true));

        // An open file pins the key and derives an extent key.
        let pin = ring.unlock(&id).unwrap();
        let before = extent_key(&pin, 1).unwrap().0.expose().to_vec();
        drop(extent_key(&pin, 1).unwrap());

        // REMOVE by B with the file open: FILES_BUSY, INCOMPLETELY_REMOVED.
        assert_eq!(
            ring.remove_key(&id, b, RemovalScope::OwnClaim).unwrap(),
            BUSY
        );
        let incomplete = status(KeyState::IncompletelyRemoved, 0, false);
        assert_eq!(ring.key_status(&id, b), incomplete);
        // No new unlocks ...
        assert_eq!(ring.unlock(&id).unwrap_err(), Error::NoKey);
        // ... but the open file still derives keys, old (cached) and new extents alike.
        assert_eq!(extent_key(&pin, 1).unwrap().0.expose().as_slice(), before);
        let fresh = extent_key(&pin, 2).unwrap();
        assert_eq!(
            fresh.0.expose(),
            derive_extent_key(&master(7), &[2; 16]).0.expose()
        );
        drop(fresh);
        // Retrying the removal (anyone may) stays busy.
        assert_eq!(
            ring.remove_key(&id, c, RemovalScope::OwnClaim).unwrap(),
            BUSY
        );
        assert_eq!(ring.key_status(&id, b), incomplete);

        // ADD again (by C, proving knowledge of the key): PRESENT, unlockable.
        ring.add_key(master(7), c).unwrap();
        assert_eq!(ring.key_status(&id, c), status(KeyState::Present, 1, true));
        let second = ring.unlock(&id).unwrap();
        assert_eq!(ring.stats().pins, 2);
        drop(second);

        // REMOVE again while busy: INCOMPLETELY_REMOVED once more.
        assert_eq!(
            ring.remove_key(&id, c, RemovalScope::OwnClaim).unwrap(),
            BUSY
        );
        assert_eq!(ring.key_status(&id, c), incomplete);
        let s = ring.stats();
        assert_eq!((s.keys, s.secrets_present, s.pins), (1, 1, 1));
        assert_eq!((s.derived_cached, s.derived_live), (2, 2));

        // The last pin goes: the key leaves the keyring with all it derived.
        drop(pin);
        assert_eq!(ring.key_status(&id, c), status(KeyState::Absent, 0, false));
        assert_eq!(
            ring.stats(),
            KeyringStats {
                keys: 0,
                secrets_present: 0,
                pins: 0,
                derived_cached: 0,
                derived_live: 0,
                derived_wiped_total: 2,
            }
        );
        // REMOVE of an absent key: ENOKEY (also for root and all users).
        assert_eq!(
            ring.remove_key(&id, c, RemovalScope::OwnClaim),
            Err(Error::NoKey)
        );
        assert_eq!(
            ring.remove_key(&id, root(), RemovalScope::AllUsers),
            Err(Error::NoKey)
        );
        // Re-adding restores access.
        ring.add_key(master(7), a).unwrap();
        let pin = ring.unlock(&id).unwrap();
        assert_eq!(extent_key(&pin, 1).unwrap().0.expose().as_slice(), before);
    }

    /// The Linux flow of xfstests: a file is open, its inode also sits in the inode cache; the
    /// removal evicts what is idle, reports FILES_BUSY; once the file is closed (its inode still
    /// cached), removing again evicts it and completes.
    #[test]
    fn file_locker_evicts_idle_inodes() {
        let ring = Keyring::default();
        let id = ring.add_key(master(8), user(1)).unwrap();
        let inode_cache: Arc<Mutex<Vec<UnlockedKey>>> = Arc::default();
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        {
            let (cache, calls) = (Arc::downgrade(&inode_cache), Arc::clone(&calls));
            ring.set_file_locker(move |id| {
                calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if let Some(cache) = cache.upgrade() {
                    // Take the pins out, then drop them without holding the cache's lock.
                    let idle: Vec<UnlockedKey> = {
                        let mut cache = cache.lock().unwrap();
                        let (gone, kept) = cache.drain(..).partition(|p| p.identifier() == *id);
                        *cache = kept;
                        gone
                    };
                    drop(idle);
                }
            });
        }
        let other = ring.add_key(master(9), user(1)).unwrap();
        inode_cache.lock().unwrap().push(ring.unlock(&id).unwrap()); // idle inode
        inode_cache
            .lock()
            .unwrap()
            .push(ring.unlock(&other).unwrap()); // another key's
        let open_file = ring.unlock(&id).unwrap();
        drop(extent_key(&open_file, 1).unwrap());

        assert_eq!(
            ring.remove_key(&id, user(1), RemovalScope::OwnClaim)
                .unwrap(),
            BUSY
        );
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(
            ring.stats().pins,
            2,
            "the idle inode went, the open file and the other key's stay"
        );
        // The file is closed, but its inode stays cached.
        inode_cache.lock().unwrap().push(open_file);
        assert_eq!(
            ring.key_status(&id, user(1)).state,
            KeyState::IncompletelyRemoved
        );
        assert_eq!(
            ring.remove_key(&id, user(1), RemovalScope::OwnClaim)
                .unwrap(),
            RemovalStatus::default()
        );
        assert_eq!(ring.key_status(&id, user(1)).state, KeyState::Absent);
        let s = ring.stats();
        assert_eq!((s.keys, s.secrets_present, s.pins), (1, 1, 1));
        assert_eq!((s.derived_cached, s.derived_live), (0, 0));
        // A key that still has claims never reaches the hook.
        ring.add_key(master(9), user(2)).unwrap();
        assert_eq!(
            ring.remove_key(&other, user(1), RemovalScope::OwnClaim)
                .unwrap(),
            OTHERS
        );
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(ring.stats().pins, 1);
    }

    #[test]
    fn removal_without_open_files_is_immediate() {
        let ring = Keyring::default();
        let id = ring.add_key(master(1), user(5)).unwrap();
        drop(extent_key(&ring.unlock(&id).unwrap(), 3).unwrap());
        assert_eq!(
            ring.remove_key(&id, user(5), RemovalScope::OwnClaim)
                .unwrap(),
            RemovalStatus::default()
        );
        assert_eq!(ring.key_status(&id, user(5)).state, KeyState::Absent);
        assert_eq!(ring.stats().secrets_present, 0);
        assert_eq!(ring.stats().derived_wiped_total, 1);
    }

    #[test]
    fn all_users_removal_by_admin() {
        let ring = Keyring::default();
        let id = ring.add_key(master(2), user(1)).unwrap();
        ring.add_key(master(2), user(2)).unwrap();
        ring.add_key(master(2), root()).unwrap();
        assert_eq!(ring.key_status(&id, root()).user_count, 3);
        let pin = ring.unlock(&id).unwrap();
        assert_eq!(
            ring.remove_key(&id, root(), RemovalScope::AllUsers)
                .unwrap(),
            BUSY
        );
        assert_eq!(
            ring.key_status(&id, user(1)).state,
            KeyState::IncompletelyRemoved
        );
        drop(pin);
        assert_eq!(ring.key_status(&id, user(1)).state, KeyState::Absent);
        // Every claim was released from the quota books.
        assert!(ring.shared.lock().claims_per_uid.is_empty());
    }

    #[test]
    fn cloned_pins_count_separately() {
        let ring = Keyring::default();
        let id = ring.add_key(master(3), user(1)).unwrap();
        let pin = ring.unlock(&id).unwrap();
        let other = pin.clone();
        assert_eq!(ring.stats().pins, 2);
        assert_eq!(other.identifier(), id);
        assert!(!pin.is_being_removed());
        ring.remove_key(&id, user(1), RemovalScope::OwnClaim)
            .unwrap();
        assert!(pin.is_being_removed() && other.is_being_removed());
        drop(pin);
        assert_eq!(
            ring.key_status(&id, user(1)).state,
            KeyState::IncompletelyRemoved
        );
        // The remaining pin still has the master key.
        assert_eq!(other.master_key().identifier(), id);
        drop(other);
        assert_eq!(ring.key_status(&id, user(1)).state, KeyState::Absent);
        assert_eq!(ring.stats().secrets_present, 0);
        // Re-adding a key being removed restores it for the pins it kept.
        let id = ring.add_key(master(3), user(1)).unwrap();
        let kept = ring.unlock(&id).unwrap();
        ring.remove_key(&id, user(1), RemovalScope::OwnClaim)
            .unwrap();
        assert!(kept.is_being_removed());
        ring.add_key(master(3), user(1)).unwrap();
        assert!(!kept.is_being_removed());
    }

    #[test]
    fn derived_keys_held_past_the_wipe_still_count() {
        let ring = Keyring::default();
        let id = ring.add_key(master(4), user(1)).unwrap();
        let pin = ring.unlock(&id).unwrap();
        let leaked = extent_key(&pin, 9).unwrap();
        ring.remove_key(&id, user(1), RemovalScope::OwnClaim)
            .unwrap();
        drop(pin);
        let s = ring.stats();
        assert_eq!((s.keys, s.secrets_present, s.derived_cached), (0, 0, 0));
        assert_eq!(s.derived_live, 1, "an Arc held past the wipe is a leak");
        drop(leaked);
        assert_eq!(ring.stats().derived_live, 0);
    }

    #[test]
    fn master_key_clone_held_elsewhere_counts_as_present() {
        let ring = Keyring::default();
        let id = ring.add_key(master(4), user(1)).unwrap();
        let pin = ring.unlock(&id).unwrap();
        let copy = Arc::clone(&pin.key);
        drop(pin);
        ring.remove_key(&id, user(1), RemovalScope::OwnClaim)
            .unwrap();
        assert_eq!(ring.stats().keys, 0);
        assert_eq!(ring.stats().secrets_present, 1);
        drop(copy);
        assert_eq!(ring.stats().secrets_present, 0);
    }

    #[test]
    fn derived_cache_hits_and_evicts_least_recently_used() {
        let ring = Keyring::new(2);
        let id = ring.add_key(master(5), user(1)).unwrap();
        let pin = ring.unlock(&id).unwrap();
        let calls = std::cell::Cell::new(0);
        let get = |n: u8| {
            let s = slot(n);
            pin.derived(&s, |m| {
                calls.set(calls.get() + 1);
                Ok(derive_extent_key(m, &s.info))
            })
            .unwrap()
        };
        let k1 = get(1);
        assert!(Arc::ptr_eq(&k1, &get(1)), "a hit shares the cached key");
        assert_eq!(calls.get(), 1);
        drop(get(2));
        drop(get(1)); // 1 is now more recent than 2
        drop(get(3)); // evicts 2
        assert_eq!(ring.stats().derived_cached, 2);
        assert_eq!(calls.get(), 3);
        drop(get(1));
        assert_eq!(calls.get(), 3, "1 stayed cached");
        drop(get(2));
        assert_eq!(calls.get(), 4, "2 had been evicted");
        // Evicted keys are dropped unless someone holds them: k1 is held, the others are not.
        drop(get(3)); // evicts 1 (least recent)
        assert_eq!(ring.stats().derived_cached, 2);
        assert_eq!(ring.stats().derived_live, 3);
        drop(k1);
        assert_eq!(ring.stats().derived_live, 2);
        assert_eq!(ring.stats().derived_wiped_total, 0);
    }

    /// A one-use key is the slot's key, counted live while held and gone when dropped, never
    /// cached, and it leaves the cached keys in place; its slot is checked as for `derived`.
    #[test]
    fn one_use_keys_are_counted_but_not_cached() {
        let ring = Keyring::new(4);
        let id = ring.add_key(master(5), user(1)).unwrap();
        let pin = ring.unlock(&id).unwrap();
        let s = slot(1);
        let cached = pin
            .derived(&slot(2), |m| Ok(derive_extent_key(m, &slot(2).info)))
            .unwrap();
        let once = pin
            .derived_uncached(&s, |m| Ok(derive_extent_key(m, &s.info)))
            .unwrap();
        assert_eq!(
            once.0.expose(),
            derive_extent_key(&master(5), &s.info).0.expose()
        );
        // Live while held, never in the cache, and the cached key is still there.
        assert_eq!(
            (ring.stats().derived_cached, ring.stats().derived_live),
            (1, 2)
        );
        let calls = std::cell::Cell::new(0);
        let again = pin
            .derived(&slot(2), |m| {
                calls.set(calls.get() + 1);
                Ok(derive_extent_key(m, &slot(2).info))
            })
            .unwrap();
        assert!(Arc::ptr_eq(&cached, &again));
        assert_eq!(calls.get(), 0);
        drop(once);
        assert_eq!(ring.stats().derived_live, 1);
        // The slot's rules hold as for cached keys.
        let long = DerivedSlot {
            context: 1,
            info: vec![0; MAX_DERIVED_INFO + 1],
        };
        assert!(
            pin.derived_uncached(&long, |m| Ok(derive_extent_key(m, &[])))
                .is_err()
        );
    }

    #[test]
    fn uncached_keyring_still_derives() {
        let ring = Keyring::new(0);
        let id = ring.add_key(master(5), user(1)).unwrap();
        let pin = ring.unlock(&id).unwrap();
        let k = extent_key(&pin, 1).unwrap();
        assert_eq!(
            k.0.expose(),
            derive_extent_key(&master(5), &[1; 16]).0.expose()
        );
        assert_eq!(ring.stats().derived_cached, 0);
        assert_eq!(ring.stats().derived_live, 1);
    }

    #[test]
    fn derived_slots_are_checked_and_typed() {
        let ring = Keyring::default();
        let id = ring.add_key(master(6), user(1)).unwrap();
        let pin = ring.unlock(&id).unwrap();
        let long = DerivedSlot {
            context: 2,
            info: vec![0; MAX_DERIVED_INFO + 1],
        };
        assert!(matches!(
            pin.derived(&long, |_| Ok(0u32)),
            Err(Error::Invalid { .. })
        ));
        // A failing derivation caches nothing.
        assert_eq!(
            pin.derived::<u32>(&slot(1), |_| Err(Error::NoKey)),
            Err(Error::NoKey)
        );
        assert_eq!(ring.stats().derived_cached, 0);
        // The same slot under two types is two entries, not a bad downcast.
        assert_eq!(*pin.derived(&slot(1), |_| Ok(7u32)).unwrap(), 7);
        assert_eq!(*pin.derived(&slot(1), |_| Ok(9u64)).unwrap(), 9);
        assert_eq!(*pin.derived(&slot(1), |_| Ok(8u32)).unwrap(), 7);
        assert_eq!(ring.stats().derived_cached, 2);
    }

    #[test]
    fn keys_of_other_masters_survive_a_wipe() {
        let ring = Keyring::default();
        let a = ring.add_key(master(1), user(1)).unwrap();
        let b = ring.add_key(master(2), user(1)).unwrap();
        let (pa, pb) = (ring.unlock(&a).unwrap(), ring.unlock(&b).unwrap());
        drop(extent_key(&pa, 1).unwrap());
        drop(extent_key(&pb, 1).unwrap());
        ring.remove_key(&a, user(1), RemovalScope::OwnClaim)
            .unwrap();
        drop(pa);
        let s = ring.stats();
        assert_eq!((s.keys, s.secrets_present, s.derived_cached), (1, 1, 1));
        assert_eq!(ring.key_status(&b, user(1)).state, KeyState::Present);
        drop(pb);
    }

    #[test]
    fn claim_quota() {
        let ring = Keyring::default().with_claim_limit(2);
        ring.add_key(master(1), user(1)).unwrap();
        let id2 = ring.add_key(master(2), user(1)).unwrap();
        assert_eq!(ring.add_key(master(3), user(1)), Err(Error::QuotaExceeded));
        assert_eq!(ring.stats().keys, 2, "a refused add leaves nothing behind");
        // Re-adding a key one already claims costs nothing.
        ring.add_key(master(2), user(1)).unwrap();
        // Another user has their own quota; admins have none.
        ring.add_key(master(3), user(2)).unwrap();
        for n in 10..20 {
            ring.add_key(master(n), root()).unwrap();
        }
        // Removing a claim gives its quota back.
        ring.remove_key(&id2, user(1), RemovalScope::OwnClaim)
            .unwrap();
        ring.add_key(master(4), user(1)).unwrap();
        assert_eq!(ring.add_key(master(5), user(1)), Err(Error::QuotaExceeded));
    }

    #[test]
    fn debug_is_redacted_and_types_are_shareable() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Keyring>();
        shareable::<UnlockedKey>();
        let ring = Keyring::default();
        let id = ring
            .add_key(MasterKey::from_raw(&[0xab; 32]).unwrap(), user(1))
            .unwrap();
        let pin = ring.unlock(&id).unwrap();
        let text = format!("{pin:?} {ring:?}");
        assert!(text.contains("redacted") && text.contains(&id.to_string()));
        assert!(!text.contains("abab"));
    }

    /// A small deterministic generator for the stress test (xorshift64).
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// Threads add, remove, unlock and derive at random; afterwards nothing may be left behind.
    /// KEYRING_STRESS_ITERS scales it up.
    #[test]
    fn concurrent_operations_leave_consistent_state() {
        let iters: u64 = std::env::var("KEYRING_STRESS_ITERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000);
        let ring = Keyring::new(8);
        let expected: Vec<Vec<u8>> = (0..3)
            .map(|k| derive_extent_key(&master(k), &[1; 16]).0.expose().to_vec())
            .collect();
        std::thread::scope(|scope| {
            for t in 0..4u32 {
                let (ring, expected) = (&ring, &expected);
                scope.spawn(move || {
                    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(t + 1));
                    let mut pins: Vec<UnlockedKey> = Vec::new();
                    for _ in 0..iters {
                        let k = rng.below(3) as u8;
                        let id = master(k).identifier();
                        match rng.below(5) {
                            0 => {
                                ring.add_key(master(k), user(t)).unwrap();
                            }
                            1 => match ring.remove_key(&id, user(t), RemovalScope::OwnClaim) {
                                Ok(_) | Err(Error::NoKey) => {}
                                Err(e) => panic!("unexpected {e}"),
                            },
                            2 => match ring.unlock(&id) {
                                Ok(pin) => pins.push(pin),
                                Err(e) => assert_eq!(e, Error::NoKey),
                            },
                            3 if !pins.is_empty() => {
                                let i = rng.below(pins.len() as u64) as usize;
                                let pin = &pins[i];
                                let got = extent_key(pin, 1).unwrap();
                                let want = &expected[usize::from(
                                    (0..3u8)
                                        .find(|&n| master(n).identifier() == pin.identifier())
                                        .unwrap(),
                                )];
                                assert_eq!(got.0.expose().as_slice(), want.as_slice());
                                drop(extent_key(pin, rng.below(16) as u8 + 2).unwrap());
                            }
                            _ if !pins.is_empty() => {
                                let i = rng.below(pins.len() as u64) as usize;
                                pins.swap_remove(i);
                            }
                            _ => {}
                        }
                    }
                });
            }
        });
        let s = ring.stats();
        assert_eq!(s.pins, 0);
        assert!(s.derived_cached <= 8);
        // Every key still in the keyring is PRESENT (an unpinned key without claims is gone).
        for k in 0..3 {
            let id = master(k).identifier();
            let st = ring.key_status(&id, root());
            assert_ne!(st.state, KeyState::IncompletelyRemoved);
            if st.state == KeyState::Present {
                assert_eq!(
                    ring.remove_key(&id, root(), RemovalScope::AllUsers),
                    Ok(RemovalStatus::default())
                );
            }
        }
        let s = ring.stats();
        assert_eq!(
            (
                s.keys,
                s.secrets_present,
                s.pins,
                s.derived_cached,
                s.derived_live
            ),
            (0, 0, 0, 0, 0)
        );
        assert!(ring.shared.lock().claims_per_uid.is_empty());
    }

    /// Operations of the model test. Keys and uids are small indexes so sequences collide.
    #[derive(Debug, Clone)]
    enum Op {
        Add {
            key: u8,
            uid: Uid,
            admin: bool,
        },
        Remove {
            key: u8,
            uid: Uid,
            admin: bool,
            all: bool,
        },
        Unlock {
            key: u8,
        },
        ClonePin {
            pin: usize,
        },
        DropPin {
            pin: usize,
        },
        Derive {
            pin: usize,
            nonce: u8,
        },
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0..3u8, 0..3u32, any::<bool>()).prop_map(|(key, uid, admin)| Op::Add {
                key,
                uid,
                admin
            }),
            (0..3u8, 0..3u32, any::<bool>(), any::<bool>()).prop_map(|(key, uid, admin, all)| {
                Op::Remove {
                    key,
                    uid,
                    admin,
                    all,
                }
            }),
            (0..3u8).prop_map(|key| Op::Unlock { key }),
            any::<usize>().prop_map(|pin| Op::ClonePin { pin }),
            any::<usize>().prop_map(|pin| Op::DropPin { pin }),
            (any::<usize>(), 0..4u8).prop_map(|(pin, nonce)| Op::Derive { pin, nonce }),
        ]
    }

    /// The state machine of FSCRYPT.md §7 with the per-extent rule, written as plainly as possible.
    #[derive(Default)]
    struct ModelKey {
        claims: BTreeSet<Uid>,
        pins: usize,
        derived: BTreeSet<u8>,
    }

    const MODEL_CLAIM_LIMIT: usize = 2;

    proptest::proptest! {
        #[test]
        fn random_sequences_follow_the_model(ops in proptest::collection::vec(op(), 1..60)) {
            use proptest::prop_assert_eq;
            let ring = Keyring::new(64).with_claim_limit(MODEL_CLAIM_LIMIT);
            let mut model: BTreeMap<u8, ModelKey> = BTreeMap::new();
            let mut wiped = 0u64;
            let mut pins: Vec<(u8, UnlockedKey)> = Vec::new();
            let caller = |uid: Uid, admin: bool| Caller { uid, is_admin: admin };
            let ids: Vec<KeyIdentifier> = (0..3).map(|k| master(k).identifier()).collect();
            for op in ops {
                match op {
                    Op::Add { key, uid, admin } => {
                        let held: usize = model.values().filter(|m| m.claims.contains(&uid)).count();
                        let claimed = model.get(&key).is_some_and(|m| m.claims.contains(&uid));
                        let want = if !claimed && !admin && held >= MODEL_CLAIM_LIMIT {
                            Err(Error::QuotaExceeded)
                        } else {
                            model.entry(key).or_default().claims.insert(uid);
                            Ok(ids[usize::from(key)])
                        };
                        prop_assert_eq!(ring.add_key(master(key), caller(uid, admin)), want);
                    }
                    Op::Remove { key, uid, admin, all } => {
                        let scope = if all { RemovalScope::AllUsers } else { RemovalScope::OwnClaim };
                        let want = if all && !admin {
                            Err(Error::PermissionDenied(""))
                        } else {
                            match model.get_mut(&key) {
                                None => Err(Error::NoKey),
                                Some(m) if !all && !m.claims.is_empty() && !m.claims.contains(&uid) => {
                                    Err(Error::NoKey)
                                }
                                Some(m) => {
                                    if all {
                                        m.claims.clear();
                                    } else {
                                        m.claims.remove(&uid);
                                    }
                                    if !m.claims.is_empty() {
                                        Ok(OTHERS)
                                    } else if m.pins > 0 {
                                        Ok(BUSY)
                                    } else {
                                        wiped += m.derived.len() as u64;
                                        model.remove(&key);
                                        Ok(RemovalStatus::default())
                                    }
                                }
                            }
                        };
                        let got = ring.remove_key(&ids[usize::from(key)], caller(uid, admin), scope);
                        match (got, want) {
                            (Err(Error::PermissionDenied(_)), Err(Error::PermissionDenied(_))) => {}
                            (got, want) => prop_assert_eq!(got, want),
                        }
                    }
                    Op::Unlock { key } => {
                        let got = ring.unlock(&ids[usize::from(key)]);
                        match model.get_mut(&key) {
                            Some(m) if !m.claims.is_empty() => {
                                m.pins += 1;
                                pins.push((key, got.unwrap()));
                            }
                            _ => prop_assert_eq!(got.unwrap_err(), Error::NoKey),
                        }
                    }
                    Op::ClonePin { pin } if !pins.is_empty() => {
                        let (key, p) = &pins[pin % pins.len()];
                        let (key, p) = (*key, p.clone());
                        model.get_mut(&key).unwrap().pins += 1;
                        pins.push((key, p));
                    }
                    Op::DropPin { pin } if !pins.is_empty() => {
                        let (key, p) = pins.swap_remove(pin % pins.len());
                        drop(p);
                        let m = model.get_mut(&key).unwrap();
                        m.pins -= 1;
                        if m.pins == 0 && m.claims.is_empty() {
                            wiped += m.derived.len() as u64;
                            model.remove(&key);
                        }
                    }
                    Op::Derive { pin, nonce } if !pins.is_empty() => {
                        let (key, p) = &pins[pin % pins.len()];
                        let got = extent_key(p, nonce).unwrap();
                        let want = derive_extent_key(&master(*key), &[nonce; 16]);
                        prop_assert_eq!(got.0.expose(), want.0.expose());
                        model.get_mut(key).unwrap().derived.insert(nonce);
                    }
                    _ => {}
                }
                // After every step, every observable agrees with the model.
                for (&key, m) in &model {
                    prop_assert_eq!(m.pins, pins.iter().filter(|(k, _)| *k == key).count());
                }
                for key in 0..3u8 {
                    for uid in 0..3u32 {
                        let want = match model.get(&key) {
                            None => status(KeyState::Absent, 0, false),
                            Some(m) if m.claims.is_empty() => {
                                status(KeyState::IncompletelyRemoved, 0, false)
                            }
                            Some(m) => status(
                                KeyState::Present,
                                m.claims.len() as u32,
                                m.claims.contains(&uid),
                            ),
                        };
                        prop_assert_eq!(ring.key_status(&ids[usize::from(key)], user(uid)), want);
                    }
                }
                let cached: usize = model.values().map(|m| m.derived.len()).sum();
                prop_assert_eq!(
                    ring.stats(),
                    KeyringStats {
                        keys: model.len(),
                        secrets_present: model.len(),
                        pins: pins.len(),
                        derived_cached: cached,
                        derived_live: cached,
                        derived_wiped_total: wiped,
                    }
                );
            }
            drop(pins);
            let s = ring.stats();
            prop_assert_eq!(s.pins, 0);
            prop_assert_eq!(s.keys, model.values().filter(|m| !m.claims.is_empty()).count());
        }
    }
}
