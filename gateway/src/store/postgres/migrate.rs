//! The shared ledger's schema, embedded and versioned. Every gateway migrates at start; the
//! migrations run inside one transaction holding a transaction-scoped advisory lock, so
//! gateways starting at once on an empty database wait for one another and each finds the
//! schema the first one wrote (a failed migration leaves nothing behind).

use tokio_postgres::Client;

/// The advisory lock key migrations hold ("edgewise" in ASCII).
pub(super) const LOCK: i64 = 0x6564_6765_7769_7365;

/// Each migration's version and SQL, in order. Never edit one that has shipped: add another.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (
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
    ),
    (
        2,
        r#"
CREATE TABLE audit_record (
    day       date   NOT NULL,
    gateway   text   NOT NULL,
    seq       bigint NOT NULL CHECK (seq >= 1),
    unix_ms   bigint NOT NULL,
    record    bytea  NOT NULL,
    prev_hash text   NOT NULL,
    hash      text   NOT NULL,
    PRIMARY KEY (day, gateway, seq)
) PARTITION BY RANGE (day);
-- a safety net: records of a day whose partition was not made ahead land here
CREATE TABLE audit_record_default PARTITION OF audit_record DEFAULT;
CREATE INDEX audit_record_chain ON audit_record (gateway, seq);
CREATE INDEX audit_record_time ON audit_record (unix_ms);
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit records are append-only: % refused', TG_OP;
END
$$;
CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit_record
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit_record
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit_record_default
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
"#,
    ),
    (
        3,
        r#"
CREATE TABLE gateway (
    id            text        PRIMARY KEY,
    version       text        NOT NULL,
    policy_digest text        NOT NULL,
    started       timestamptz NOT NULL,
    last_seen     timestamptz NOT NULL
);
"#,
    ),
];

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
