//! Identities of full blocks for automatic prefix caching.
//!
//! A block's hash chains its parent's hash, its token ids, and the extra keys that change what
//! its KV holds: the LoRA adapter, the content hashes of multimodal items overlapping it, and the
//! request's cache salt (first block only; through the chain it separates every later block, so
//! tenants with different salts never share a block). The digest is 128-bit XXH3 over a versioned
//! encoding: fast and well mixed. It is a lookup key, not a proof: a hit is confirmed by comparing
//! the block's parent, tokens and keys with what is stored, so a collision can only ever be a
//! miss, never another tenant's KV.

use std::sync::Arc;

use xxhash_rust::xxh3::{xxh3_128, Xxh3};

use crate::ids::TokenId;

/// Bumped whenever the encoding below changes, so digests from different versions never mix.
const ENCODING: &[u8] = b"paged-kv/block-hash/v1";

/// The 128-bit identity of a full block's content and position in its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHash(pub u128);

/// A multimodal item occupying tokens `start..end` of a request, identified by a content hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MultimodalSpan {
    /// First token of the item.
    pub start: usize,
    /// One past its last token.
    pub end: usize,
    /// Hash of the item's content (image bytes, audio, ...).
    pub content_hash: u128,
}

/// What besides the tokens decides a request's KV: part of every block's identity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RequestKeys {
    /// LoRA adapter id, if any.
    pub adapter: Option<u64>,
    /// A per-tenant secret: requests with different salts never share cached blocks.
    pub cache_salt: Option<Arc<[u8]>>,
    /// Multimodal items, by token range.
    pub multimodal: Vec<MultimodalSpan>,
}

/// The extra keys of one block, stored with cached blocks and compared exactly on a hit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockKeys {
    /// LoRA adapter id.
    pub adapter: Option<u64>,
    /// The cache salt (first block of a request only).
    pub cache_salt: Option<Arc<[u8]>>,
    /// Content hashes of the multimodal items overlapping the block.
    pub multimodal: Vec<u128>,
}

impl RequestKeys {
    /// The keys of the block covering tokens `start..end`, the `index`-th of the request.
    pub fn for_block(&self, index: usize, start: usize, end: usize) -> BlockKeys {
        BlockKeys {
            adapter: self.adapter,
            cache_salt: if index == 0 {
                self.cache_salt.clone()
            } else {
                None
            },
            multimodal: self
                .multimodal
                .iter()
                .filter(|m| m.start < end && start < m.end)
                .map(|m| m.content_hash)
                .collect(),
        }
    }
}

/// The hash of a full block: `parent` (`None` for the first block), its tokens, and its keys.
pub fn block_hash(parent: Option<BlockHash>, tokens: &[TokenId], keys: &BlockKeys) -> BlockHash {
    // The common case (no salt, no images, up to 128 tokens, a little-endian host) hashes the
    // whole encoding from one stack buffer in one call; anything else streams the same bytes.
    // Both give the same digest (pinned by `tests/hash_golden.rs`).
    #[cfg(target_endian = "little")]
    if keys.cache_salt.is_none() && keys.multimodal.is_empty() {
        // Buffers sized for the common block sizes, so little is zeroed per hash.
        if tokens.len() <= 16 {
            return hash_in_one_call::<{ HEADER_MAX + 64 }>(parent, tokens, keys.adapter);
        }
        if tokens.len() <= 128 {
            return hash_in_one_call::<{ HEADER_MAX + 512 }>(parent, tokens, keys.adapter);
        }
    }
    let mut h = Xxh3::new();
    h.update(ENCODING);
    match parent {
        Some(p) => {
            h.update(&[1]);
            h.update(&p.0.to_le_bytes());
        }
        None => h.update(&[0]),
    }
    match keys.adapter {
        Some(a) => {
            h.update(&[1]);
            h.update(&a.to_le_bytes());
        }
        None => h.update(&[0]),
    }
    match &keys.cache_salt {
        Some(s) => {
            h.update(&[1]);
            h.update(&(s.len() as u64).to_le_bytes());
            h.update(s);
        }
        None => h.update(&[0]),
    }
    h.update(&(keys.multimodal.len() as u64).to_le_bytes());
    for m in &keys.multimodal {
        h.update(&m.to_le_bytes());
    }
    h.update(&(tokens.len() as u64).to_le_bytes());
    #[cfg(target_endian = "little")]
    h.update(bytemuck::cast_slice(tokens));
    #[cfg(not(target_endian = "little"))]
    for t in tokens {
        h.update(&t.to_le_bytes());
    }
    BlockHash(h.digest128())
}

/// [`block_hash`] of a block without salt or images whose encoding fits `N` bytes, hashed in
/// one call from a stack buffer (the same bytes, so the same digest).
#[cfg(target_endian = "little")]
fn hash_in_one_call<const N: usize>(
    parent: Option<BlockHash>,
    tokens: &[TokenId],
    adapter: Option<u64>,
) -> BlockHash {
    let mut buf = [0u8; N];
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        buf[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    put(ENCODING);
    match parent {
        Some(p) => {
            put(&[1]);
            put(&p.0.to_le_bytes());
        }
        None => put(&[0]),
    }
    match adapter {
        Some(a) => {
            put(&[1]);
            put(&a.to_le_bytes());
        }
        None => put(&[0]),
    }
    put(&[0]); // no salt
    put(&0u64.to_le_bytes()); // no multimodal items
    put(&(tokens.len() as u64).to_le_bytes());
    put(bytemuck::cast_slice(tokens));
    BlockHash(xxh3_128(&buf[..at]))
}
/// The encoding's bytes before the tokens, without salt or images: version, parent flag and
/// hash, adapter flag and id, salt flag, item count, token count.
const HEADER_MAX: usize = ENCODING.len() + 1 + 16 + 1 + 8 + 1 + 8 + 8;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_input_changes_the_hash() {
        let keys = BlockKeys::default();
        let base = block_hash(None, &[1, 2, 3, 4], &keys);
        assert_eq!(
            base,
            block_hash(None, &[1, 2, 3, 4], &keys),
            "deterministic"
        );
        assert_ne!(base, block_hash(None, &[1, 2, 3, 5], &keys));
        assert_ne!(base, block_hash(Some(BlockHash(0)), &[1, 2, 3, 4], &keys));
        let salted = BlockKeys {
            cache_salt: Some(Arc::from(&b"tenant-a"[..])),
            ..BlockKeys::default()
        };
        assert_ne!(base, block_hash(None, &[1, 2, 3, 4], &salted));
        let adapter = BlockKeys {
            adapter: Some(7),
            ..BlockKeys::default()
        };
        assert_ne!(base, block_hash(None, &[1, 2, 3, 4], &adapter));
        let image = BlockKeys {
            multimodal: vec![42],
            ..BlockKeys::default()
        };
        assert_ne!(base, block_hash(None, &[1, 2, 3, 4], &image));
        // The salt, through the chain, separates later blocks too.
        let a = block_hash(Some(block_hash(None, &[1], &salted)), &[9], &keys);
        let b = block_hash(Some(block_hash(None, &[1], &keys)), &[9], &keys);
        assert_ne!(a, b);
    }

    #[test]
    fn keys_per_block() {
        let keys = RequestKeys {
            adapter: Some(3),
            cache_salt: Some(Arc::from(&b"s"[..])),
            multimodal: vec![MultimodalSpan {
                start: 10,
                end: 20,
                content_hash: 99,
            }],
        };
        let first = keys.for_block(0, 0, 16);
        assert_eq!(first.multimodal, vec![99]);
        assert!(first.cache_salt.is_some());
        let second = keys.for_block(1, 16, 32);
        assert_eq!(second.multimodal, vec![99]);
        assert!(second.cache_salt.is_none());
        assert!(keys.for_block(2, 32, 48).multimodal.is_empty());
        assert_eq!(keys.for_block(2, 32, 48).adapter, Some(3));
    }
}
