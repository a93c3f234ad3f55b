//! The classification cache: verdicts keyed by the query text with its
//! literals blanked ([`lexer::normalize`]) and the session's
//! `standard_conforming_strings`. A lookup allocates nothing: one pass over
//! the text writes the normalized key into a stack buffer, which is hashed
//! and, on a hash hit, compared with the stored key, so two texts never
//! share a verdict by a hash collision (keys too long for the buffer are
//! hashed and compared piece by piece in two passes). Split sessions run on
//! several worker threads, so the cache is [`SHARDS`] independently locked
//! maps chosen by the hash; each is bounded in entries and bytes.

use super::{Classification, lexer};
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Independently locked maps of the cache.
pub const SHARDS: usize = 16;

/// Entries the whole cache keeps (both `standard_conforming_strings`
/// values, all shards) before it starts evicting.
pub const CACHE_CAPACITY: usize = 32_768;

/// Longest key the cache keeps: longer statements are classified each
/// time.
pub const MAX_CACHED_KEY: usize = 4096;

/// Bytes the whole cache may hold (keys plus [`ENTRY_OVERHEAD`] each), so it
/// never passes 16 MiB whatever clients send: 32,768 typical keys of a few
/// hundred bytes fit, 4,000 keys of 4 KiB do.
pub const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// What an entry costs beside its key: the boxed key's pointer and length,
/// the hash, the verdict and the hash table's slot and control byte.
pub(super) const ENTRY_OVERHEAD: usize = 64;

/// One cached verdict with the key it was stored under.
#[derive(Debug)]
struct Entry {
    key: Box<str>,
    scs: bool,
    class: Classification,
    statements: usize,
}

/// Hashes a `u64` to itself: the map's keys are already hashes.
#[derive(Debug, Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// One shard: entries by key hash, and the bytes they hold.
#[derive(Debug, Default)]
pub(super) struct Shard {
    map: HashMap<u64, Entry, BuildHasherDefault<Prehashed>>,
    pub(super) bytes: usize,
}

impl Shard {
    /// Entries held.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// The bytes its entries cost, counted afresh.
    #[cfg(test)]
    pub(super) fn counted_bytes(&self) -> usize {
        self.map
            .values()
            .map(|e| e.key.len() + ENTRY_OVERHEAD)
            .sum()
    }

    /// Inserts an entry, first evicting arbitrary entries until it fits
    /// its share of [`CACHE_CAPACITY`] and [`CACHE_BYTES`].
    fn insert(&mut self, hash: u64, entry: Entry) {
        let cost = entry.key.len() + ENTRY_OVERHEAD;
        while !self.map.is_empty()
            && (self.map.len() >= CACHE_CAPACITY / SHARDS
                || self.bytes + cost > CACHE_BYTES / SHARDS)
        {
            let Some(old) = self.map.keys().next().copied() else {
                break;
            };
            if let Some(e) = self.map.remove(&old) {
                self.bytes -= e.key.len() + ENTRY_OVERHEAD;
            }
        }
        // Another session may have cached the same key meanwhile, or a
        // different key with the same hash: the newer replaces it.
        if let Some(e) = self.map.insert(hash, entry) {
            self.bytes -= e.key.len() + ENTRY_OVERHEAD;
        }
        self.bytes += cost;
    }
}

/// Normalized keys up to this long are built on the stack, hashed and
/// compared in one piece; longer ones are hashed and compared piece by
/// piece as the lexer hands them out (two passes, still no allocation).
pub(super) const INLINE_KEY: usize = 512;

/// A stack buffer for a short normalized key.
pub(super) type KeyBuf = [u8; INLINE_KEY];

/// Where a text's verdict lives in the cache: the hash of its normalized
/// form and that form's length.
#[derive(Debug, Clone, Copy)]
pub(super) struct Key {
    hash: u64,
    /// Bytes of the normalized text; when at most [`INLINE_KEY`], the
    /// normalized text is in the caller's [`KeyBuf`].
    pub(super) len: usize,
}

impl Key {
    fn inline(self) -> bool {
        self.len <= INLINE_KEY
    }
}

/// The bounded, sharded cache.
#[derive(Debug)]
pub(super) struct Cache {
    shards: Box<[Mutex<Shard>]>,
    /// The key hash's seed, random per process. The hash need not resist
    /// crafted collisions: two keys of one hash are told apart by the
    /// stored key, and the later only replaces the earlier (which any
    /// client can do anyway by sending more texts than the cache holds).
    seed: usize,
}

impl Default for Cache {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            // Truncated on 32-bit targets: any bits of a random value do.
            seed: RandomState::new().hash_one(0u8) as usize,
        }
    }
}

impl Cache {
    /// Normalizes `sql` into `buf` when it fits and hashes it, without
    /// allocating.
    pub(super) fn key(&self, sql: &str, scs: bool, buf: &mut KeyBuf) -> Key {
        let mut len = 0;
        lexer::normalize_with(sql, scs, |piece| {
            if let Some(dst) = buf.get_mut(len..len + piece.len()) {
                dst.copy_from_slice(piece.as_bytes());
            }
            len += piece.len();
        });
        // FxHash: a few instructions per 8 bytes, where SipHash took
        // more than the lookup it keys.
        let mut h = rustc_hash::FxHasher::with_seed(self.seed);
        h.write_u8(u8::from(scs));
        match buf.get(..len) {
            Some(key) => h.write(key),
            None => lexer::normalize_with(sql, scs, |piece| h.write(piece.as_bytes())),
        }
        Key {
            hash: h.finish(),
            len,
        }
    }

    pub(super) fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        // The low bits pick the table slot and the top seven its tag: the
        // shard comes from the middle.
        let i = usize::try_from((hash >> 32) % SHARDS as u64).unwrap_or(0);
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Every shard, for tests.
    #[cfg(test)]
    pub(super) fn shards(&self) -> impl Iterator<Item = MutexGuard<'_, Shard>> {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The cached verdict and statement count of `sql`, if its key is
    /// there (`key` and `buf` from [`Self::key`]).
    pub(super) fn get(
        &self,
        key: Key,
        buf: &KeyBuf,
        sql: &str,
        scs: bool,
    ) -> Option<(Classification, usize)> {
        let shard = self.shard(key.hash);
        let e = shard.map.get(&key.hash)?;
        if e.scs != scs || e.key.len() != key.len {
            return None;
        }
        let stored = e.key.as_bytes();
        let same = if key.inline() {
            buf.get(..key.len) == Some(stored)
        } else {
            let mut pos = 0;
            let mut same = true;
            lexer::normalize_with(sql, scs, |piece| {
                if same {
                    let end = pos + piece.len();
                    same = stored.get(pos..end) == Some(piece.as_bytes());
                    pos = end;
                }
            });
            same && pos == stored.len()
        };
        same.then_some((e.class, e.statements))
    }

    /// Stores the verdict on `sql` (whose key is `key`).
    pub(super) fn insert(
        &self,
        key: Key,
        sql: &str,
        scs: bool,
        class: Classification,
        statements: usize,
    ) {
        let entry = Entry {
            key: lexer::normalize(sql, scs).into_boxed_str(),
            scs,
            class,
            statements,
        };
        self.shard(key.hash).insert(key.hash, entry);
    }
}
