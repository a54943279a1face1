//! The operator's model calls: load now, unload (draining a busy model first), pin.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Unload, usable};
use crate::error::AgentError;
use crate::node::Node;
use crate::slot::{ModelSlot, SlotState};

impl Node {
    fn slot(&self, name: &str) -> Result<&Arc<ModelSlot>, AgentError> {
        self.slots.get(name).ok_or_else(|| {
            AgentError::UnknownModel(
                name.to_string(),
                self.slots.keys().cloned().collect::<Vec<_>>().join(", "),
            )
        })
    }

    /// Operator: loads a model now (a failed one is tried again).
    pub async fn load_model(self: &Arc<Self>, name: &str) -> Result<(), AgentError> {
        let slot = self.slot(name)?.clone();
        let _held = self.lifecycle.lock().await;
        {
            let mut state = slot.write();
            match &*state {
                SlotState::Failed(_) if slot.manifest.is_some() => *state = SlotState::Available,
                SlotState::Draining { .. } => {
                    return Err(AgentError::ModelState {
                        model: name.into(),
                        state: "draining",
                        why: "it is being unloaded; load it again once it is unloaded".into(),
                    });
                }
                _ => {}
            }
        }
        usable(&slot)?;
        self.load_locked(&slot).await.map(drop)
    }

    /// Operator: unloads a model; one with requests in flight drains first (this returns
    /// while it drains). A pinned model must be unpinned first.
    pub async fn unload_model(self: &Arc<Self>, name: &str) -> Result<(), AgentError> {
        let slot = self.slot(name)?.clone();
        if slot.is_pinned() {
            return Err(AgentError::ModelState {
                model: name.into(),
                state: "pinned",
                why: "unpin it first".into(),
            });
        }
        let _held = self.lifecycle.lock().await;
        if self.unload_idle(&slot, Unload::Operator).await {
            return Ok(());
        }
        let drained = {
            let mut state = slot.write();
            match std::mem::replace(&mut *state, SlotState::Unloaded) {
                SlotState::Ready { model, batcher } => {
                    *state = SlotState::Draining { model, batcher };
                    true
                }
                other => {
                    *state = other;
                    false
                }
            }
        };
        if drained {
            self.state_changed(&slot);
            let node = self.clone();
            tokio::spawn(async move { node.finish_drain(slot).await });
        }
        Ok(())
    }

    /// Waits until a draining model's last lease ends, then frees it.
    async fn finish_drain(self: Arc<Self>, slot: Arc<ModelSlot>) {
        loop {
            let idle = slot.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if !slot.busy() {
                break;
            }
            idle.await;
        }
        let _held = self.lifecycle.lock().await;
        let taken = {
            let mut state = slot.write();
            match std::mem::replace(&mut *state, SlotState::Unloaded) {
                SlotState::Draining { model, batcher } => Some((model, batcher)),
                other => {
                    *state = other;
                    None
                }
            }
        };
        if let Some((model, batcher)) = taken {
            self.finish_unload(&slot, model, batcher, Unload::Operator)
                .await;
        }
    }

    /// Operator: pins (loading it if it is not resident) or unpins a model. A pin lasts
    /// until restart; `pin = true` in agent.toml keeps it.
    pub async fn pin_model(self: &Arc<Self>, name: &str, pin: bool) -> Result<(), AgentError> {
        let slot = self.slot(name)?.clone();
        if !pin {
            slot.pinned.store(false, Ordering::Relaxed);
            self.changed();
            return Ok(());
        }
        if slot.ready().is_none() {
            self.load_model(name).await?;
        }
        slot.pinned.store(true, Ordering::Relaxed);
        self.changed();
        Ok(())
    }
}
