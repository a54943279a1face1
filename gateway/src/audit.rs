//! The audit log (a sled tree): one record per external call and per refused fallback, in
//! time order. Records carry who, where, tokens and cost — never prompt or completion text.
//! Only the store thread (`store::writer`) appends and reads; each append is durable before
//! the caller hears the outcome.

use edgewise_proto as pb;
use prost::Message;

pub struct AuditLog {
    db: sled::Db,
    tree: sled::Tree,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl AuditLog {
    pub fn open(db: &sled::Db) -> Result<Self, sled::Error> {
        Ok(Self {
            db: db.clone(),
            tree: db.open_tree("audit")?,
        })
    }

    /// Appends a record (its `unix_ms` orders it); durable once the store flushes.
    pub fn append(&self, record: &pb::AuditRecord) -> Result<(), sled::Error> {
        // time first, then a unique id: records sort by time, and equal times never collide
        let mut k = record.unix_ms.to_be_bytes().to_vec();
        k.extend_from_slice(&self.db.generate_id()?.to_be_bytes());
        self.tree.insert(k, record.encode_to_vec())?;
        Ok(())
    }

    /// Records with `since_ms <= unix_ms < until_ms`, oldest first.
    pub fn range(&self, since_ms: u64, until_ms: u64) -> Vec<pb::AuditRecord> {
        if since_ms >= until_ms {
            return Vec::new();
        }
        self.tree
            .range(since_ms.to_be_bytes()..until_ms.to_be_bytes())
            .filter_map(|kv| kv.ok())
            .filter_map(|(_, v)| pb::AuditRecord::decode(v.as_ref()).ok())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.tree.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }
}

/// A record as one JSON object (the `edgewise audit export` line format).
pub fn to_json(r: &pb::AuditRecord) -> serde_json::Value {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(r.unix_ms);
    let mut v = serde_json::json!({
        "time": humantime::format_rfc3339_millis(time).to_string(),
        "decision_id": r.decision_id,
        "kind": r.kind,
        "tenant": r.tenant,
        "route": r.route,
        "task": r.task,
        "data_class": r.data_class,
        "provider": r.provider,
        "model": r.model,
        "outcome": r.outcome,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "usage_reported": r.usage_reported,
        "reserved_usd": r.reserved_usd,
        "cost_usd": r.cost_usd,
    });
    // a shared audit log says which gateway wrote the record, and where in its chain
    if !r.gateway.is_empty()
        && let Some(o) = v.as_object_mut()
    {
        o.insert("gateway".into(), r.gateway.clone().into());
        o.insert("seq".into(), r.seq.into());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_in_time_order_within_the_range() {
        let db = sled::Config::new()
            .temporary(true)
            .open()
            .unwrap_or_else(|e| panic!("{e}"));
        let a = AuditLog::open(&db).unwrap_or_else(|e| panic!("{e}"));
        for (t, id) in [(300, "c"), (100, "a"), (200, "b"), (200, "b2")] {
            let r = pb::AuditRecord {
                unix_ms: t,
                decision_id: id.into(),
                ..Default::default()
            };
            a.append(&r).unwrap_or_else(|e| panic!("{e}"));
        }
        let ids: Vec<String> = a
            .range(150, 300)
            .into_iter()
            .map(|r| r.decision_id)
            .collect();
        assert_eq!(ids, ["b", "b2"]);
        assert_eq!(a.range(0, u64::MAX).len(), 4);
        assert!(a.range(300, 100).is_empty());
        let j = to_json(&a.range(0, 101).into_iter().next().unwrap_or_default());
        assert_eq!(j["time"], "1970-01-01T00:00:00.100Z");
    }
}
