//! Encryption of stored secrets (AES-256-GCM) and the key ring behind it.
//!
//! A sealed value reads `v1:{kid}:{nonce}:{ciphertext}` (base64url, no
//! padding). The associated data names the table, row and column the value
//! belongs to, so a ciphertext copied into another row or column fails to
//! open. The first key of the ring seals; every key opens, so a new key can
//! be put in front while old rows still decrypt.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};

const VERSION: &str = "v1";

/// The keys from `TOKEN_ENCRYPTION_KEYS`. `Debug` shows key ids only.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<(String, Aes256Gcm)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("stored secret is not in the v1 format")]
    Malformed,
    #[error("stored secret was sealed with key id {0:?}, which is not configured")]
    UnknownKey(String),
    #[error("stored secret failed authentication (tampered, or moved to another row or column)")]
    Tampered,
}

impl Keyring {
    /// Parses `kid:base64(32 bytes)` entries separated by commas.
    pub fn parse(raw: &str) -> Result<Keyring, String> {
        let mut keys = Vec::new();
        for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (kid, b64) = entry
                .split_once(':')
                .ok_or("each entry must be kid:base64key")?;
            if kid.is_empty()
                || !kid
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            {
                return Err("a key id must be non-empty letters, digits, '-', '_' or '.'".into());
            }
            if keys.iter().any(|(k, _)| k == kid) {
                return Err(format!("key id {kid:?} appears twice"));
            }
            let bytes = STANDARD
                .decode(b64)
                .or_else(|_| URL_SAFE_NO_PAD.decode(b64))
                .map_err(|_| format!("key {kid:?} is not valid base64"))?;
            if bytes.len() != 32 {
                return Err(format!(
                    "key {kid:?} must decode to 32 bytes, not {}",
                    bytes.len()
                ));
            }
            let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| "bad key length")?;
            keys.push((kid.to_owned(), cipher));
        }
        if keys.is_empty() {
            return Err("at least one key is required".into());
        }
        Ok(Keyring { keys })
    }

    /// A fresh random key, for `serve --dev` and tests.
    pub fn random(kid: &str) -> Keyring {
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        Keyring {
            keys: vec![(kid.to_owned(), Aes256Gcm::new(&key.into()))],
        }
    }

    pub fn primary_kid(&self) -> &str {
        &self.keys[0].0
    }

    pub fn seal(&self, plaintext: &str, aad: &Aad) -> String {
        let (kid, cipher) = &self.keys[0];
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        let ciphertext = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: aad.0.as_bytes(),
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        format!(
            "{VERSION}:{kid}:{}:{}",
            URL_SAFE_NO_PAD.encode(nonce),
            URL_SAFE_NO_PAD.encode(ciphertext)
        )
    }

    pub fn open(&self, sealed: &str, aad: &Aad) -> Result<SecretString, CryptoError> {
        let mut parts = sealed.split(':');
        let (Some(VERSION), Some(kid), Some(nonce), Some(ct), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(CryptoError::Malformed);
        };
        let (_, cipher) = self
            .keys
            .iter()
            .find(|(k, _)| k == kid)
            .ok_or_else(|| CryptoError::UnknownKey(kid.to_owned()))?;
        let nonce = URL_SAFE_NO_PAD
            .decode(nonce)
            .ok()
            .filter(|n| n.len() == 12)
            .ok_or(CryptoError::Malformed)?;
        let ct = URL_SAFE_NO_PAD
            .decode(ct)
            .map_err(|_| CryptoError::Malformed)?;
        let plain = cipher
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &ct,
                    aad: aad.0.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Tampered)?;
        String::from_utf8(plain)
            .map(SecretString::from)
            .map_err(|_| CryptoError::Malformed)
    }

    /// Whether a sealed value was made with the current first key.
    pub fn is_current(&self, sealed: &str) -> bool {
        sealed
            .split(':')
            .nth(1)
            .is_some_and(|kid| kid == self.primary_kid())
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field(
                "kids",
                &self.keys.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Associated data binding a ciphertext to its place: `table/row/column`.
pub struct Aad(String);

impl Aad {
    pub fn new(table: &str, row: &str, column: &str) -> Aad {
        Aad(format!("{table}/{row}/{column}"))
    }
}

/// Every place a sealed secret is stored. The associated data of each is
/// fixed here, once: stored ciphertexts depend on these exact strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    /// `accounts.access_token_enc`
    AccessToken,
    /// `accounts.refresh_token_enc`
    RefreshToken,
    /// `accounts.password_enc`
    Password,
    /// The PKCE verifier and nonce sealed inside a state (row: its `jti`).
    StatePkce,
    /// `app_tokens.access_token_enc` (row: the directory).
    AppToken,
}

impl Column {
    /// The account columns `keys rotate` re-seals, with their SQL names.
    pub const ACCOUNT_SECRETS: [(Column, &'static str); 3] = [
        (Column::AccessToken, "access_token_enc"),
        (Column::RefreshToken, "refresh_token_enc"),
        (Column::Password, "password_enc"),
    ];

    /// The associated data for the value of this column in row `row`.
    pub fn aad(self, row: &str) -> Aad {
        let (table, column) = match self {
            Column::AccessToken => ("accounts", "access_token"),
            Column::RefreshToken => ("accounts", "refresh_token"),
            Column::Password => ("accounts", "password"),
            Column::StatePkce => ("oauth_state", "pkce"),
            Column::AppToken => ("app_tokens", "access_token"),
        };
        Aad::new(table, row, column)
    }
}

impl Keyring {
    /// Seals a secret for `column` of row `row`.
    pub fn seal_for(&self, column: Column, row: &str, secret: &SecretString) -> String {
        self.seal(secret.expose_secret(), &column.aad(row))
    }

    /// Opens the value of `column` in row `row`.
    pub fn open_for(
        &self,
        column: Column,
        row: &str,
        sealed: &str,
    ) -> Result<SecretString, CryptoError> {
        self.open(sealed, &column.aad(row))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aad() -> Aad {
        Aad::new("accounts", "row-1", "access_token")
    }

    #[test]
    fn round_trip() {
        let ring = Keyring::random("k1");
        let sealed = ring.seal("EwA-secret-token", &aad());
        assert!(sealed.starts_with("v1:k1:"));
        assert!(!sealed.contains("secret"));
        assert_eq!(
            ring.open(&sealed, &aad()).unwrap().expose_secret(),
            "EwA-secret-token"
        );
    }

    #[test]
    fn tampered_ciphertext_is_refused() {
        let ring = Keyring::random("k1");
        let sealed = ring.seal("token", &aad());
        let mut bytes = sealed.into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert_eq!(
            ring.open(&tampered, &aad()).unwrap_err(),
            CryptoError::Tampered
        );
    }

    #[test]
    fn ciphertext_moved_to_another_column_is_refused() {
        let ring = Keyring::random("k1");
        let sealed = ring.seal("token", &aad());
        let other = Aad::new("accounts", "row-1", "refresh_token");
        assert_eq!(
            ring.open(&sealed, &other).unwrap_err(),
            CryptoError::Tampered
        );
        let other_row = Aad::new("accounts", "row-2", "access_token");
        assert_eq!(
            ring.open(&sealed, &other_row).unwrap_err(),
            CryptoError::Tampered
        );
    }

    #[test]
    fn a_new_key_in_front_still_opens_old_values() {
        let old = Keyring::parse("old:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap();
        let sealed = old.seal("token", &aad());
        let both = Keyring::parse(
            "new:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=,old:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        )
        .unwrap();
        assert_eq!(both.open(&sealed, &aad()).unwrap().expose_secret(), "token");
        assert!(both.seal("t", &aad()).starts_with("v1:new:"));
        assert!(!both.is_current(&sealed));
    }

    #[test]
    fn unknown_key_and_malformed_values_are_refused() {
        let ring = Keyring::random("k1");
        let sealed = Keyring::random("k2").seal("token", &aad());
        assert_eq!(
            ring.open(&sealed, &aad()).unwrap_err(),
            CryptoError::UnknownKey("k2".into())
        );
        for bad in ["", "v1:k1", "v2:k1:AA:AA", "v1:k1:!!:AA", "v1:k1:AA:AA:AA"] {
            assert!(ring.open(bad, &aad()).is_err(), "{bad}");
        }
    }

    #[test]
    fn key_list_errors_name_the_problem() {
        assert!(Keyring::parse("").is_err());
        assert!(Keyring::parse("nokey").is_err());
        assert!(Keyring::parse("k:c2hvcnQ=")
            .unwrap_err()
            .contains("32 bytes"));
        let k = "k:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        assert!(Keyring::parse(&format!("{k},{k}"))
            .unwrap_err()
            .contains("twice"));
    }

    /// Stored ciphertexts were sealed with these exact strings: changing
    /// one would make every stored secret of that column unreadable.
    #[test]
    fn column_associated_data_is_fixed() {
        for (column, aad) in [
            (Column::AccessToken, "accounts/r1/access_token"),
            (Column::RefreshToken, "accounts/r1/refresh_token"),
            (Column::Password, "accounts/r1/password"),
            (Column::StatePkce, "oauth_state/r1/pkce"),
        ] {
            assert_eq!(column.aad("r1").0, aad);
        }
        let ring = Keyring::random("k1");
        let secret = SecretString::from("tok");
        let sealed = ring.seal_for(Column::RefreshToken, "r1", &secret);
        assert_eq!(
            ring.open_for(Column::RefreshToken, "r1", &sealed)
                .unwrap()
                .expose_secret(),
            "tok"
        );
        assert!(sealed.starts_with("v1:k1:"));
        assert_eq!(ring.primary_kid(), "k1");
        assert!(ring.is_current(&sealed));
        assert!(ring.open_for(Column::AccessToken, "r1", &sealed).is_err());
        assert!(ring.open_for(Column::RefreshToken, "r2", &sealed).is_err());
    }

    #[test]
    fn debug_shows_no_key_material() {
        let ring = Keyring::parse("k1:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=").unwrap();
        assert_eq!(format!("{ring:?}"), r#"Keyring { kids: ["k1"] }"#);
    }

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn key_ids_are_letters_digits_dashes_underscores_and_dots() {
        for kid in ["k1", "K", "a-b", "a_b", "a.b", "2026-01_rotation.v2"] {
            assert!(Keyring::parse(&format!("{kid}:{KEY}")).is_ok(), "{kid}");
        }
        for kid in ["", "a/b", "a b", "a:b", "k\u{e9}", "a+b"] {
            assert!(Keyring::parse(&format!("{kid}:{KEY}")).is_err(), "{kid:?}");
        }
        // Blank entries are skipped; two ids are two keys, one id twice is an error.
        let ring = Keyring::parse(&format!(" , a:{KEY} ,, b:{KEY}, ")).unwrap();
        assert_eq!(format!("{ring:?}"), r#"Keyring { kids: ["a", "b"] }"#);
        let e = Keyring::parse(&format!("a:{KEY},a:{KEY}")).err().unwrap();
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn keys_must_be_32_bytes_in_either_base64() {
        let url_safe = URL_SAFE_NO_PAD.encode([7u8; 32]);
        assert!(Keyring::parse(&format!("k:{url_safe}")).is_ok());
        for n in [16, 31, 33] {
            let e = Keyring::parse(&format!("k:{}", STANDARD.encode(vec![1u8; n])))
                .err()
                .unwrap();
            assert!(e.contains(&format!("not {n}")), "{e}");
        }
        assert!(Keyring::parse("k:not base64!").is_err());
    }
}
