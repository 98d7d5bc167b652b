//! The SASL XOAUTH2 initial response that IMAP and SMTP servers of
//! Microsoft and Google accept in place of a password.

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

#[cfg(test)]
mod tests {
    use super::*;

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
