//! Strict DAG-CBOR. `serde_ipld_dagcbor` already rejects unsorted keys and non-minimal
//! integers; we additionally re-encode what we decoded and require byte equality, so exactly one
//! encoding of every value is accepted (this also catches explicit `null` for absent keys,
//! indefinite lengths and any rule the decoder is lenient about).

use serde::{Serialize, de::DeserializeOwned};

/// A decoding failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("not valid DAG-CBOR for this type: {0}")]
    Decode(String),
    #[error("not in canonical DAG-CBOR form")]
    NonCanonical,
}

/// Encodes a value as canonical DAG-CBOR.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Serialising our own types into a Vec cannot fail: no maps with non-string keys, no
    // unrepresentable values.
    serde_ipld_dagcbor::to_vec(value).expect("our types always encode")
}

/// Decodes and checks that `bytes` is the canonical encoding of the value.
pub fn decode_canonical<T: DeserializeOwned + Serialize>(bytes: &[u8]) -> Result<T, CodecError> {
    let value: T =
        serde_ipld_dagcbor::from_slice(bytes).map_err(|e| CodecError::Decode(e.to_string()))?;
    let again =
        serde_ipld_dagcbor::to_vec(&value).map_err(|e| CodecError::Decode(e.to_string()))?;
    if again != bytes {
        return Err(CodecError::NonCanonical);
    }
    Ok(value)
}
