//! Durable agent state in sled: node identity, last model states, lifetime counters.
//!
//! Every write that the agent acts on is flushed before it is acknowledged: the node id
//! before the first report names it, a model state before it is reported, and the counters
//! before the report that carries them. So after a kill -9, nothing reported is lost.

use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
#[error("state store {path}: {source}")]
pub struct StoreError {
    path: String,
    source: sled::Error,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub requests: u64,
    pub errors: u64,
    pub rejected: u64,
    pub tokens_generated: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedState {
    pub state: String,
    pub reason: String,
}

/// What a model's last load measured: kept so that the budget and the gateways' routing use
/// it before the model loads again. Valid while the model's files keep their size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Measured {
    pub file_bytes: u64,
    pub resident_bytes: u64,
    pub cold_load_ms: u32,
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    path: String,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.display().to_string();
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(Some(1000))
            .open()
            .map_err(|source| StoreError {
                path: path.clone(),
                source,
            })?;
        Ok(Self { db, path })
    }

    fn err(&self, source: sled::Error) -> StoreError {
        StoreError {
            path: self.path.clone(),
            source,
        }
    }

    /// This node's id, created (and flushed) on first use.
    pub fn node_id(&self) -> Result<String, StoreError> {
        if let Some(v) = self.db.get("node_id").map_err(|e| self.err(e))? {
            return Ok(String::from_utf8_lossy(&v).into_owned());
        }
        let id = uuid::Uuid::new_v4().to_string();
        // compare-and-swap: two processes racing on one store agree on one id
        let _ = self
            .db
            .compare_and_swap("node_id", None as Option<&[u8]>, Some(id.as_bytes()))
            .map_err(|e| self.err(e))?;
        self.db.flush().map_err(|e| self.err(e))?;
        let v = self
            .db
            .get("node_id")
            .map_err(|e| self.err(e))?
            .unwrap_or_default();
        Ok(String::from_utf8_lossy(&v).into_owned())
    }

    fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        self.db.open_tree(name).map_err(|e| self.err(e))
    }

    pub fn counters(&self, model: &str) -> Result<Counters, StoreError> {
        let t = self.tree("counters")?;
        Ok(t.get(model)
            .map_err(|e| self.err(e))?
            .and_then(|v| serde_json::from_slice(&v).ok())
            .unwrap_or_default())
    }

    /// Writes every model's counters and flushes.
    pub fn save_counters<'a>(
        &self,
        all: impl IntoIterator<Item = (&'a str, Counters)>,
    ) -> Result<(), StoreError> {
        let t = self.tree("counters")?;
        for (model, c) in all {
            let v = serde_json::to_vec(&c).unwrap_or_default();
            t.insert(model, v).map_err(|e| self.err(e))?;
        }
        t.flush().map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn model_state(&self, model: &str) -> Result<Option<SavedState>, StoreError> {
        let t = self.tree("models")?;
        Ok(t.get(model)
            .map_err(|e| self.err(e))?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    pub fn save_model_state(&self, model: &str, state: &SavedState) -> Result<(), StoreError> {
        let t = self.tree("models")?;
        t.insert(model, serde_json::to_vec(state).unwrap_or_default())
            .map_err(|e| self.err(e))?;
        t.flush().map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn measured(&self, model: &str) -> Result<Option<Measured>, StoreError> {
        let t = self.tree("measured")?;
        Ok(t.get(model)
            .map_err(|e| self.err(e))?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Records a load's measurements (flushed by the store's interval: a lost one is measured
    /// again at the next load).
    pub fn save_measured(&self, model: &str, m: &Measured) -> Result<(), StoreError> {
        let t = self.tree("measured")?;
        t.insert(model, serde_json::to_vec(m).unwrap_or_default())
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_and_counters_survive_reopen() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let id = {
            let s = Store::open(dir.path())?;
            let id = s.node_id()?;
            assert_eq!(s.node_id()?, id);
            s.save_counters([(
                "m",
                Counters {
                    requests: 3,
                    errors: 1,
                    rejected: 0,
                    tokens_generated: 40,
                },
            )])?;
            s.save_model_state(
                "m",
                &SavedState {
                    state: "ready".into(),
                    reason: String::new(),
                },
            )?;
            id
        };
        let s = Store::open(dir.path())?;
        assert_eq!(s.node_id()?, id);
        let m = Measured {
            file_bytes: 10,
            resident_bytes: 20,
            cold_load_ms: 30,
        };
        s.save_measured("m", &m)?;
        assert_eq!(s.measured("m")?, Some(m));
        assert_eq!(s.measured("other")?, None);
        assert_eq!(s.counters("m")?.tokens_generated, 40);
        assert_eq!(
            s.model_state("m")?.map(|m| m.state),
            Some("ready".to_string())
        );
        Ok(())
    }
}
