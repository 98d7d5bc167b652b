//! The rows read from `accounts`, decoded into domain types once (see
//! [`super::types`]), each with the one list of columns that fills it.

use sqlx::FromRow;

use super::types::StoredProvider;
use crate::domain::{
    AccountId, AccountKind, AccountStatus, MailboxAddress, ProviderKind, TenantId,
};

/// The columns of an [`AccountRow`].
pub const ACCOUNT_COLUMNS: &str = "id, tenant_id, provider, email, auth_type, status, scopes, \
    access_token_enc, refresh_token_enc, token_expires_at, provider_tenant_id, \
    connected_at, last_refresh_at, last_error, consecutive_failures, lease_owner, lease_until, \
    refresh_due_at, kind, via_account_id, directory, cause, cause_at, last_used_at";

/// A stored account. No `Debug`: it carries ciphertexts that belong nowhere
/// near a log line.
#[derive(FromRow, Clone)]
pub struct AccountRow {
    pub id: AccountId,
    pub tenant_id: TenantId,
    pub provider: StoredProvider,
    pub email: MailboxAddress,
    pub auth_type: String,
    pub status: AccountStatus,
    pub scopes: String,
    pub access_token_enc: Option<String>,
    pub refresh_token_enc: Option<String>,
    pub token_expires_at: Option<i64>,
    pub provider_tenant_id: Option<String>,
    pub connected_at: Option<i64>,
    pub last_refresh_at: Option<i64>,
    pub last_error: Option<String>,
    pub consecutive_failures: i64,
    pub lease_owner: Option<String>,
    pub lease_until: Option<i64>,
    pub refresh_due_at: Option<i64>,
    pub kind: AccountKind,
    /// `shared`: the delegate's account id.
    pub via_account_id: Option<AccountId>,
    /// `app`: the Microsoft directory (tenant id).
    pub directory: Option<String>,
    /// Why it broke (a [`crate::diagnosis::Cause`] name), while it is.
    pub cause: Option<String>,
    pub cause_at: Option<i64>,
    /// When a token of it was last handed out, as last written (uses are
    /// written in batches, see [`crate::core::refresh::uses`]).
    pub last_used_at: Option<i64>,
}

/// The columns of a [`TokenRow`], in its fields' order.
pub const TOKEN_COLUMNS: &str = "id, provider, email, status, access_token_enc, \
    token_expires_at, provider_tenant_id, kind, via_account_id, directory";

/// What the token route needs to hand out a stored token. The hot path
/// reads only these columns (the refresh token's ciphertext stays put).
#[derive(FromRow, Clone)]
pub struct TokenRow {
    pub id: AccountId,
    pub provider: StoredProvider,
    pub email: MailboxAddress,
    pub status: AccountStatus,
    pub access_token_enc: Option<String>,
    pub token_expires_at: Option<i64>,
    pub provider_tenant_id: Option<String>,
    pub kind: AccountKind,
    /// `shared`: the delegate whose token opens the mailbox.
    pub via_account_id: Option<AccountId>,
    /// `app`: the Microsoft directory whose app token opens the mailbox.
    pub directory: Option<String>,
    /// `shared`, when read together (the direct SQLite read joins it): the
    /// delegate's own row, of the same tenant.
    #[sqlx(skip)]
    pub delegate: Option<Box<TokenRow>>,
    /// `app`, when read together: the directory's stored app token.
    #[sqlx(skip)]
    pub app_token: Option<StoredAppToken>,
}

/// A directory's app token as the token route reads it beside the account.
#[derive(Clone)]
pub struct StoredAppToken {
    pub access_token_enc: Option<String>,
    pub expires_at: Option<i64>,
}

impl TokenRow {
    /// A row read as text (the direct SQLite read), parsed as the pool's
    /// decoding parses it.
    #[allow(clippy::too_many_arguments)]
    pub fn parse(
        id: &str,
        provider: &str,
        email: &str,
        status: &str,
        access_token_enc: Option<String>,
        token_expires_at: Option<i64>,
        provider_tenant_id: Option<String>,
        kind: &str,
        via_account_id: Option<String>,
        directory: Option<String>,
    ) -> Result<TokenRow, String> {
        Ok(TokenRow {
            id: AccountId::parse(id).map_err(|e| format!("accounts.id {id:?}: {e}"))?,
            provider: match ProviderKind::parse(provider) {
                Some(kind) => StoredProvider::Known(kind),
                None => StoredProvider::Unknown(provider.to_owned()),
            },
            email: MailboxAddress::parse(email)
                .map_err(|e| format!("stored address {email:?}: {e}"))?,
            status: AccountStatus::parse(status)
                .ok_or_else(|| format!("unknown account status {status:?} stored"))?,
            access_token_enc,
            token_expires_at,
            provider_tenant_id,
            kind: AccountKind::parse(kind)
                .ok_or_else(|| format!("unknown account kind {kind:?} stored"))?,
            via_account_id: via_account_id
                .map(|v| {
                    AccountId::parse(&v).map_err(|e| format!("accounts.via_account_id {v:?}: {e}"))
                })
                .transpose()?,
            directory,
            delegate: None,
            app_token: None,
        })
    }
}

impl From<&AccountRow> for TokenRow {
    fn from(r: &AccountRow) -> TokenRow {
        TokenRow {
            id: r.id,
            provider: r.provider.clone(),
            email: r.email.clone(),
            status: r.status,
            access_token_enc: r.access_token_enc.clone(),
            token_expires_at: r.token_expires_at,
            provider_tenant_id: r.provider_tenant_id.clone(),
            kind: r.kind,
            via_account_id: r.via_account_id,
            directory: r.directory.clone(),
            delegate: None,
            app_token: None,
        }
    }
}

/// A directory's app token as stored (the token sealed). No `Debug`, like
/// [`AccountRow`]: a ciphertext belongs nowhere near a log line.
#[derive(Clone, sqlx::FromRow)]
pub struct AppTokenRow {
    pub directory: String,
    pub access_token_enc: Option<String>,
    pub expires_at: Option<i64>,
    pub refresh_due_at: Option<i64>,
    /// 1 while the directory refuses the app (its app mailboxes are then
    /// `needs_reauth`).
    pub refused: i64,
    pub last_error: Option<String>,
    pub consecutive_failures: i64,
}

pub const APP_TOKEN_COLUMNS: &str =
    "directory, access_token_enc, expires_at, refresh_due_at, refused, last_error, consecutive_failures";
