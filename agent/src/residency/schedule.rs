//! When models load and unload by themselves: what loads at start, and idle models unloaded
//! past their keep-alive.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Unload;
use crate::budget::show;
use crate::error::AgentError;
use crate::node::Node;
use crate::slot::{ModelSlot, SlotState};

impl Node {
    /// At start: without a budget every model; with one, the pinned models, then the others
    /// in order while they fit without evicting anything.
    pub async fn load_at_start(self: &Arc<Self>, on_each: impl Fn(&ModelSlot, usize, usize)) {
        let mut order: Vec<&Arc<ModelSlot>> = self.slots.values().collect();
        order.sort_by_key(|s| !s.is_pinned());
        let total = order.len();
        for (i, slot) in order.into_iter().enumerate() {
            on_each(slot, i, total);
            if !slot.read().loadable() {
                continue;
            }
            if let Some(budget) = self.budget
                && !slot.is_pinned()
                && self.used_bytes() + slot.cost() > budget
            {
                tracing::info!(model = %slot.name, need = %show(slot.cost()), free = %show(budget.saturating_sub(self.used_bytes())), "not loaded at start: it loads when a request needs it");
                continue;
            }
            let _held = self.lifecycle.lock().await;
            match self.load_locked(slot).await {
                Ok(lease) => drop(lease),
                Err(AgentError::MemoryBudget { .. }) if slot.is_pinned() => {
                    let e = self.no_room(slot, self.budget.unwrap_or(0), self.used_bytes());
                    tracing::error!(model = %slot.name, "pinned model does not fit: {e}");
                    *slot.write() = SlotState::Failed(format!("pinned, but {e}"));
                    self.state_changed(slot);
                }
                Err(_) => {}
            }
        }
    }

    /// Unloads idle models past their keep-alive until `stop`. Wakes when the next one is due
    /// (at least every second, to see new leases and pins).
    pub async fn reap_idle(self: Arc<Self>, stop: CancellationToken) {
        if self.slots.values().all(|s| s.keep_alive.is_none()) {
            return;
        }
        loop {
            let now = self.epoch.elapsed().as_millis() as u64;
            let mut next = now + 1000;
            for slot in self.slots.values() {
                let resident = matches!(&*slot.read(), SlotState::Ready { .. });
                let Some(at) = slot.unload_at().filter(|_| resident && !slot.busy()) else {
                    continue;
                };
                if at > now {
                    next = next.min(at);
                    continue;
                }
                let _held = self.lifecycle.lock().await;
                // looked at again under the lock: a request may have come meanwhile
                let due = slot
                    .unload_at()
                    .is_some_and(|at| at <= self.epoch.elapsed().as_millis() as u64);
                if due {
                    self.unload_idle(slot, Unload::Idle).await;
                }
            }
            let wait = Duration::from_millis(next.saturating_sub(now).max(10));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}
