//! X25519 keys in WireGuard's base64 text form.
//!
//! Key material is never formatted by `Debug`/`Display` here; only public keys
//! have a printable form.

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
pub use boringtun::x25519::{PublicKey, StaticSecret};

use crate::error::TunnelError;

/// A fresh private key from the OS random source.
pub fn generate() -> StaticSecret {
    StaticSecret::random_from_rng(rand_core::OsRng)
}

pub fn encode_private(key: &StaticSecret) -> String {
    STANDARD.encode(key.to_bytes())
}

pub fn encode_public(key: &PublicKey) -> String {
    STANDARD.encode(key.as_bytes())
}

fn decode32(text: &str, what: &str) -> Result<[u8; 32], TunnelError> {
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|_| TunnelError::Key(format!("{what} is not valid base64")))?;
    bytes
        .try_into()
        .map_err(|_| TunnelError::Key(format!("{what} must decode to 32 bytes")))
}

pub fn parse_private_key(text: &str) -> Result<StaticSecret, TunnelError> {
    decode32(text, "private key").map(StaticSecret::from)
}

pub fn parse_public_key(text: &str) -> Result<PublicKey, TunnelError> {
    decode32(text, "public key").map(PublicKey::from)
}

/// Reads a base64 private key file (as written by [`encode_private`]).
pub fn read_private_key_file(path: &Path) -> Result<StaticSecret, TunnelError> {
    let text = std::fs::read_to_string(path).map_err(|error| TunnelError::KeyFile {
        path: path.to_owned(),
        error,
    })?;
    parse_private_key(&text).map_err(|e| TunnelError::Key(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_key_round_trips_and_derives_the_same_public_key() {
        let key = generate();
        let parsed = parse_private_key(&encode_private(&key)).unwrap();
        assert_eq!(
            PublicKey::from(&key).as_bytes(),
            PublicKey::from(&parsed).as_bytes()
        );
    }

    #[test]
    fn public_key_round_trips() {
        let public = PublicKey::from(&generate());
        let parsed = parse_public_key(&encode_public(&public)).unwrap();
        assert_eq!(public.as_bytes(), parsed.as_bytes());
    }

    #[test]
    fn bad_keys_are_rejected_with_a_reason() {
        let err = parse_public_key("not base64!").unwrap_err().to_string();
        assert!(err.contains("not valid base64"), "{err}");
        let err = parse_public_key("AAAA").unwrap_err().to_string();
        assert!(err.contains("32 bytes"), "{err}");
    }

    #[test]
    fn missing_key_file_names_the_path() {
        let Err(err) = read_private_key_file(Path::new("/nonexistent/agent.key")) else {
            panic!("a missing file must be an error");
        };
        let err = err.to_string();
        assert!(err.contains("/nonexistent/agent.key"), "{err}");
    }
}
