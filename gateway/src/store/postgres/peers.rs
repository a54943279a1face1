//! Gateways sharing the ledger: each records a heartbeat (id, version, policy digest) on the
//! database's clock; `edgewise fleet status` lists them.

use super::{PgError, PgLedger};

/// A gateway sharing the ledger, as its last heartbeat recorded it.
#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    pub id: String,
    pub version: String,
    pub policy_digest: String,
    /// Milliseconds since its last heartbeat, on the database's clock.
    pub seen_ms_ago: u64,
}

impl PgLedger {
    /// Records this gateway as alive now (database clock), with its version and the digest
    /// of the policy it routes by.
    pub async fn heartbeat(&self, version: &str, policy_digest: &str) -> Result<(), PgError> {
        self.bounded("heartbeat", async {
            let c = self.client().await?;
            c.execute(
                "INSERT INTO gateway (id, version, policy_digest, started, last_seen)
                 VALUES ($1, $2, $3, now(), now())
                 ON CONFLICT (id) DO UPDATE
                 SET version = $2, policy_digest = $3, last_seen = now()",
                &[&self.gateway, &version, &policy_digest],
            )
            .await
            .map_err(|e| self.failed(&e))?;
            Ok(())
        })
        .await
    }

    /// Every gateway that has sent a heartbeat, most recently seen first.
    pub async fn peers(&self) -> Result<Vec<Peer>, PgError> {
        self.bounded("read", async {
            let c = self.client().await?;
            let rows = c
                .query(
                    "SELECT id, version, policy_digest,
                            (extract(epoch FROM now() - last_seen) * 1000)::bigint
                     FROM gateway ORDER BY last_seen DESC, id",
                    &[],
                )
                .await
                .map_err(|e| self.failed(&e))?;
            Ok(rows
                .iter()
                .map(|r| Peer {
                    id: r.get(0),
                    version: r.get(1),
                    policy_digest: r.get(2),
                    seen_ms_ago: r.get::<_, i64>(3).max(0) as u64,
                })
                .collect())
        })
        .await
    }
}
