//! The provider's redirect back, the same for every kind of flow: verify
//! the state (signature, provider, kind of flow, browser binding), spend it
//! once, then hand the answer to the flow it belongs to: connecting a
//! mailbox ([`super::flow`]) or an admin consent ([`super::consent`]).

use super::flow::{Back, CallbackOutcome, CallbackQuery};
use super::{consent, flow, Core};
use crate::db::states;
use crate::domain::ProviderKind;
use crate::oauth::state::{BrowserBinding, StateError, FLOW_ADMIN_CONSENT};
use crate::oauth::CallbackFailure;

pub async fn callback(core: &Core, kind: ProviderKind, q: CallbackQuery) -> CallbackOutcome {
    let Some(state) = q
        .state
        .as_deref()
        .filter(|s| !s.is_empty() && s.len() < 8192)
    else {
        return CallbackOutcome::Refused("The sign-in response carried no state.");
    };
    let now = crate::now();
    let (claims, expired) = match core.states.verify(state, now) {
        Ok(c) => (c, false),
        Err(StateError::Expired(c)) => (*c, true),
        Err(StateError::Invalid) => {
            tracing::warn!("callback with a state that does not verify");
            return CallbackOutcome::Refused(
                "The sign-in response carried a state that does not verify.",
            );
        }
    };
    if claims.prv != kind.as_str() {
        tracing::warn!(state_provider = %claims.prv, "callback state names another provider");
        return CallbackOutcome::Refused("The sign-in response belongs to another provider.");
    }
    let admin_consent = match claims.flw.as_deref() {
        None => false,
        Some(FLOW_ADMIN_CONSENT) => true,
        Some(_) => {
            tracing::warn!("callback state of an unknown kind of flow");
            return CallbackOutcome::Refused(
                "The sign-in response belongs to another kind of flow.",
            );
        }
    };
    // Checked before the state is consumed, so a replay in another browser
    // cannot spend the real browser's state.
    let forget_cookie = match &claims.bnd {
        None => None,
        Some(claim) => {
            let name = BrowserBinding::cookie_name(&claims.jti);
            let held = q.flow_cookies.get(&name);
            if !held.is_some_and(|secret| BrowserBinding::matches(claim, secret)) {
                tracing::warn!("callback state bound to another browser");
                return CallbackOutcome::Refused(
                    "This sign-in was started in another browser (or its cookie is gone).",
                );
            }
            Some(name)
        }
    };
    match states::consume(&core.db, &claims.jti, claims.exp).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!("callback with a state that was already used");
            return CallbackOutcome::Refused("This sign-in response was already used.");
        }
        Err(e) if crate::db::Unavailable::of(&e).is_some() => {
            // Nothing was spent: the same response works again once the
            // database is back.
            tracing::warn!(error = %e, "the database is unavailable at the callback");
            return CallbackOutcome::Unavailable;
        }
        Err(e) => {
            tracing::error!(error = %e, "could not consume the OAuth state");
            return CallbackOutcome::Refused("The sign-in could not be completed; try again.");
        }
    }
    let back = Back {
        core,
        kind,
        return_to: claims.ret.as_deref(),
        forget_cookie,
        link: claims.lnk.is_some(),
        retry: None,
    };
    if expired {
        return back.failed(CallbackFailure::StateExpired);
    }
    if admin_consent {
        consent::finish(core, &claims, &q, &back).await
    } else {
        flow::finish_connect(core, kind, &claims, &q, &back).await
    }
}
