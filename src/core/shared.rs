//! Shared mailboxes follow their delegate (DESIGN.md "Account kinds"): a
//! `shared` account holds no token; the delegate's `needs_reauth` or
//! disconnect is its own, and the delegate's reconnect (or recovery) heals
//! it. Each change is written in the delegate's own transaction, one audit
//! event and one webhook event per shared mailbox, in address order after
//! the delegate's own event.

use sqlx::AnyConnection;

use super::Core;
use crate::db::accounts::{self, Follower};
use crate::db::audit;
use crate::diagnosis::Cause;
use crate::domain::{AccountId, AccountStatus};
use crate::webhooks::{Event, EventType};

/// Why a shared mailbox was disconnected when its delegate was: what a
/// reconnect of the delegate may undo (an admin's own disconnect stays).
pub const DELEGATE_DISCONNECTED: &str = "delegate_disconnected";

/// What happened to a delegate.
#[derive(Clone, Copy)]
pub enum DelegateChange<'a> {
    /// Its grant is gone (the provider's error code, and why).
    NeedsReauth { error: &'a str, cause: Cause },
    /// An admin disconnected it.
    Disconnected,
    /// It works again: reconnected, or a refresh stored late recovered it.
    Healed,
}

impl DelegateChange<'_> {
    /// Where a follower in `f`'s state goes, if anywhere.
    fn target(&self, f: &Follower) -> Option<AccountStatus> {
        match (self, f.status) {
            (DelegateChange::NeedsReauth { .. }, AccountStatus::Connected) => {
                Some(AccountStatus::NeedsReauth)
            }
            (
                DelegateChange::Disconnected,
                AccountStatus::Connected | AccountStatus::NeedsReauth,
            ) => Some(AccountStatus::Disconnected),
            (DelegateChange::Healed, AccountStatus::NeedsReauth) => Some(AccountStatus::Connected),
            (DelegateChange::Healed, AccountStatus::Disconnected)
                if f.last_error.as_deref() == Some(DELEGATE_DISCONNECTED) =>
            {
                Some(AccountStatus::Connected)
            }
            _ => None,
        }
    }
}

/// Carries `change` of `delegate` to its shared mailboxes, on the caller's
/// transaction. Returns how many changed.
pub async fn follow(
    conn: &mut AnyConnection,
    core: &Core,
    delegate: AccountId,
    change: DelegateChange<'_>,
    now: i64,
) -> sqlx::Result<usize> {
    let mut changed = 0;
    for f in accounts::followers(conn, delegate).await? {
        let Some(to) = change.target(&f) else {
            continue;
        };
        let (error, event, action, outcome) = match change {
            DelegateChange::NeedsReauth { error, .. } => (
                Some(error),
                EventType::AccountNeedsReauth,
                "refresh_failed",
                "needs_reauth",
            ),
            DelegateChange::Disconnected => (
                Some(DELEGATE_DISCONNECTED),
                EventType::AccountDisconnected,
                "disconnect",
                "disconnected",
            ),
            DelegateChange::Healed => (None, EventType::AccountRecovered, "recover", "connected"),
        };
        let detail = format!("follows its delegate {delegate}");
        let moved = Move {
            to,
            // A code for `needs_reauth`; the delegate's disconnect is said
            // by the audit trail (and `last_error`), not as a provider error.
            last_error: error,
            event,
            event_error: match change {
                DelegateChange::NeedsReauth { error, .. } => Some(error),
                _ => None,
            },
            cause: match change {
                DelegateChange::NeedsReauth { cause, .. } => Some(cause),
                _ => None,
            },
            action,
            outcome,
            detail: &detail,
            directory: None,
        };
        move_follower(conn, core, &f, &moved, now).await?;
        changed += 1;
    }
    Ok(changed)
}

/// Where a mailbox that holds no token of its own goes, and how that is
/// written down.
pub(super) struct Move<'a> {
    pub to: AccountStatus,
    pub last_error: Option<&'a str>,
    pub event: EventType,
    pub event_error: Option<&'a str>,
    /// Why, while it is troubled: stored and told in its event.
    pub cause: Option<Cause>,
    pub action: &'a str,
    pub outcome: &'a str,
    pub detail: &'a str,
    pub directory: Option<&'a str>,
}

/// Moves a `shared` or `app` mailbox as its delegate or directory changed:
/// its status, one audit event and one webhook event, on the caller's
/// transaction.
pub(super) async fn move_follower(
    conn: &mut AnyConnection,
    core: &Core,
    f: &Follower,
    m: &Move<'_>,
    now: i64,
) -> sqlx::Result<()> {
    let tenant = &f.tenant_id;
    accounts::set_follower_status(conn, f.id, m.to, m.last_error, m.cause, now).await?;
    let id = f.id.to_string();
    audit::record(
        &mut *conn,
        &audit::NewEvent {
            tenant_id: tenant.as_str(),
            account_id: Some(&id),
            provider: Some("microsoft"),
            action: m.action,
            actor: "system",
            outcome: m.outcome,
            detail: Some(m.detail),
        },
        now,
    )
    .await?;
    core.webhooks
        .enqueue(
            conn,
            &Event {
                kind: m.event,
                tenant_id: Some(tenant.as_str()),
                account_id: Some(&id),
                provider: "microsoft",
                email: Some(f.email.as_str()),
                error: m.event_error,
                directory: m.directory,
                cause: m.cause,
                expiry: None,
            },
            now,
        )
        .await
}
