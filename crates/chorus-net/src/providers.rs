//! The Kademlia record store of a Chorus node: which peers provide which keys.
//!
//! Why not libp2p's `MemoryStore` alone: it keeps one bound for all provider keys, this node's
//! own and everyone else's together, and drops an expired record only when someone looks that
//! key up. On a busy timeline the heads other nodes advertise change every few seconds, so
//! stale keys pile up to the bound and from then on the store refuses every new key, this
//! node's own advertisements among them; a peer sending `ADD_PROVIDER` for made-up keys gets
//! there at once. Here:
//! * this node's own records are kept apart, under their own bound ([`MAX_OWN_KEYS`]), so no
//!   one else's records can crowd them out;
//! * others' records are bounded by keys ([`MAX_REMOTE_KEYS`]), providers a key (Kademlia's
//!   K, 20) and keys a provider ([`MAX_KEYS_PER_PROVIDER`]: a peer id is free, but each needs
//!   a connection, and those are bounded too);
//! * when others' keys are at the bound, the key refreshed longest ago goes first (an expired
//!   one before any live one), so the store always takes the newest advertisements.
//!
//! Value records (`PUT_VALUE`; Chorus puts none) stay in a `MemoryStore` with its bounds.

use std::{
    borrow::Cow,
    collections::{BTreeSet, HashMap},
    time::Instant,
};

use libp2p::{
    PeerId,
    kad::{
        K_VALUE, ProviderRecord, Record, RecordKey,
        store::{Error, MemoryStore, RecordStore, Result},
    },
};

/// Keys this node provides itself (the timeline, its heads, certificates: tens).
pub const MAX_OWN_KEYS: usize = 1_024;
/// Keys other peers provide, kept for lookups.
pub const MAX_REMOTE_KEYS: usize = 8_192;
/// Keys one other peer may provide here: twice what a Chorus node ever advertises (the
/// timeline and `MAX_PROVIDED_BLOCKS` blocks).
pub const MAX_KEYS_PER_PROVIDER: usize = 64;

pub struct ProviderStore {
    local: PeerId,
    values: MemoryStore,
    own: HashMap<RecordKey, ProviderRecord>,
    others: HashMap<RecordKey, Remote>,
    /// Others' keys by when they were last refreshed (the newest expiry of their records):
    /// the first is evicted when the store is full.
    by_freshness: BTreeSet<(Option<Instant>, Vec<u8>)>,
    keys_of: HashMap<PeerId, usize>,
}

struct Remote {
    records: Vec<ProviderRecord>,
    freshness: Option<Instant>,
}

impl ProviderStore {
    pub fn new(local: PeerId) -> ProviderStore {
        ProviderStore {
            local,
            values: MemoryStore::new(local),
            own: HashMap::new(),
            others: HashMap::new(),
            by_freshness: BTreeSet::new(),
            keys_of: HashMap::new(),
        }
    }

    /// Keys of other peers' records held (for tests and status).
    pub fn remote_keys(&self) -> usize {
        self.others.len()
    }

    fn add_remote(&mut self, record: ProviderRecord) {
        let key = record.key.clone();
        if let Some(r) = self.others.get_mut(&key) {
            if let Some(old) = r.records.iter_mut().find(|p| p.provider == record.provider) {
                *old = record;
            } else if r.records.len() >= K_VALUE.get()
                || self.keys_of.get(&record.provider).copied().unwrap_or(0) >= MAX_KEYS_PER_PROVIDER
            {
                // Full key, or a provider at its bound: ignored (as MemoryStore ignores a
                // provider beyond K), never an error that would fail the sender's query.
                return;
            } else {
                *self.keys_of.entry(record.provider).or_default() += 1;
                r.records.push(record);
            }
            let fresh = r.records.iter().map(|p| p.expires).max().flatten();
            if fresh != r.freshness {
                self.by_freshness.remove(&(r.freshness, key.to_vec()));
                r.freshness = fresh;
                self.by_freshness.insert((fresh, key.to_vec()));
            }
            return;
        }
        if self.keys_of.get(&record.provider).copied().unwrap_or(0) >= MAX_KEYS_PER_PROVIDER {
            return;
        }
        while self.others.len() >= MAX_REMOTE_KEYS {
            if !self.evict_stalest() {
                break;
            }
        }
        *self.keys_of.entry(record.provider).or_default() += 1;
        let freshness = record.expires;
        self.by_freshness.insert((freshness, key.to_vec()));
        self.others.insert(
            key,
            Remote {
                records: vec![record],
                freshness,
            },
        );
    }

    /// Drops the key refreshed longest ago (false: nothing to drop). Records without an
    /// expiry (none are made here: the behaviour gives every record one) sort first and so go
    /// first.
    fn evict_stalest(&mut self) -> bool {
        let Some((_, key)) = self.by_freshness.pop_first() else {
            return false;
        };
        let key = RecordKey::from(key);
        if let Some(r) = self.others.remove(&key) {
            for p in r.records {
                self.forget_provider(&p.provider);
            }
        }
        true
    }

    fn forget_provider(&mut self, provider: &PeerId) {
        if let Some(n) = self.keys_of.get_mut(provider) {
            *n -= 1;
            if *n == 0 {
                self.keys_of.remove(provider);
            }
        }
    }
}

impl RecordStore for ProviderStore {
    type RecordsIter<'a> = <MemoryStore as RecordStore>::RecordsIter<'a>;
    type ProvidedIter<'a> = std::iter::Map<
        std::collections::hash_map::Values<'a, RecordKey, ProviderRecord>,
        fn(&'a ProviderRecord) -> Cow<'a, ProviderRecord>,
    >;

    fn get(&self, k: &RecordKey) -> Option<Cow<'_, Record>> {
        self.values.get(k)
    }

    fn put(&mut self, r: Record) -> Result<()> {
        self.values.put(r)
    }

    fn remove(&mut self, k: &RecordKey) {
        self.values.remove(k)
    }

    fn records(&self) -> Self::RecordsIter<'_> {
        self.values.records()
    }

    fn add_provider(&mut self, record: ProviderRecord) -> Result<()> {
        if record.provider != self.local {
            self.add_remote(record);
            return Ok(());
        }
        if !self.own.contains_key(&record.key) && self.own.len() >= MAX_OWN_KEYS {
            return Err(Error::MaxProvidedKeys);
        }
        self.own.insert(record.key.clone(), record);
        Ok(())
    }

    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        self.own
            .get(key)
            .into_iter()
            .chain(self.others.get(key).into_iter().flat_map(|r| &r.records))
            .cloned()
            .collect()
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        self.own.values().map(Cow::Borrowed)
    }

    fn remove_provider(&mut self, key: &RecordKey, provider: &PeerId) {
        if *provider == self.local {
            self.own.remove(key);
            return;
        }
        let Some(r) = self.others.get_mut(key) else {
            return;
        };
        let before = r.records.len();
        r.records.retain(|p| p.provider != *provider);
        if r.records.len() == before {
            return;
        }
        self.forget_provider(provider);
        let r = self.others.get_mut(key).expect("looked up above");
        self.by_freshness.remove(&(r.freshness, key.to_vec()));
        if r.records.is_empty() {
            self.others.remove(key);
        } else {
            r.freshness = r.records.iter().map(|p| p.expires).max().flatten();
            self.by_freshness.insert((r.freshness, key.to_vec()));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn record(key: u32, provider: PeerId, expires: Instant) -> ProviderRecord {
        ProviderRecord {
            key: RecordKey::new(&key.to_be_bytes()),
            provider,
            expires: Some(expires),
            addresses: vec![],
        }
    }

    fn own_key_kept(store: &mut impl RecordStore, me: PeerId) -> bool {
        let mine = record(u32::MAX, me, Instant::now() + Duration::from_secs(60));
        store.add_provider(mine.clone()).is_ok() && store.providers(&mine.key).contains(&mine)
    }

    /// The attack: others' records (stale heads, or a peer's made-up keys from many ids) fill
    /// the store; this node must still be able to advertise, and the newest records are kept.
    #[test]
    fn others_records_never_crowd_out_our_own_and_the_stalest_go_first() {
        let me = PeerId::random();
        let mut store = ProviderStore::new(me);
        let t0 = Instant::now();
        let peers: Vec<PeerId> = (0..300).map(|_| PeerId::random()).collect();
        // Twice the bound of keys, from 300 ids, each refreshed later than the one before.
        for k in 0..(2 * MAX_REMOTE_KEYS) as u32 {
            let p = peers[k as usize % peers.len()];
            let at = t0 + Duration::from_millis(u64::from(k));
            store.add_provider(record(k, p, at)).unwrap();
        }
        assert!(store.remote_keys() <= MAX_REMOTE_KEYS);
        assert!(own_key_kept(&mut store, me));
        // The newest keys are held, the oldest were evicted.
        let newest = RecordKey::new(&(2 * MAX_REMOTE_KEYS as u32 - 1).to_be_bytes());
        assert_eq!(store.providers(&newest).len(), 1);
        assert!(
            store
                .providers(&RecordKey::new(&0u32.to_be_bytes()))
                .is_empty()
        );
        assert_eq!(store.provided().count(), 1);
    }

    #[test]
    fn one_provider_is_held_to_its_share_and_a_key_to_k_providers() {
        let me = PeerId::random();
        let mut store = ProviderStore::new(me);
        let flood = PeerId::random();
        let exp = Instant::now() + Duration::from_secs(60);
        for k in 0..(MAX_KEYS_PER_PROVIDER as u32 + 100) {
            store.add_provider(record(k, flood, exp)).unwrap();
        }
        assert_eq!(store.remote_keys(), MAX_KEYS_PER_PROVIDER);
        // Another peer still gets its records in.
        let honest = PeerId::random();
        store.add_provider(record(1_000_000, honest, exp)).unwrap();
        assert_eq!(store.remote_keys(), MAX_KEYS_PER_PROVIDER + 1);
        for _ in 0..(K_VALUE.get() + 5) {
            store
                .add_provider(record(7, PeerId::random(), exp))
                .unwrap();
        }
        assert_eq!(
            store.providers(&RecordKey::new(&7u32.to_be_bytes())).len(),
            K_VALUE.get()
        );
        // Removing records gives the provider its share back.
        for k in 0..10u32 {
            store.remove_provider(&RecordKey::new(&k.to_be_bytes()), &flood);
        }
        store.add_provider(record(2_000_000, flood, exp)).unwrap();
        assert_eq!(
            store
                .providers(&RecordKey::new(&2_000_000u32.to_be_bytes()))
                .len(),
            1
        );
    }

    /// Sabotage of the test above: libp2p's `MemoryStore`, which shares one bound between
    /// our keys and everyone else's, refuses our own advertisement once others filled it.
    #[test]
    fn the_stock_store_refuses_our_own_key_once_others_filled_it() {
        let me = PeerId::random();
        let mut stock = MemoryStore::new(me);
        let exp = Instant::now() + Duration::from_secs(60);
        for k in 0..2_000u32 {
            let _ = stock.add_provider(record(k, PeerId::random(), exp));
        }
        assert!(!own_key_kept(&mut stock, me));
        let mut ours = ProviderStore::new(me);
        for k in 0..2_000u32 {
            ours.add_provider(record(k, PeerId::random(), exp)).unwrap();
        }
        assert!(own_key_kept(&mut ours, me));
    }
}
