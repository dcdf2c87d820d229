//! The suppression list: keys of forgotten customers, as keyed hashes, so that events
//! carrying them are refused instead of bringing the person back.
//!
//! A key is never kept in clear: each is a 128-bit keyed BLAKE2b MAC under a secret of
//! the data directory (the store hands it over at open; an engine without a data
//! directory makes up its own). Someone holding a snapshot or a log without the secret
//! cannot test an e-mail address against the list.
//!
//! Invariant: no key on the list is in the identity map. Forgetting removes a
//! customer's keys from the map and puts them on the list under the same identity
//! mutex; live events only add keys on the slow path (`apply_with_identity_changes`),
//! which checks the list first. So the fast path, whose keys are all known, needs no
//! check, and a suppressed key costs nothing where no customer was forgotten.

use std::collections::HashSet;

use blake2::digest::{KeyInit, Mac};
use parking_lot::RwLock;

/// A key's keyed hash.
pub type Hashed = [u8; 16];

type Blake2bMac128 = blake2::Blake2bMac<blake2::digest::consts::U16>;

pub struct Suppression {
    secret: RwLock<[u8; 32]>,
    hashed: RwLock<HashSet<Hashed>>,
}

impl Suppression {
    /// An empty list under a random secret (replaced by [`Suppression::set_secret`] when
    /// the engine has a data directory).
    pub fn new() -> Suppression {
        let mut secret = [0u8; 32];
        argon2::password_hash::rand_core::RngCore::fill_bytes(
            &mut argon2::password_hash::rand_core::OsRng,
            &mut secret,
        );
        Suppression {
            secret: RwLock::new(secret),
            hashed: RwLock::new(HashSet::new()),
        }
    }

    /// The data directory's secret; call before anything is hashed.
    pub fn set_secret(&self, secret: [u8; 32]) {
        *self.secret.write() = secret;
    }

    /// The secret (for a reload's new engine: the same data directory, the same key).
    pub(crate) fn secret(&self) -> [u8; 32] {
        *self.secret.read()
    }

    pub fn hash(&self, key: &str) -> Hashed {
        let mut mac = <Blake2bMac128 as KeyInit>::new_from_slice(&*self.secret.read())
            .expect("a 32-byte key fits BLAKE2b");
        mac.update(key.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Whether `key` belongs to a forgotten customer.
    pub fn contains(&self, key: &str) -> bool {
        let hashed = self.hashed.read();
        !hashed.is_empty() && hashed.contains(&self.hash(key))
    }

    pub fn add(&self, keys: &[Hashed]) {
        self.hashed.write().extend(keys.iter().copied());
    }

    pub fn len(&self) -> usize {
        self.hashed.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashed.read().is_empty()
    }

    /// Every hash, sorted (for a snapshot: the same list makes the same bytes).
    pub fn entries(&self) -> Vec<Hashed> {
        let mut all: Vec<Hashed> = self.hashed.read().iter().copied().collect();
        all.sort_unstable();
        all
    }

    /// Replaces the list (a snapshot's).
    pub fn restore(&self, entries: &[Hashed]) {
        *self.hashed.write() = entries.iter().copied().collect();
    }
}

impl Default for Suppression {
    fn default() -> Self {
        Suppression::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_hashed_under_the_secret_and_found_only_once_added() {
        let list = Suppression::new();
        list.set_secret([7; 32]);
        assert!(!list.contains("email:sofia@example.nl"));
        let hashed = list.hash("email:sofia@example.nl");
        list.add(&[hashed]);
        assert!(list.contains("email:sofia@example.nl"));
        assert!(!list.contains("email:sofia@example.com"));
        // Another secret, another hash: the list means nothing without its secret.
        let other = Suppression::new();
        other.set_secret([8; 32]);
        assert_ne!(other.hash("email:sofia@example.nl"), hashed);
        assert_eq!(list.entries(), vec![hashed]);
    }
}
