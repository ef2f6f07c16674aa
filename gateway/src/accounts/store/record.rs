//! An account's record: its sealed tokens and the metadata beside them.
//!
//! The tokens are sealed with XChaCha20-Poly1305 under a key derived from
//! the local password with Argon2id; decrypting them *is* the password
//! check. The metadata (user, provider, times, last error, generation)
//! stays in clear so `mailgate accounts` needs no password.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{AeadCore, XChaCha20Poly1305, XNonce};
use rand_core::{OsRng, RngCore};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::{ZeroizeOnDrop, Zeroizing};

use super::error::{StoreError, now};
use super::serde_secret;

/// Current file format version.
const VERSION: u32 = 1;
/// OWASP's recommended Argon2id parameters: 19 MiB, 2 passes, 1 lane.
const M_COST: u32 = 19 * 1024;
const T_COST: u32 = 2;
const P_COST: u32 = 1;

/// The Argon2id parameters and salt a file was sealed with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kdf {
    pub algorithm: String,
    pub m_cost: u32,
    pub t_cost: u32,
    pub p_cost: u32,
    /// base64
    pub salt: String,
}

/// The costliest Argon2id parameters a stored record may name: anything
/// beyond is a damaged (or planted) record, never a reason to spend
/// seconds of CPU or gigabytes of memory on one login. Four times the
/// memory and the passes the gateway itself seals with, two lanes.
pub const MAX_M_COST: u32 = 4 * M_COST;
pub const MAX_T_COST: u32 = 4 * T_COST;
pub const MAX_P_COST: u32 = 2;

impl Kdf {
    /// Whether the parameters are within what a record of this gateway can
    /// name (see [`MAX_M_COST`]); the reason when not.
    pub fn check(&self) -> Result<(), String> {
        if self.algorithm != "argon2id" {
            return Err(format!("unknown key derivation {}", self.algorithm));
        }
        if !(8..=MAX_M_COST).contains(&self.m_cost)
            || !(1..=MAX_T_COST).contains(&self.t_cost)
            || !(1..=MAX_P_COST).contains(&self.p_cost)
        {
            return Err(format!(
                "its Argon2id parameters (m={}, t={}, p={}) are outside what this gateway seals with",
                self.m_cost, self.t_cost, self.p_cost
            ));
        }
        if !(16..=88).contains(&self.salt.len()) {
            return Err("its salt has an impossible length".into());
        }
        Ok(())
    }

    /// Fresh parameters with a random salt.
    pub fn generate() -> Kdf {
        let mut salt = [0u8; 16];
        OsRng.fill_bytes(&mut salt);
        Kdf {
            algorithm: "argon2id".into(),
            m_cost: M_COST,
            t_cost: T_COST,
            p_cost: P_COST,
            salt: STANDARD.encode(salt),
        }
    }
}

/// A key derived from a local password. Wiped on drop.
#[derive(Clone, ZeroizeOnDrop)]
pub struct SealingKey {
    key: [u8; 32],
    #[zeroize(skip)]
    kdf: Kdf,
}

impl SealingKey {
    /// The parameters and salt it was derived with.
    pub fn kdf(&self) -> &Kdf {
        &self.kdf
    }
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey([REDACTED])")
    }
}

impl SealingKey {
    /// Derives the key (Argon2id; tens of milliseconds: call off the async
    /// threads).
    pub fn derive(password: &SecretString, kdf: &Kdf) -> Result<SealingKey, StoreError> {
        kdf.check().map_err(StoreError::Kdf)?;
        let salt = STANDARD
            .decode(&kdf.salt)
            .map_err(|_| StoreError::Kdf("salt is not base64".into()))?;
        let params = argon2::Params::new(kdf.m_cost, kdf.t_cost, kdf.p_cost, Some(32))
            .map_err(|e| StoreError::Kdf(e.to_string()))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut key = [0u8; 32];
        argon
            .hash_password_into(password.expose_secret().as_bytes(), &salt, &mut key)
            .map_err(|e| StoreError::Kdf(e.to_string()))?;
        Ok(SealingKey {
            key,
            kdf: kdf.clone(),
        })
    }
}

/// What an access token is for: the mail protocols (IMAP, POP3, SMTP:
/// one scope set), or Microsoft Graph. One refresh token serves them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Audience {
    Mail,
    Graph,
}

impl Audience {
    /// Its name in logs and keys.
    pub fn name(self) -> &'static str {
        match self {
            Audience::Mail => "mail",
            Audience::Graph => "graph",
        }
    }
}

/// An access token for one [`Audience`].
#[derive(Clone)]
pub struct Access {
    pub token: SecretString,
    /// Unix seconds.
    pub expires_at: u64,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("token", &"[REDACTED]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// The secret part of a token file: one refresh token and an access token
/// per audience. Secrets stay [`SecretString`]s from the provider's answer
/// to the sealed bytes.
#[derive(Clone, Default)]
pub struct Tokens {
    pub refresh_token: Option<SecretString>,
    pub access: BTreeMap<Audience, Access>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[REDACTED]"),
            )
            .field("access", &self.access)
            .finish()
    }
}

impl Tokens {
    /// A refresh token alone (the first login refreshes).
    pub fn refreshable(refresh_token: SecretString) -> Tokens {
        Tokens {
            refresh_token: Some(refresh_token),
            access: BTreeMap::new(),
        }
    }

    /// Sets the access token of `audience`.
    pub fn set_access(&mut self, audience: Audience, token: SecretString, expires_at: u64) {
        self.access.insert(audience, Access { token, expires_at });
    }

    /// The access token for `audience`, if there is one.
    pub fn access(&self, audience: Audience) -> Option<&Access> {
        self.access.get(&audience)
    }
}

/// The sealed form of [`Tokens`]. The mail audience keeps the fields of
/// version 1 (`access_token`, `expires_at`), so that files written before
/// audiences existed open unchanged, and an older gateway still opens a
/// newer file (it ignores `others`).
#[derive(Serialize, Deserialize)]
struct SealedTokens {
    #[serde(default, with = "serde_secret::option")]
    refresh_token: Option<SecretString>,
    #[serde(default, with = "serde_secret::option")]
    access_token: Option<SecretString>,
    #[serde(default)]
    expires_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    others: Vec<SealedAccess>,
}

#[derive(Serialize, Deserialize)]
struct SealedAccess {
    /// An audience this version does not know is kept out of [`Tokens`].
    audience: String,
    #[serde(with = "serde_secret")]
    token: SecretString,
    expires_at: u64,
}

impl From<&Tokens> for SealedTokens {
    fn from(t: &Tokens) -> SealedTokens {
        let mail = t.access(Audience::Mail);
        SealedTokens {
            refresh_token: t.refresh_token.clone(),
            access_token: mail.map(|a| a.token.clone()),
            expires_at: mail.map(|a| a.expires_at),
            others: t
                .access
                .iter()
                .filter(|(aud, _)| **aud != Audience::Mail)
                .filter_map(|(aud, a)| {
                    let audience = serde_json::to_value(aud).ok()?.as_str()?.to_owned();
                    Some(SealedAccess {
                        audience,
                        token: a.token.clone(),
                        expires_at: a.expires_at,
                    })
                })
                .collect(),
        }
    }
}

impl From<SealedTokens> for Tokens {
    fn from(s: SealedTokens) -> Tokens {
        let mut access = BTreeMap::new();
        if let Some(token) = s.access_token {
            access.insert(
                Audience::Mail,
                Access {
                    token,
                    expires_at: s.expires_at.unwrap_or(0),
                },
            );
        }
        for o in s.others {
            if let Ok(aud) =
                serde_json::from_value::<Audience>(serde_json::Value::String(o.audience))
                && aud != Audience::Mail
            {
                access.insert(
                    aud,
                    Access {
                        token: o.token,
                        expires_at: o.expires_at,
                    },
                );
            }
        }
        Tokens {
            refresh_token: s.refresh_token,
            access,
        }
    }
}

/// One account's file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFile {
    pub version: u32,
    /// Lower-cased login name.
    pub user: String,
    pub provider: String,
    pub sealed_at: u64,
    pub last_refresh: Option<u64>,
    pub last_error: Option<String>,
    /// Bumped by every write; with the rest of the file it tells a cache
    /// whether the file is still the one it read.
    #[serde(default)]
    pub generation: u64,
    /// Unix seconds when the sealed access token expires (a copy in clear,
    /// for `mailgate accounts`; not a secret).
    #[serde(default)]
    pub expires_at: Option<u64>,
    /// Set when the provider answered `invalid_grant`: the refresh token is
    /// dead and the user must authorise again.
    #[serde(default)]
    pub needs_authorization: bool,
    /// Set when the token endpoint refused a Microsoft Graph token for this
    /// account's refresh token: the sign-in did not allow `Mail.Send`
    /// (signed in before the provider sent through Graph, or the consent
    /// was withdrawn). Mail is still read; sending through Graph waits for
    /// a new sign-in, which clears it (as does a Graph token obtained).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub graph_refused: bool,
    /// Microsoft: the tenant (`tid`) the tokens were signed in from; a
    /// later sign-in from another one is refused (see
    /// [`crate::accounts::identity`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The addresses the owner logged in from with the right password
    /// (hashed, newest first; see [`crate::accounts::backoff`]): strangers'
    /// failures do not hold the owner back there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub familiar: Vec<String>,
    pub kdf: Kdf,
    /// base64, 24 bytes
    pub nonce: String,
    /// base64
    pub ciphertext: String,
}

fn aad(user: &str) -> Vec<u8> {
    format!("mailgate-tokens-v{VERSION}:{user}").into_bytes()
}

impl TokenFile {
    /// Seals `tokens` for `user` under `key`.
    pub fn seal(
        user: &str,
        provider: &str,
        key: &SealingKey,
        tokens: &Tokens,
    ) -> Result<TokenFile, StoreError> {
        let mut file = TokenFile {
            version: VERSION,
            user: user.to_owned(),
            provider: provider.to_owned(),
            sealed_at: now(),
            last_refresh: None,
            last_error: None,
            generation: 0,
            expires_at: None,
            needs_authorization: false,
            graph_refused: false,
            tenant: None,
            familiar: Vec::new(),
            kdf: key.kdf.clone(),
            nonce: String::new(),
            ciphertext: String::new(),
        };
        file.reseal(key, tokens)?;
        Ok(file)
    }

    /// Replaces the sealed tokens, keeping the metadata. Nothing changes
    /// when they cannot be sealed.
    pub fn reseal(&mut self, key: &SealingKey, tokens: &Tokens) -> Result<(), StoreError> {
        let encode = |reason: String| StoreError::Encode {
            what: "the tokens",
            reason,
        };
        let plain = Zeroizing::new(
            serde_json::to_vec(&SealedTokens::from(tokens)).map_err(|e| encode(e.to_string()))?,
        );
        let cipher = XChaCha20Poly1305::new((&key.key).into());
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let aad = aad(&self.user);
        let ct = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            .map_err(|_| encode("encryption failed".into()))?;
        self.expires_at = tokens.access(Audience::Mail).map(|a| a.expires_at);
        self.kdf = key.kdf.clone();
        self.nonce = STANDARD.encode(nonce);
        self.ciphertext = STANDARD.encode(ct);
        self.sealed_at = now();
        Ok(())
    }

    /// Opens the sealed tokens. A wrong key is [`StoreError::WrongPassword`].
    pub fn open(&self, key: &SealingKey, path: &Path) -> Result<Tokens, StoreError> {
        let corrupt = |reason: &str| StoreError::Corrupt {
            path: path.to_path_buf(),
            reason: reason.to_owned(),
        };
        let nonce = STANDARD
            .decode(&self.nonce)
            .map_err(|_| corrupt("nonce is not base64"))?;
        if nonce.len() != 24 {
            return Err(corrupt("nonce has the wrong length"));
        }
        let ct = STANDARD
            .decode(&self.ciphertext)
            .map_err(|_| corrupt("ciphertext is not base64"))?;
        if ct.len() < 16 {
            return Err(corrupt("ciphertext is shorter than its authentication tag"));
        }
        let cipher = XChaCha20Poly1305::new((&key.key).into());
        let plain = Zeroizing::new(
            cipher
                .decrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: &ct,
                        aad: &aad(&self.user),
                    },
                )
                .map_err(|_| StoreError::WrongPassword)?,
        );
        serde_json::from_slice::<SealedTokens>(&plain)
            .map(Tokens::from)
            .map_err(|_| corrupt("sealed content is not valid"))
    }
}

/// Parses a sealed token file read from `at`.
pub fn decode(bytes: &[u8], at: &Path) -> Result<TokenFile, StoreError> {
    let file: TokenFile = serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        path: at.to_path_buf(),
        reason: format!("not a token file: {e}"),
    })?;
    if file.version != VERSION {
        return Err(StoreError::Corrupt {
            path: at.to_path_buf(),
            reason: format!("unknown format version {}", file.version),
        });
    }
    file.kdf.check().map_err(|reason| StoreError::Corrupt {
        path: at.to_path_buf(),
        reason,
    })?;
    Ok(file)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A key derivation cheap enough for unit tests.
    pub(crate) fn cheap_kdf() -> Kdf {
        Kdf {
            m_cost: 64,
            t_cost: 1,
            ..Kdf::generate()
        }
    }

    /// A refresh token and a mail access token.
    pub(crate) fn tokens() -> Tokens {
        let mut t = Tokens {
            refresh_token: Some("rt-1".into()),
            ..Tokens::default()
        };
        t.access.insert(
            Audience::Mail,
            Access {
                token: "at-1".into(),
                expires_at: 123,
            },
        );
        t
    }

    #[test]
    fn seal_open_round_trip_and_wrong_password() {
        let kdf = cheap_kdf();
        let key = SealingKey::derive(&SecretString::from("pw"), &kdf).expect("derive");
        let file = TokenFile::seal("a@x.test", "p", &key, &tokens()).expect("seal");
        let path = Path::new("a.json");
        let t = file.open(&key, path).expect("open");
        assert_eq!(
            t.refresh_token.as_ref().map(|r| r.expose_secret()),
            Some("rt-1")
        );
        let wrong = SealingKey::derive(&SecretString::from("pW"), &kdf).expect("derive");
        assert!(matches!(
            file.open(&wrong, path),
            Err(StoreError::WrongPassword)
        ));
        // The sealed file names no secret.
        let json = serde_json::to_string(&file).expect("json");
        assert!(!json.contains("rt-1") && !json.contains("at-1"));
        // Bound to the user: moving the ciphertext to another user fails.
        let mut moved = file.clone();
        moved.user = "b@x.test".into();
        assert!(matches!(
            moved.open(&key, path),
            Err(StoreError::WrongPassword)
        ));
    }

    /// A version 1 file (before audiences) opens as the mail audience, and
    /// a Graph token is kept beside it without changing how version 1
    /// readers see the mail token.
    #[test]
    fn audiences_beside_the_first_format() {
        let key = SealingKey::derive(&SecretString::from("pw"), &cheap_kdf()).expect("derive");
        let v1 = br#"{"refresh_token":"rt","access_token":"at","expires_at":5}"#;
        let old: Tokens = serde_json::from_slice::<SealedTokens>(v1)
            .expect("v1")
            .into();
        assert_eq!(old.access(Audience::Mail).expect("mail").expires_at, 5);
        let mut both = old.clone();
        both.access.insert(
            Audience::Graph,
            Access {
                token: "graph-at".into(),
                expires_at: 9,
            },
        );
        let file = TokenFile::seal("a@x.test", "p", &key, &both).expect("seal");
        assert_eq!(
            file.expires_at,
            Some(5),
            "the clear copy is the mail token's"
        );
        let opened = file.open(&key, Path::new("a.json")).expect("open");
        assert_eq!(
            opened
                .access(Audience::Graph)
                .map(|a| a.token.expose_secret().to_owned()),
            Some("graph-at".to_owned())
        );
        assert_eq!(
            opened
                .access(Audience::Mail)
                .map(|a| a.token.expose_secret().to_owned()),
            Some("at".to_owned())
        );
        let sealed = Zeroizing::new(serde_json::to_vec(&SealedTokens::from(&both)).expect("json"));
        let v1_reader: serde_json::Value = serde_json::from_slice(&sealed).expect("value");
        assert_eq!(v1_reader["access_token"], "at");
        assert_eq!(v1_reader["refresh_token"], "rt");
    }
}
