//! Who signs in at authorize: the user picked on the consent page, else
//! the one set for the next login, else the `login_hint` user, else the
//! first configured user.

use crate::consent::Decision;

/// A user a fake lets sign in, known by an address (UPN, email).
pub(crate) trait Account: Clone {
    fn address(&self) -> &str;
    /// The display name.
    fn name(&self) -> &str;
    /// What kind of account the consent page says it is.
    fn kind(&self) -> String;
}

/// The accounts the consent page offers.
pub(crate) fn choices<U: Account>(users: &[U]) -> Vec<crate::consent::Choice> {
    users
        .iter()
        .map(|u| crate::consent::Choice {
            address: u.address().to_string(),
            name: u.name().to_string(),
            kind: u.kind(),
        })
        .collect()
}

/// The user with this address (case-insensitively).
pub(crate) fn find<U: Account>(users: &[U], address: &str) -> Option<U> {
    users
        .iter()
        .find(|u| u.address().eq_ignore_ascii_case(address))
        .cloned()
}

/// Why no user signs in.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PickProblem {
    /// The consent page accepted as an address that is no user.
    UnknownAccepted(String),
    /// `set_user_for_next_login` named no user.
    UnknownNext(String),
    /// No user is configured at all.
    NoUsers,
}

/// The user who signs in for `decision`; takes the next-login user (it
/// applies once) unless the consent page named one.
pub(crate) fn pick<U: Account>(
    users: &[U],
    next_login: &mut Option<String>,
    decision: &Decision,
    login_hint: Option<&str>,
) -> Result<U, PickProblem> {
    let wanted = match decision {
        Decision::Accept(address) => {
            if find(users, address).is_none() {
                return Err(PickProblem::UnknownAccepted(address.clone()));
            }
            Some(address.clone())
        }
        _ => next_login.take(),
    };
    let forced = match wanted {
        Some(address) => match find(users, &address) {
            Some(u) => Some(u),
            None => return Err(PickProblem::UnknownNext(address)),
        },
        None => None,
    };
    forced
        .or_else(|| login_hint.and_then(|h| find(users, h)))
        .or_else(|| users.first().cloned())
        .ok_or(PickProblem::NoUsers)
}
