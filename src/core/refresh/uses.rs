//! When a worker last got a token for an account (token route or verify),
//! which decides whether the background refresher keeps it warm (see
//! [`super::WarmWindow`]).
//!
//! The token route must not write per request: a use is noted in memory
//! (the latest per account) and written in batches every
//! `MAILCONNECT_USE_FLUSH_SECS` and at shutdown, one statement per second
//! of use and 500 accounts. A row is only written when its recorded use is
//! older than [`super::WarmWindow::use_precision`], so an account in steady
//! use costs a write now and then, not one per flush. The same write pulls a used account's due time
//! forward to ahead of expiry, so an idle account that is asked for again
//! is warm from then on. A crash loses at most one interval of marks: such
//! an account may be treated as idle and refreshed on demand once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

use super::super::Core;
use crate::db::accounts;
use crate::domain::AccountId;

/// Accounts per statement.
const BATCH: usize = 500;

/// Uses noted since the last write, per replica.
#[derive(Default)]
pub struct Uses {
    marks: Mutex<HashMap<AccountId, i64>>,
}

impl Uses {
    /// Notes that a token of `id` was handed out at `now`.
    pub fn mark(&self, id: AccountId, now: i64) {
        let mut marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
        let at = marks.entry(id).or_insert(now);
        *at = (*at).max(now);
    }

    /// A use of `id` noted here and not written yet.
    pub fn pending(&self, id: AccountId) -> Option<i64> {
        let marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
        marks.get(&id).copied()
    }

    /// Writes the uses noted so far; those the database did not take are
    /// kept for the next round. Returns how many accounts were written.
    pub async fn flush(&self, core: &Core) -> usize {
        let taken = {
            let mut marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut *marks)
        };
        if taken.is_empty() {
            return 0;
        }
        let mut by_time: BTreeMap<i64, Vec<AccountId>> = BTreeMap::new();
        for (id, at) in &taken {
            by_time.entry(*at).or_default().push(*id);
        }
        let mut written = 0;
        let mut failed: Vec<(AccountId, i64)> = Vec::new();
        for (at, ids) in by_time {
            for chunk in ids.chunks(BATCH) {
                let stale_before = at - core.schedule.warm_window.use_precision();
                let lead = core.schedule.lead_secs;
                match accounts::mark_used(&core.db, chunk, at, stale_before, lead).await {
                    Ok(()) => written += chunk.len(),
                    Err(e) => {
                        tracing::warn!(error = %e, accounts = chunk.len(), "could not record token uses; trying again later");
                        failed.extend(chunk.iter().map(|id| (*id, at)));
                    }
                }
            }
        }
        for (id, at) in failed {
            self.mark(id, at);
        }
        written
    }

    /// Writes the noted uses every `every` until `stop` turns true, then
    /// once more.
    pub async fn run(&self, core: &Core, every: Duration, mut stop: watch::Receiver<bool>) {
        loop {
            let stopping = tokio::select! {
                _ = tokio::time::sleep(every) => false,
                changed = stop.changed() => changed.is_err(),
            };
            let n = self.flush(core).await;
            if n > 0 {
                tracing::debug!(accounts = n, "token uses recorded");
            }
            if stopping || *stop.borrow() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_use_of_an_account_is_kept() {
        let uses = Uses::default();
        let id = AccountId::new();
        assert_eq!(uses.pending(id), None);
        uses.mark(id, 100);
        uses.mark(id, 90);
        assert_eq!(uses.pending(id), Some(100));
        uses.mark(id, 120);
        assert_eq!(uses.pending(id), Some(120));
    }
}
