//! The SASL initial responses of the token mechanisms: Google's and
//! Microsoft's XOAUTH2 (`user={user}^Aauth=Bearer {token}^A^A`) and
//! OAUTHBEARER (RFC 7628: `n,a={user},^Aauth=Bearer {token}^A^A`).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// A SASL mechanism the servers know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mechanism {
    XOAuth2,
    OAuthBearer,
    /// A password mechanism (IMAP `AUTHENTICATE PLAIN`, SMTP `AUTH LOGIN`),
    /// which Exchange Online no longer takes (basic authentication is off).
    Password(&'static str),
}

impl Mechanism {
    pub(super) fn name(self) -> &'static str {
        match self {
            Mechanism::XOAuth2 => "XOAUTH2",
            Mechanism::OAuthBearer => "OAUTHBEARER",
            Mechanism::Password(name) => name,
        }
    }
}

/// What a token mechanism's initial response says.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Bearer {
    /// The mailbox named (`user=` / `a=`); empty when OAUTHBEARER names none.
    pub user: String,
    pub token: String,
}

/// The user and token of a base64 initial response; `None` when it is not
/// base64 or not the mechanism's shape.
pub(super) fn decode(mechanism: Mechanism, response: &str) -> Option<Bearer> {
    let raw = STANDARD.decode(response.trim()).ok()?;
    let text = std::str::from_utf8(&raw).ok()?;
    let (user, fields) = match mechanism {
        Mechanism::XOAuth2 => {
            let mut parts = text.splitn(2, '\x01');
            let user = parts.next()?.strip_prefix("user=")?;
            (user.to_string(), parts.next()?)
        }
        Mechanism::OAuthBearer => {
            let (gs2, fields) = text.split_once('\x01')?;
            (gs2_authzid(gs2)?, fields)
        }
        Mechanism::Password(_) => return None,
    };
    let token = fields
        .split('\x01')
        .find_map(|kv| kv.strip_prefix("auth="))
        .and_then(bearer_token)?;
    fields.ends_with("\x01\x01").then_some(())?;
    Some(Bearer {
        user,
        token: token.to_string(),
    })
}

/// The token of an `auth` value, `Bearer {token}` (scheme in any case).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("Bearer") && !token.is_empty()).then_some(token)
}

/// The authorization identity of an RFC 7628 GS2 header (`n,a=user,` or
/// `n,,`), with `=2C` and `=3D` decoded; empty when it names none.
fn gs2_authzid(header: &str) -> Option<String> {
    let mut parts = header.split(',');
    let flag = parts.next()?;
    if !matches!(flag, "n" | "y") {
        return None;
    }
    let authzid = parts.next()?;
    if parts.next() != Some("") || parts.next().is_some() {
        return None;
    }
    match authzid.strip_prefix("a=") {
        Some(a) => Some(a.replace("=2C", ",").replace("=3D", "=")),
        None if authzid.is_empty() => Some(String::new()),
        None => None,
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    fn b64(s: &str) -> String {
        STANDARD.encode(s)
    }

    #[test]
    fn xoauth2_names_user_and_token() {
        let r = b64("user=a@b.example\x01auth=Bearer EwA.tok\x01\x01");
        assert_eq!(
            decode(Mechanism::XOAuth2, &r),
            Some(Bearer {
                user: "a@b.example".into(),
                token: "EwA.tok".into()
            })
        );
        let lower_scheme = b64("user=a@b\x01auth=bearer t\x01\x01");
        assert!(decode(Mechanism::XOAuth2, &lower_scheme).is_some());
        for bad in [
            b64("user=a@b\x01auth=Bearer t\x01"),
            b64("auth=Bearer t\x01\x01"),
            b64("user=a@b\x01auth=Basic dXNlcg==\x01\x01"),
            b64("user=a@b\x01auth=Bearer \x01\x01"),
            "not base64!".into(),
            STANDARD.encode([0xff, 0xfe]),
        ] {
            assert_eq!(decode(Mechanism::XOAuth2, &bad), None, "{bad}");
        }
    }

    #[test]
    fn oauthbearer_names_the_authzid() {
        let r = b64("n,a=x=2Cy=3Dz@b.example,\x01host=h\x01port=993\x01auth=Bearer T\x01\x01");
        let got = decode(Mechanism::OAuthBearer, &r).unwrap();
        assert_eq!(
            (got.user.as_str(), got.token.as_str()),
            ("x,y=z@b.example", "T")
        );
        let anonymous = b64("n,,\x01auth=Bearer T\x01\x01");
        assert_eq!(decode(Mechanism::OAuthBearer, &anonymous).unwrap().user, "");
        for bad in [
            b64("p=x,a=u,\x01auth=Bearer T\x01\x01"),
            b64("n,u,\x01auth=Bearer T\x01\x01"),
            b64("n,a=u\x01auth=Bearer T\x01\x01"),
            b64("n,a=u,\x01host=h\x01\x01"),
        ] {
            assert_eq!(decode(Mechanism::OAuthBearer, &bad), None, "{bad}");
        }
    }
}
