//! Event id → index. The table stores only the 4-byte index; the 32-byte id is read from the
//! timeline's id vector when comparing. At a million events this is ~10 MB instead of the ~86 MB
//! a `HashMap<EventId, u32>` takes. Ids are hashed with a per-process random SipHash key (ids
//! are attacker-influenced: a member can grind event ids), and the table is never iterated, so
//! nothing observable depends on the key.

use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;

use crate::ids::EventId;

pub struct IdIndex {
    table: HashTable<u32>,
    hasher: RandomState,
}

impl Default for IdIndex {
    fn default() -> Self {
        IdIndex {
            table: HashTable::new(),
            hasher: RandomState::new(),
        }
    }
}

impl IdIndex {
    fn hash(&self, id: &EventId) -> u64 {
        self.hasher.hash_one(id.0)
    }

    /// The index of `id`, given the id vector the indices point into.
    pub fn get(&self, ids: &[EventId], id: &EventId) -> Option<u32> {
        self.table
            .find(self.hash(id), |&i| ids[i as usize] == *id)
            .copied()
    }

    /// Adds `idx` (whose id is `ids[idx]`, not yet in the table).
    pub fn insert(&mut self, ids: &[EventId], idx: u32) {
        let hash = self.hash(&ids[idx as usize]);
        let hasher = &self.hasher;
        self.table
            .insert_unique(hash, idx, |&i| hasher.hash_one(ids[i as usize].0));
    }
}
