//! Inference credit: OPEN (wei) an operator grants an address. When the daemon does not sponsor every
//! caller, a signed-in caller's sponsored inference is charged to its credit first, then paid on chain
//! from the daemon's key; a payment that cannot be made is refunded. Each balance change and its ledger
//! row are one transaction.

use alloy::primitives::{Address, U256};
use serde::Serialize;
use sqlx::PgPool;
use time::OffsetDateTime;
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error)]
pub enum CreditError {
    #[error("{address:#x} has {balance} wei of credit, less than the {amount} to take")]
    Insufficient {
        address: Address,
        balance: U256,
        amount: U256,
    },
    #[error("a credit amount must be positive")]
    Zero,
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

/// One change to an address's credit.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LedgerEntry {
    pub id: i64,
    /// Signed, in OPEN wei (a decimal string).
    pub delta: String,
    /// `grant`, `revoke`, `inference` or `refund`.
    pub reason: String,
    pub inference_id: Option<String>,
    pub note: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String)]
    pub created_at: OffsetDateTime,
}

/// An address's credit and its latest changes, newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Credit {
    pub address: String,
    /// OPEN wei (a decimal string).
    pub balance: String,
    pub ledger: Vec<LedgerEntry>,
}

type LedgerRow = (
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
    OffsetDateTime,
);

fn hex(a: Address) -> String {
    format!("{a:#x}")
}

pub async fn balance(pool: &PgPool, address: Address) -> Result<U256, CreditError> {
    let b: Option<String> =
        sqlx::query_scalar("SELECT balance::text FROM inference_credits WHERE address = $1")
            .bind(hex(address))
            .fetch_optional(pool)
            .await?;
    Ok(b.and_then(|b| b.parse().ok()).unwrap_or_default())
}

/// The balance and the latest `limit` ledger entries.
pub async fn show(pool: &PgPool, address: Address, limit: i64) -> Result<Credit, CreditError> {
    let rows: Vec<LedgerRow> = sqlx::query_as(
        "SELECT id, delta::text, reason, inference_id, note, created_at FROM credit_ledger
             WHERE address = $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(hex(address))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(Credit {
        address: hex(address),
        balance: balance(pool, address).await?.to_string(),
        ledger: rows
            .into_iter()
            .map(|r| LedgerEntry {
                id: r.0,
                delta: r.1,
                reason: r.2,
                inference_id: r.3,
                note: r.4,
                created_at: r.5,
            })
            .collect(),
    })
}

/// Adds `amount` (an operator's grant); returns the new balance.
pub async fn grant(
    pool: &PgPool,
    address: Address,
    amount: U256,
    note: Option<&str>,
) -> Result<U256, CreditError> {
    change(pool, address, amount, true, "grant", None, note).await
}

/// Takes back `amount` of granted credit (refused beyond the balance).
pub async fn revoke(
    pool: &PgPool,
    address: Address,
    amount: U256,
    note: Option<&str>,
) -> Result<U256, CreditError> {
    change(pool, address, amount, false, "revoke", None, note).await
}

/// Charges inference `id`'s price; refused (balance untouched) when the credit does not cover it.
pub async fn charge(
    pool: &PgPool,
    address: Address,
    amount: U256,
    id: &str,
) -> Result<U256, CreditError> {
    change(pool, address, amount, false, "inference", Some(id), None).await
}

/// Gives back what inference `id` was charged (its payment could not be made). Once only.
pub async fn refund(
    pool: &PgPool,
    address: Address,
    amount: U256,
    id: &str,
) -> Result<U256, CreditError> {
    change(pool, address, amount, true, "refund", Some(id), None).await
}

async fn change(
    pool: &PgPool,
    address: Address,
    amount: U256,
    add: bool,
    reason: &str,
    inference: Option<&str>,
    note: Option<&str>,
) -> Result<U256, CreditError> {
    if amount.is_zero() {
        return Err(CreditError::Zero);
    }
    let (addr, amt) = (hex(address), amount.to_string());
    let mut tx = pool.begin().await?;
    let new: Option<String> = if add {
        sqlx::query_scalar(
            "INSERT INTO inference_credits (address, balance) VALUES ($1, $2::numeric)
             ON CONFLICT (address) DO UPDATE
             SET balance = inference_credits.balance + EXCLUDED.balance, updated_at = now()
             RETURNING balance::text",
        )
        .bind(&addr)
        .bind(&amt)
        .fetch_optional(&mut *tx)
        .await?
    } else {
        sqlx::query_scalar(
            "UPDATE inference_credits SET balance = balance - $2::numeric, updated_at = now()
             WHERE address = $1 AND balance >= $2::numeric RETURNING balance::text",
        )
        .bind(&addr)
        .bind(&amt)
        .fetch_optional(&mut *tx)
        .await?
    };
    let Some(new) = new else {
        drop(tx);
        return Err(CreditError::Insufficient {
            address,
            balance: balance(pool, address).await?,
            amount,
        });
    };
    sqlx::query(
        "INSERT INTO credit_ledger (address, delta, reason, inference_id, note)
         VALUES ($1, $2::numeric, $3, $4, $5)",
    )
    .bind(&addr)
    .bind(if add { amt } else { format!("-{amt}") })
    .bind(reason)
    .bind(inference)
    .bind(note)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(new.parse().unwrap_or_default())
}

/// Refunds inference `id`'s credit charge, if it had one not yet refunded (it failed: the caller got
/// nothing for it). Returns whether it refunded.
pub async fn refund_inference(pool: &PgPool, id: &str) -> Result<bool, sqlx::Error> {
    // a request that used a payment made (and charged) for an earlier request of its caller refunds that
    // charge
    let charged: Option<(String, String, String)> = sqlx::query_as(
        "SELECT address, (-delta)::text, inference_id FROM credit_ledger
         WHERE reason = 'inference'
           AND inference_id = COALESCE((SELECT charged_inference FROM daemon_payments
                                        WHERE used_by = $1 AND charged_inference IS NOT NULL LIMIT 1), $1)",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    let Some((addr, amount, id)) = charged else {
        return Ok(false);
    };
    let id = id.as_str();
    let (Ok(a), Ok(v)) = (addr.parse::<Address>(), amount.parse::<U256>()) else {
        return Ok(false);
    };
    match refund(pool, a, v, id).await {
        Ok(_) => Ok(true),
        // refunded already (the unique index)
        Err(CreditError::Db(sqlx::Error::Database(e))) if e.is_unique_violation() => Ok(false),
        Err(CreditError::Db(e)) => Err(e),
        // a refund adds, so is never short; a zero charge leaves nothing to give back
        Err(CreditError::Insufficient { .. } | CreditError::Zero) => Ok(false),
    }
}

/// Refunds the charges of inferences that failed, and of those that never got their row (the process
/// stopped between the charge and the record) once older than `grace`. Returns how many it refunded.
pub async fn refund_orphans(pool: &PgPool, grace: std::time::Duration) -> Result<u64, sqlx::Error> {
    // a charge whose payment the daemon recorded goes by that payment: refunded once it failed, or once the
    // request that used it failed; kept while it is being mined or waits, mined, for the caller's next
    // request (`payment::take_unused`)
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT c.inference_id FROM credit_ledger c
         LEFT JOIN daemon_payments p ON p.charged_inference = c.inference_id
         LEFT JOIN inferences i ON i.id = COALESCE(p.used_by, c.inference_id)
         WHERE c.reason = 'inference'
           AND CASE WHEN p.request_id IS NULL
                    THEN i.status = 'failed' OR (i.id IS NULL AND c.created_at < now() - make_interval(secs => $1))
                    WHEN p.state = 'failed' THEN true
                    WHEN p.state = 'paid' THEN p.used_by IS NOT NULL AND i.status = 'failed'
                    ELSE false END
           AND NOT EXISTS (SELECT 1 FROM credit_ledger r
                           WHERE r.reason = 'refund' AND r.inference_id = c.inference_id)",
    )
    .bind(grace.as_secs_f64())
    .fetch_all(pool)
    .await?;
    let mut n = 0;
    for id in ids {
        n += u64::from(refund_inference(pool, &id).await?);
    }
    Ok(n)
}
