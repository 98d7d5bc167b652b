//! Access tokens and refresh tokens as the fakes keep them: opaque random
//! strings with a record behind each; refresh tokens die by revocation, by
//! use under strict [`Rotation`], and by inactivity when asked.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// Refresh-token rotation policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rotation {
    /// A refresh token dies once used.
    Strict,
    /// The old refresh token stays valid after use (what Microsoft usually does).
    KeepOld,
}

/// `now + lifetime` (`now + fallback_secs` for a lifetime chrono cannot hold).
pub(crate) fn expiry(lifetime: Duration, fallback_secs: i64) -> DateTime<Utc> {
    Utc::now()
        + chrono::Duration::from_std(lifetime)
            .unwrap_or_else(|_| chrono::Duration::seconds(fallback_secs))
}

/// One access token; `data` is what the provider adds (a resource, a grant…).
pub(crate) struct Access<T> {
    /// Whose it is (UPN, email).
    pub subject: String,
    pub scopes: Vec<String>,
    pub expires_at: DateTime<Utc>,
    /// Killed early by `expire_access_tokens`.
    pub invalidated: bool,
    pub data: T,
}

impl<T> Access<T> {
    /// Neither invalidated nor expired.
    pub(crate) fn valid(&self) -> bool {
        !self.invalidated && Utc::now() < self.expires_at
    }
}

pub(crate) struct AccessTokens<T>(HashMap<String, Access<T>>);

impl<T> Default for AccessTokens<T> {
    fn default() -> Self {
        AccessTokens(HashMap::new())
    }
}

impl<T> AccessTokens<T> {
    /// A new token (`prefix` + `chars` random characters).
    pub(crate) fn issue(
        &mut self,
        prefix: &str,
        chars: usize,
        subject: &str,
        scopes: Vec<String>,
        expires_at: DateTime<Utc>,
        data: T,
    ) -> String {
        let token = super::random_token(prefix, chars);
        self.insert(token.clone(), subject, scopes, expires_at, data);
        token
    }

    /// Records `token`, made by the caller (who needed it earlier, for an
    /// id_token's `at_hash`, say).
    pub(crate) fn insert(
        &mut self,
        token: String,
        subject: &str,
        scopes: Vec<String>,
        expires_at: DateTime<Utc>,
        data: T,
    ) {
        self.0.insert(
            token,
            Access {
                subject: subject.to_string(),
                scopes,
                expires_at,
                invalidated: false,
                data,
            },
        );
    }

    pub(crate) fn get(&self, token: &str) -> Option<&Access<T>> {
        self.0.get(token)
    }

    /// Every token issued so far is invalid from now on.
    pub(crate) fn invalidate_all(&mut self) {
        self.invalidate_where(|_| true);
    }

    /// `token` is invalid from now on; whether it was valid.
    pub(crate) fn invalidate(&mut self, token: &str) -> bool {
        self.0.get_mut(token).is_some_and(|at| {
            let was = at.valid();
            at.invalidated = true;
            was
        })
    }

    /// The tokens `pick` picks are invalid from now on; how many were valid.
    pub(crate) fn invalidate_where(&mut self, pick: impl Fn(&Access<T>) -> bool) -> usize {
        let mut killed = 0;
        for at in self.0.values_mut().filter(|at| pick(at)) {
            killed += usize::from(at.valid());
            at.invalidated = true;
        }
        killed
    }
}

/// One refresh token; `data` is what the provider needs to honour it (the
/// consented scopes, …).
#[derive(Clone)]
pub(crate) struct Refresh<G> {
    pub client_id: String,
    /// Whose it is (UPN, email).
    pub subject: String,
    pub used: bool,
    pub revoked: bool,
    /// When it was issued: it is used once (or, under `KeepOld`, each use
    /// issues a new one), so this is when its grant was last active.
    pub issued_at: DateTime<Utc>,
    pub data: G,
}

impl<G> Refresh<G> {
    pub(crate) fn new(client_id: &str, subject: &str, data: G) -> Refresh<G> {
        Refresh {
            client_id: client_id.to_string(),
            subject: subject.to_string(),
            used: false,
            revoked: false,
            issued_at: Utc::now(),
            data,
        }
    }

    /// The token that replaces this one at a refresh: same grant, fresh.
    pub(crate) fn successor(self) -> Refresh<G> {
        Refresh {
            used: false,
            revoked: false,
            issued_at: Utc::now(),
            ..self
        }
    }
}

/// Why a refresh token is refused, in the order the checks run.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RefreshProblem {
    Revoked,
    /// Used already, under [`Rotation::Strict`].
    Used,
    /// Unused for longer than the allowed inactivity.
    Idle,
    OtherClient,
}

/// The refresh tokens a fake issued, and its rotation and inactivity rules.
pub(crate) struct RefreshTokens<G> {
    tokens: HashMap<String, Refresh<G>>,
    pub rotation: Rotation,
    pub max_idle: Option<chrono::Duration>,
}

impl<G: Clone> RefreshTokens<G> {
    pub(crate) fn new(rotation: Rotation) -> RefreshTokens<G> {
        RefreshTokens {
            tokens: HashMap::new(),
            rotation,
            max_idle: None,
        }
    }

    /// Stores `rec` under a new token (`prefix` + `chars` random characters).
    pub(crate) fn issue(&mut self, prefix: &str, chars: usize, rec: Refresh<G>) -> String {
        let token = super::random_token(prefix, chars);
        self.tokens.insert(token.clone(), rec);
        token
    }

    pub(crate) fn get(&self, token: &str) -> Option<&Refresh<G>> {
        self.tokens.get(token)
    }

    fn idle_too_long(&self, rec: &Refresh<G>) -> bool {
        self.max_idle
            .is_some_and(|max| Utc::now() - rec.issued_at > max)
    }

    /// Known, and none of [`RefreshProblem`] but `OtherClient`.
    pub(crate) fn is_live(&self, token: &str) -> bool {
        self.tokens.get(token).is_some_and(|rec| {
            let dead_by_rotation = rec.used && self.rotation == Rotation::Strict;
            !rec.revoked && !dead_by_rotation && !self.idle_too_long(rec)
        })
    }

    /// The record of `token` if `client_id` may use it now; `Ok(None)` for
    /// a token never issued.
    pub(crate) fn check(
        &self,
        token: &str,
        client_id: &str,
    ) -> Result<Option<Refresh<G>>, (RefreshProblem, Refresh<G>)> {
        let Some(rec) = self.tokens.get(token) else {
            return Ok(None);
        };
        let problem = if rec.revoked {
            Some(RefreshProblem::Revoked)
        } else if rec.used && self.rotation == Rotation::Strict {
            Some(RefreshProblem::Used)
        } else if self.idle_too_long(rec) {
            Some(RefreshProblem::Idle)
        } else if rec.client_id != client_id {
            Some(RefreshProblem::OtherClient)
        } else {
            None
        };
        match problem {
            Some(p) => Err((p, rec.clone())),
            None => Ok(Some(rec.clone())),
        }
    }

    pub(crate) fn mark_used(&mut self, token: &str) {
        if let Some(rec) = self.tokens.get_mut(token) {
            rec.used = true;
        }
    }

    /// Kills one token.
    pub(crate) fn revoke(&mut self, token: &str) {
        if let Some(rec) = self.tokens.get_mut(token) {
            rec.revoked = true;
        }
    }

    /// Kills every token of `subject` (compared case-insensitively).
    pub(crate) fn revoke_subject(&mut self, subject: &str) {
        self.revoke_where(|rec| rec.subject.eq_ignore_ascii_case(subject));
    }

    /// Kills every token `pick` picks.
    pub(crate) fn revoke_where(&mut self, pick: impl Fn(&Refresh<G>) -> bool) {
        for rec in self.tokens.values_mut().filter(|rec| pick(rec)) {
            rec.revoked = true;
        }
    }

    /// Every token issued so far looks `by` older.
    pub(crate) fn age(&mut self, by: Duration) {
        let by = chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
        for rec in self.tokens.values_mut() {
            rec.issued_at -= by;
        }
    }

    /// Tokens unused for longer than `max` die (`None`: never).
    pub(crate) fn set_max_idle(&mut self, max: Option<Duration>) {
        self.max_idle = max.map(|d| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX));
    }
}
