//! Short-lived state that the gateways of a fleet share beside the accounts
//! (SPEC §9): the portal's sessions and the app-only tokens of
//! `client_credentials` providers, as sealed blobs of the [`Fleet`].
//!
//! Each blob is sealed (XChaCha20-Poly1305) under a key derived (HKDF-SHA256)
//! from a secret that the fleet's store never holds: a browser's session
//! cookie, or a provider's client secret. Its name is derived from the same
//! secret, and is the AEAD's associated data, so reading the store gives
//! neither the secret nor what it guards, and a blob moved to another name
//! does not open.

use std::time::Duration;

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand_core::OsRng;
use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use super::contract::Fleet;
use crate::accounts::store::StoreError;

/// The key and the Redis name of one shared blob.
pub struct Sealer {
    key: Zeroizing<[u8; 32]>,
    name: String,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// The sealer of `kind` (`signin`, `session`, ...) for `secret`.
    pub fn new(kind: &str, secret: &[u8]) -> Sealer {
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"mailgate-shared-v1"), secret);
        let mut key = Zeroizing::new([0u8; 32]);
        let mut id = [0u8; 16];
        // Both lengths are far below HKDF-SHA256's limit.
        let _ = hk.expand(format!("{kind}/key").as_bytes(), key.as_mut());
        let _ = hk.expand(format!("{kind}/name").as_bytes(), &mut id);
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        Sealer {
            key,
            name: format!("{kind}:{hex}"),
        }
    }

    /// Its name in the fleet's store.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `plain` sealed: nonce, then ciphertext.
    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, StoreError> {
        let cipher = XChaCha20Poly1305::new(self.key.as_ref().into());
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ct = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plain,
                    aad: self.name.as_bytes(),
                },
            )
            .map_err(|_| StoreError::Encode {
                what: "shared state",
                reason: "encryption failed".into(),
            })?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// What `blob` seals, or `None` when it was not sealed by this sealer
    /// (another key, another name, or damaged).
    pub fn open(&self, blob: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if blob.len() < 24 + 16 {
            return None;
        }
        let (nonce, ct) = blob.split_at(24);
        let cipher = XChaCha20Poly1305::new(self.key.as_ref().into());
        cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: self.name.as_bytes(),
                },
            )
            .ok()
            .map(Zeroizing::new)
    }
}

/// Seals `value` (as JSON) and stores it for `ttl`; with `only_new`, only
/// when nothing is stored under that name (whether it was stored).
pub async fn put<T: Serialize>(
    fleet: &Fleet,
    sealer: &Sealer,
    value: &T,
    ttl: Duration,
    only_new: bool,
) -> Result<bool, StoreError> {
    let plain = Zeroizing::new(serde_json::to_vec(value).map_err(|e| StoreError::Encode {
        what: "shared state",
        reason: e.to_string(),
    })?);
    let blob = sealer.seal(&plain)?;
    fleet.put(sealer.name(), blob, ttl, only_new).await
}

/// Reads and opens a blob (`take`: and deletes it). `Ok(None)` when there
/// is none, or it does not open or parse (logged: a blob that is not ours
/// is not an error of the caller's).
pub async fn get<T: DeserializeOwned>(
    fleet: &Fleet,
    sealer: &Sealer,
    take: bool,
) -> Result<Option<T>, StoreError> {
    let blob = fleet.get(sealer.name(), take).await?;
    let Some(blob) = blob else {
        return Ok(None);
    };
    let Some(plain) = sealer.open(&blob) else {
        tracing::warn!(name = %sealer.name(), "shared state that does not open; ignored");
        return Ok(None);
    };
    match serde_json::from_slice(&plain) {
        Ok(v) => Ok(Some(v)),
        Err(e) => {
            tracing::warn!(name = %sealer.name(), error = %e, "shared state that does not parse; ignored");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_opens_only_with_its_secret_and_name() {
        let a = Sealer::new("signin", b"state-one");
        let b = Sealer::new("signin", b"state-two");
        let other_kind = Sealer::new("session", b"state-one");
        assert_ne!(a.name(), b.name());
        assert_ne!(a.name(), other_kind.name());
        let blob = a.seal(b"the code").expect("sealed");
        assert_eq!(a.open(&blob).expect("opens").as_slice(), b"the code");
        assert!(b.open(&blob).is_none());
        assert!(other_kind.open(&blob).is_none());
        let mut damaged = blob.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert!(a.open(&damaged).is_none());
        assert!(a.open(&blob[..10]).is_none());
        // The name reveals nothing of the secret.
        assert!(!a.name().contains("state"));
    }
}
