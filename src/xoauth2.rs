//! The SASL initial responses that IMAP and SMTP servers accept in place of
//! a password: XOAUTH2 (Microsoft, Google, Dovecot) and its standard
//! successor OAUTHBEARER (RFC 7628).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use secrecy::{ExposeSecret, SecretString};

use crate::domain::MailboxAddress;

/// `base64("user=" + address + "\x01auth=Bearer " + token + "\x01\x01")`.
pub fn xoauth2(address: &MailboxAddress, access_token: &SecretString) -> SecretString {
    let raw = format!(
        "user={}\x01auth=Bearer {}\x01\x01",
        address.as_str(),
        access_token.expose_secret()
    );
    SecretString::from(STANDARD.encode(raw))
}

/// RFC 7628: `base64("n,a=" + user + ",\x01host=" + host + "\x01port=" +
/// port + "\x01auth=Bearer " + token + "\x01\x01")`, the user escaped as
/// a GS2 authzid (RFC 5801: `,` as `=2C`, `=` as `=3D`).
pub fn oauthbearer(
    address: &MailboxAddress,
    host: &str,
    port: u16,
    access_token: &SecretString,
) -> SecretString {
    let user = address.as_str().replace('=', "=3D").replace(',', "=2C");
    let raw = format!(
        "n,a={user},\x01host={host}\x01port={port}\x01auth=Bearer {}\x01\x01",
        access_token.expose_secret()
    );
    SecretString::from(STANDARD.encode(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oauthbearer_follows_rfc_7628() {
        let addr = MailboxAddress::parse("user@example.com").unwrap();
        let token = SecretString::from("vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==");
        let encoded = oauthbearer(&addr, "server.example.com", 143, &token);
        let raw = String::from_utf8(STANDARD.decode(encoded.expose_secret()).unwrap()).unwrap();
        // RFC 7628 section 4.1's example, byte for byte.
        assert_eq!(
            raw,
            "n,a=user@example.com,\x01host=server.example.com\x01port=143\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01"
        );
        let odd = MailboxAddress::parse("a=b,c@example.com").unwrap();
        let raw = STANDARD
            .decode(oauthbearer(&odd, "h", 1, &token).expose_secret())
            .unwrap();
        assert!(String::from_utf8(raw)
            .unwrap()
            .starts_with("n,a=a=3Db=2Cc@example.com,\x01"));
    }

    #[test]
    fn encodes_as_the_sasl_mechanism_expects() {
        let addr = MailboxAddress::parse("someuser@example.com").unwrap();
        let token = SecretString::from("ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg");
        // The example from Google's XOAUTH2 protocol documentation.
        assert_eq!(
            xoauth2(&addr, &token).expose_secret(),
            "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
        );
    }
}
