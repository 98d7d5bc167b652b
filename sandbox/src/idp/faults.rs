//! Faults the token endpoints play instead of working ([`Fault`]), and the
//! part of playing them that is the same everywhere: the delays.

use std::time::Duration;

/// What the token endpoint answers instead of working.
#[derive(Clone, Debug)]
pub enum Fault {
    /// 429 + `Retry-After` header + JSON error body.
    TooManyRequests { retry_after_secs: u64 },
    /// 503 with JSON error body `temporarily_unavailable`.
    Unavailable,
    /// 200 with a body that is not valid JSON (a truncated token response).
    MalformedJson,
    /// Sleeps this long, then answers normally.
    Slow(Duration),
    /// 401 `invalid_client` (as if the client secret expired).
    InvalidClient,
    /// 400 `invalid_grant`.
    InvalidGrant,
    /// 400 `interaction_required` (e.g. MFA or conditional access).
    InteractionRequired,
    /// 400 with an HTML page instead of a JSON error (a proxy in the way).
    UnreadableError,
    /// 200 with a token response whose `access_token` is empty.
    EmptyAccessToken,
    /// Holds the request this long, then answers 503 without having looked
    /// at it: a provider that hangs. Longer than the client's timeout, the
    /// client gives up first; nothing was redeemed either way.
    Stall(Duration),
    /// Fails about `percent` of the token requests, picked by a fixed
    /// pseudo-random sequence over the request count (the same pattern run
    /// after run): one failure in three is a [`Fault::Stall`] of `stall`,
    /// the others a 503 ([`Fault::Unavailable`]). The rest work normally.
    Flaky { percent: u32, stall: Duration },
    /// Microsoft's own answer for this AADSTS code, whatever the grant
    /// ([`crate::AadstsError`]): its `error`, `suberror`, status and words.
    /// Only [`crate::FakeMicrosoft`] speaks AADSTS: the other fakes panic
    /// when they meet it. A code the table lacks panics when it is set.
    Aadsts(u32),
}

impl Fault {
    /// The fault itself, after checking that the fake can play it: an
    /// unknown AADSTS code panics here, in the test that sets it, rather
    /// than later in a server task.
    pub(crate) fn checked(self) -> Fault {
        if let Fault::Aadsts(code) = self {
            crate::AadstsError::lookup(code);
        }
        self
    }

    /// What this fault does to the `n`-th token request: a
    /// [`Fault::Flaky`] becomes a stall, a 503 or nothing; any other fault
    /// is itself.
    pub(crate) fn for_request(self, n: usize) -> Option<Fault> {
        let Fault::Flaky { percent, stall } = self else {
            return Some(self);
        };
        // splitmix64: well spread, and fixed for a given request number.
        let mut z = (n as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        if z % 100 >= u64::from(percent) {
            None
        } else if (z >> 32).is_multiple_of(3) {
            Some(Fault::Stall(stall))
        } else {
            Some(Fault::Unavailable)
        }
    }
}

/// What a fake other than Microsoft's does with a [`Fault::Aadsts`]: AADSTS
/// codes are Microsoft's alone, and answering one in another provider's
/// words would be an answer that provider never gives.
pub(crate) fn aadsts_elsewhere(fake: &str, code: u32) -> ! {
    panic!("Fault::Aadsts({code}) is an answer of Microsoft's: {fake} has no AADSTS errors")
}

/// Plays the part of `fault` that is the same for every fake: a
/// [`Fault::Slow`] sleeps, then the request is answered normally (`None`);
/// a [`Fault::Stall`] calls `on_stall`, sleeps, and is returned for the
/// fake to answer 503 in its own words; a [`Fault::Flaky`] was resolved by
/// [`Fault::for_request`] already (`None`). Any other fault is returned as
/// it is, for the fake to answer in its own words.
pub(crate) async fn play(fault: Fault, on_stall: impl FnOnce()) -> Option<Fault> {
    match fault {
        Fault::Slow(d) => {
            tokio::time::sleep(d).await;
            None
        }
        Fault::Stall(d) => {
            on_stall();
            tokio::time::sleep(d).await;
            Some(Fault::Stall(d))
        }
        Fault::Flaky { .. } => None,
        other => Some(other),
    }
}
