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

/// Verifies an event signature strictly (no small-order keys, canonical S).
pub fn verify_event(
    author: &AuthorId,
    payload: &[u8],
    signature: &[u8; 64],
) -> Result<(), VerifyError> {
    let key = VerifyingKey::from_bytes(&author.0).map_err(|_| VerifyError::BadKey)?;
    if key.is_weak() {
        return Err(VerifyError::BadKey);
    }
    let sig = Signature::from_bytes(signature);
    let mut msg = Vec::with_capacity(EVENT_SIGNING_DOMAIN.len() + payload.len());
    msg.extend_from_slice(EVENT_SIGNING_DOMAIN);
    msg.extend_from_slice(payload);
    key.verify_strict(&msg, &sig)
        .map_err(|_| VerifyError::BadSignature)
}
