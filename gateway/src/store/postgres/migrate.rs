//! The shared ledger's schema, embedded and versioned. Every gateway migrates at start; the
//! migrations run inside one transaction holding a transaction-scoped advisory lock, so
//! gateways starting at once on an empty database wait for one another and each finds the
//! schema the first one wrote (a failed migration leaves nothing behind).

use tokio_postgres::Client;

/// The advisory lock key migrations hold ("edgewise" in ASCII).
const LOCK: i64 = 0x6564_6765_7769_7365;

/// Each migration's version and SQL, in order. Never edit one that has shipped: add another.
pub const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    r#"
CREATE TABLE ledger_budget (
    day      text   NOT NULL,
    tenant   text   NOT NULL,
    provider text   NOT NULL,
    spent    bigint NOT NULL DEFAULT 0 CHECK (spent >= 0),
    reserved bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    PRIMARY KEY (day, tenant, provider)
);
CREATE TABLE ledger_reservation (
    id          text        PRIMARY KEY,
    day         text        NOT NULL,
    tenant      text        NOT NULL,
    provider    text        NOT NULL,
    nanos       bigint      NOT NULL CHECK (nanos >= 0),
    gateway     text        NOT NULL,
    created     timestamptz NOT NULL DEFAULT now(),
    lease_until timestamptz NOT NULL,
    state       text        NOT NULL CHECK (state IN ('open', 'settled', 'expired')),
    charged     bigint,
    FOREIGN KEY (day, tenant, provider) REFERENCES ledger_budget (day, tenant, provider)
);
CREATE INDEX ledger_reservation_open ON ledger_reservation (lease_until) WHERE state = 'open';
"#,
)];

/// Brings the schema to the newest version; returns it.
pub async fn migrate(client: &mut Client) -> Result<i32, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version integer PRIMARY KEY,
             applied timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let row = tx
        .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
        .await?;
    let from: i32 = row.get(0);
    let mut version = from;
    for (v, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > from) {
        tx.batch_execute(sql).await?;
        tx.execute("INSERT INTO schema_version (version) VALUES ($1)", &[v])
            .await?;
        version = *v;
    }
    tx.commit().await?;
    Ok(version)
}
