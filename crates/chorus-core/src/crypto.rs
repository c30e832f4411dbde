//! Ed25519 keys. The core never draws randomness itself: a new key is made from 32 bytes of
//! entropy the caller supplies.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::{ids::AuthorId, limits::EVENT_SIGNING_DOMAIN};

/// A node's signing key.
#[derive(Clone)]
pub struct Keypair {
    signing: SigningKey,
}

impl Keypair {
    /// Builds a key from a 32-byte seed (the Ed25519 secret key).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Keypair {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// The 32-byte secret seed, for storing the key.
    pub fn seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// The public key as an author id.
    pub fn author(&self) -> AuthorId {
        AuthorId(self.signing.verifying_key().to_bytes())
    }

    /// Signs `payload` in the event domain.
    pub fn sign_event(&self, payload: &[u8]) -> [u8; 64] {
        let mut msg = Vec::with_capacity(EVENT_SIGNING_DOMAIN.len() + payload.len());
        msg.extend_from_slice(EVENT_SIGNING_DOMAIN);
        msg.extend_from_slice(payload);
        self.signing.sign(&msg).to_bytes()
    }
}

impl std::fmt::Debug for Keypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keypair({})", self.author().fmt_short())
    }
}

/// Why a signature did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    /// The author bytes are not a usable Ed25519 public key.
    BadKey,
    /// The signature does not match.
    BadSignature,
}

/// Most decompressed public keys a [`KeyCache`] keeps.
pub const KEY_CACHE_ENTRIES: usize = 4096;

/// Decompressed, checked public keys by author. Decompressing a key costs about as much as a
/// seventh of a verification; authors repeat, so verifiers keep a bounded cache (cleared when
/// full — simple and bounded).
#[derive(Default)]
pub struct KeyCache {
    keys: std::collections::HashMap<AuthorId, Result<VerifyingKey, VerifyError>>,
}

impl KeyCache {
    fn get(&mut self, author: &AuthorId) -> Result<VerifyingKey, VerifyError> {
        if let Some(k) = self.keys.get(author) {
            return *k;
        }
        if self.keys.len() >= KEY_CACHE_ENTRIES {
            self.keys.clear();
        }
        let k = VerifyingKey::from_bytes(&author.0)
            .map_err(|_| VerifyError::BadKey)
            .and_then(|k| {
                if k.is_weak() {
                    Err(VerifyError::BadKey)
                } else {
                    Ok(k)
                }
            });
        self.keys.insert(*author, k);
        k
    }
}

/// Verifies an event signature strictly (no small-order keys, canonical S).
pub fn verify_event(
    author: &AuthorId,
    payload: &[u8],
    signature: &[u8; 64],
) -> Result<(), VerifyError> {
    verify_event_cached(author, payload, signature, &mut KeyCache::default())
}

/// [`verify_event`] with a key cache.
pub fn verify_event_cached(
    author: &AuthorId,
    payload: &[u8],
    signature: &[u8; 64],
    cache: &mut KeyCache,
) -> Result<(), VerifyError> {
    let key = cache.get(author)?;
    let sig = Signature::from_bytes(signature);
    let mut msg = Vec::with_capacity(EVENT_SIGNING_DOMAIN.len() + payload.len());
    msg.extend_from_slice(EVENT_SIGNING_DOMAIN);
    msg.extend_from_slice(payload);
    key.verify_strict(&msg, &sig)
        .map_err(|_| VerifyError::BadSignature)
}
