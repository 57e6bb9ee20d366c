//! SQLite queries for tokens and the audit log.

use std::time::SystemTime;

use rusqlite::{Connection, ErrorCode, OptionalExtension as _, params};

use super::{from_ms, json_error, sql_error, to_ms};
use crate::auth::token::{Scope, TokenKind};
use crate::storage::{AuditQuery, AuditRecord, EnrollRefusal, StorageError, TokenRecord};

/// Tables added in schema version 2. A partial unique index keeps names
/// unique among tokens that are not revoked.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tokens (
    token_id     TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    kind         TEXT NOT NULL,
    scope        TEXT,
    peer_id      TEXT,
    secret_hash  TEXT NOT NULL,
    created_ms   INTEGER NOT NULL,
    expires_ms   INTEGER,
    revoked_ms   INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS tokens_active_name ON tokens (name) WHERE revoked_ms IS NULL;
CREATE TABLE IF NOT EXISTS audit (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ms   INTEGER NOT NULL,
    action    TEXT NOT NULL,
    outcome   TEXT NOT NULL,
    token     TEXT NOT NULL,
    creater   TEXT NOT NULL,
    source    TEXT NOT NULL,
    target    TEXT NOT NULL,
    request   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_time ON audit (time_ms);
";

const TOKEN_COLUMNS: &str =
    "token_id, name, kind, scope, peer_id, secret_hash, created_ms, expires_ms, revoked_ms";

fn token_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRecord> {
    let kind: String = row.get(2)?;
    let scope: Option<String> = row.get(3)?;
    Ok(TokenRecord {
        token_id: row.get(0)?,
        name: row.get(1)?,
        // An unknown kind can only come from a newer coordinator; reading
        // it as an agent credential with no peer denies every use of it.
        kind: TokenKind::parse(&kind).unwrap_or(TokenKind::Agent),
        scope: scope.as_deref().and_then(Scope::parse),
        peer_id: row.get(4)?,
        secret_hash: row.get(5)?,
        created_at: from_ms(row.get(6)?),
        expires_at: row.get::<_, Option<i64>>(7)?.map(from_ms),
        revoked_at: row.get::<_, Option<i64>>(8)?.map(from_ms),
    })
}

fn insert_token_row(connection: &Connection, token: &TokenRecord) -> rusqlite::Result<usize> {
    connection.execute(
        &format!(
            "INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
        ),
        params![
            token.token_id,
            token.name,
            token.kind.as_str(),
            token.scope.map(Scope::as_str),
            token.peer_id,
            token.secret_hash,
            to_ms(token.created_at),
            token.expires_at.map(to_ms),
            token.revoked_at.map(to_ms),
        ],
    )
}

fn is_unique_violation(error: &rusqlite::Error) -> bool {
    matches!(error, rusqlite::Error::SqliteFailure(failure, _) if failure.code == ErrorCode::ConstraintViolation)
}

pub fn insert_token(connection: &Connection, token: &TokenRecord) -> Result<bool, StorageError> {
    match insert_token_row(connection, token) {
        Ok(_) => Ok(true),
        Err(error) if is_unique_violation(&error) => Ok(false),
        Err(error) => Err(sql_error("store a token")(error)),
    }
}

pub fn token(connection: &Connection, token_id: &str) -> Result<Option<TokenRecord>, StorageError> {
    const OP: &str = "read a token";
    connection
        .prepare_cached(&format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens WHERE token_id = ?1"
        ))
        .map_err(sql_error(OP))?
        .query_row([token_id], token_from_row)
        .optional()
        .map_err(sql_error(OP))
}

pub fn tokens(connection: &Connection) -> Result<Vec<TokenRecord>, StorageError> {
    const OP: &str = "list tokens";
    let mut statement = connection
        .prepare_cached(&format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_ms, token_id"
        ))
        .map_err(sql_error(OP))?;
    let rows = statement
        .query_map([], token_from_row)
        .map_err(sql_error(OP))?;
    rows.collect::<Result<Vec<_>, _>>().map_err(sql_error(OP))
}

pub fn revoke_token(
    connection: &mut Connection,
    name: &str,
    at: SystemTime,
) -> Result<Option<TokenRecord>, StorageError> {
    const OP: &str = "revoke a token";
    let transaction = connection.transaction().map_err(sql_error(OP))?;

    let found = transaction
        .query_row(
            &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE name = ?1 AND revoked_ms IS NULL"),
            [name],
            token_from_row,
        )
        .optional()
        .map_err(sql_error(OP))?;
    let Some(mut token) = found else {
        return Ok(None);
    };
    transaction
        .execute(
            "UPDATE tokens SET revoked_ms = ?2 WHERE token_id = ?1",
            params![token.token_id, to_ms(at)],
        )
        .map_err(sql_error(OP))?;
    transaction.commit().map_err(sql_error(OP))?;

    token.revoked_at = Some(at);
    Ok(Some(token))
}

pub fn enroll(
    connection: &mut Connection,
    enrollment_id: &str,
    credential: &TokenRecord,
    at: SystemTime,
) -> Result<Result<(), EnrollRefusal>, StorageError> {
    const OP: &str = "enroll a peer";
    let transaction = connection.transaction().map_err(sql_error(OP))?;

    let used = transaction
        .execute(
            "UPDATE tokens SET revoked_ms = ?2 WHERE token_id = ?1 AND kind = 'enrollment' AND revoked_ms IS NULL",
            params![enrollment_id, to_ms(at)],
        )
        .map_err(sql_error(OP))?;
    if used == 0 {
        return Ok(Err(EnrollRefusal::TokenUsed));
    }
    match insert_token_row(&transaction, credential) {
        Ok(_) => {}
        // Dropping the transaction rolls back the use of the enrollment
        // token, so the operator can retry after revoking the old
        // credential.
        Err(error) if is_unique_violation(&error) => return Ok(Err(EnrollRefusal::PeerEnrolled)),
        Err(error) => return Err(sql_error(OP)(error)),
    }
    transaction.commit().map_err(sql_error(OP))?;
    Ok(Ok(()))
}

pub fn insert_audit(connection: &Connection, record: &AuditRecord) -> Result<i64, StorageError> {
    const OP: &str = "append to the audit log";
    let request = serde_json::to_string(&record.request).map_err(json_error(OP))?;
    connection
        .prepare_cached(
            "INSERT INTO audit (time_ms, action, outcome, token, creater, source, target, request)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .map_err(sql_error(OP))?
        .execute(params![
            to_ms(record.time),
            record.action,
            record.outcome,
            record.token,
            record.creater,
            record.source,
            record.target,
            request,
        ])
        .map_err(sql_error(OP))?;
    Ok(connection.last_insert_rowid())
}

pub fn audit(
    connection: &Connection,
    query: &AuditQuery,
) -> Result<Vec<AuditRecord>, StorageError> {
    const OP: &str = "read the audit log";
    let mut statement = connection
        .prepare_cached(
            "SELECT id, time_ms, action, outcome, token, creater, source, target, request FROM audit
             WHERE id > ?1 AND (?2 IS NULL OR action = ?2) AND (?3 IS NULL OR token = ?3)
             ORDER BY id LIMIT ?4",
        )
        .map_err(sql_error(OP))?;
    let rows = statement
        .query_map(
            params![
                query.after_id,
                query.action,
                query.token,
                i64::try_from(query.limit).unwrap_or(i64::MAX)
            ],
            |row| {
                let request: String = row.get(8)?;
                Ok(AuditRecord {
                    id: row.get(0)?,
                    time: from_ms(row.get(1)?),
                    action: row.get(2)?,
                    outcome: row.get(3)?,
                    token: row.get(4)?,
                    creater: row.get(5)?,
                    source: row.get(6)?,
                    target: row.get(7)?,
                    request: serde_json::from_str(&request).unwrap_or(serde_json::Value::Null),
                })
            },
        )
        .map_err(sql_error(OP))?;
    rows.collect::<Result<Vec<_>, _>>().map_err(sql_error(OP))
}

pub fn prune_audit(connection: &Connection, before: SystemTime) -> Result<u64, StorageError> {
    connection
        .execute("DELETE FROM audit WHERE time_ms < ?1", [to_ms(before)])
        .map(|deleted| deleted as u64)
        .map_err(sql_error("prune the audit log"))
}
