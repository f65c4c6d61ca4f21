//! Record ids by tensor name, without a copy of any name.
//!
//! A map from owned names (`HashMap<String, Vec<u64>>`) costs two
//! allocations per tensor: a tenth of the time it took to open a trace of
//! 100,000 tensors and reach each by name. This one maps a keyed hash of
//! each name to the ids of that name, one id held inline; the names
//! themselves are compared where they lie, in the file's index (as bytes:
//! the reader checked at open that every name is UTF-8). Two different
//! names with the same 64-bit hash (never by chance in practice, but
//! possible) put the second in a map by owned name, so every lookup stays
//! exact.
//!
//! The hash is foldhash with a random seed (a file cannot choose names
//! whose hashes collide without knowing it): about five times as fast as
//! the standard library's SipHash on names of 20 bytes, which was a tenth
//! of the time to reach 20,000 tensors by name.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use foldhash::fast::RandomState;

/// Record ids by name (see the module's comment).
#[derive(Debug)]
pub(crate) struct NameIndex<S = RandomState> {
    keys: S,
    by_hash: HashMap<u64, Ids, BuildHasherDefault<AlreadyHashed>>,
    /// Names whose hash an earlier, different name took.
    collided: HashMap<Vec<u8>, Vec<u64>>,
}

impl NameIndex {
    /// The index of `ids` (in order), whose names `name_of` gives.
    pub(crate) fn new<'a>(ids: &[u64], name_of: impl Fn(u64) -> &'a [u8]) -> NameIndex {
        NameIndex::with_keys(RandomState::default(), ids, name_of)
    }
}

impl<S: BuildHasher> NameIndex<S> {
    /// [`NameIndex::new`], hashing with `keys`.
    fn with_keys<'a>(keys: S, ids: &[u64], name_of: impl Fn(u64) -> &'a [u8]) -> NameIndex<S> {
        let mut by_hash: HashMap<u64, Ids, BuildHasherDefault<AlreadyHashed>> =
            HashMap::with_capacity_and_hasher(ids.len(), BuildHasherDefault::default());
        let mut collided: HashMap<Vec<u8>, Vec<u64>> = HashMap::new();
        for &id in ids {
            let name = name_of(id);
            match by_hash.entry(keys.hash_one(name)) {
                Entry::Vacant(e) => {
                    e.insert(Ids::One(id));
                }
                Entry::Occupied(mut e) => {
                    if name_of(e.get().first()) == name {
                        e.get_mut().push(id);
                    } else {
                        collided.entry(name.to_vec()).or_default().push(id);
                    }
                }
            }
        }
        NameIndex {
            keys,
            by_hash,
            collided,
        }
    }

    /// The ids named `name`, in order (empty when none is).
    pub(crate) fn find<'s, 'a>(
        &'s self,
        name: &[u8],
        name_of: impl Fn(u64) -> &'a [u8],
    ) -> &'s [u64] {
        if let Some(ids) = self.by_hash.get(&self.keys.hash_one(name)) {
            if name_of(ids.first()) == name {
                return ids.as_slice();
            }
        }
        self.collided.get(name).map_or(&[], Vec::as_slice)
    }
}

/// The ids of one name: most names are one tensor's.
#[derive(Debug)]
enum Ids {
    One(u64),
    Many(Vec<u64>),
}

impl Ids {
    fn first(&self) -> u64 {
        match self {
            Ids::One(id) => *id,
            Ids::Many(ids) => ids[0],
        }
    }

    fn push(&mut self, id: u64) {
        match self {
            Ids::One(first) => *self = Ids::Many(vec![*first, id]),
            Ids::Many(ids) => ids.push(id),
        }
    }

    fn as_slice(&self) -> &[u64] {
        match self {
            Ids::One(id) => std::slice::from_ref(id),
            Ids::Many(ids) => ids,
        }
    }
}

/// The hasher of a map whose keys are already hashes.
#[derive(Default)]
struct AlreadyHashed(u64);

impl Hasher for AlreadyHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }

    // never called: the keys are u64s (kept correct all the same)
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_and_unique_names_keep_their_order() {
        let names = ["a", "b", "a", "c", "a", "b"];
        let ids: Vec<u64> = (0..names.len() as u64).collect();
        let name_of = |id: u64| names[id as usize].as_bytes();
        let index = NameIndex::new(&ids, name_of);
        assert_eq!(index.find(b"a", name_of), [0, 2, 4]);
        assert_eq!(index.find(b"b", name_of), [1, 5]);
        assert_eq!(index.find(b"c", name_of), [3]);
        assert!(index.find(b"d", name_of).is_empty());
        assert!(index.find(b"", name_of).is_empty());
    }

    /// Hashes every name to the same value.
    struct OneHash;

    struct Seven;

    impl BuildHasher for OneHash {
        type Hasher = Seven;
        fn build_hasher(&self) -> Seven {
            Seven
        }
    }

    impl Hasher for Seven {
        fn finish(&self) -> u64 {
            7
        }
        fn write(&mut self, _: &[u8]) {}
    }

    #[test]
    fn names_whose_hashes_collide_stay_apart() {
        let names = ["x", "y", "x", "z", "y"];
        let ids: Vec<u64> = (0..names.len() as u64).collect();
        let name_of = |id: u64| names[id as usize].as_bytes();
        let index = NameIndex::with_keys(OneHash, &ids, name_of);
        assert_eq!(index.by_hash.len(), 1, "every name has the same hash");
        assert_eq!(index.find(b"x", name_of), [0, 2]);
        assert_eq!(index.find(b"y", name_of), [1, 4]);
        assert_eq!(index.find(b"z", name_of), [3]);
        assert!(index.find(b"w", name_of).is_empty());
    }
}
