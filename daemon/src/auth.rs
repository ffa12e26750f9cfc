//! Who is calling: Sign-In-with-Ethereum (EIP-4361) sessions and operator API keys, both bearer tokens of
//! which only a keccak-256 is stored. Lookups go to the database on every request, so a revoked key stops
//! working at once, on every process sharing the database.

use std::str::FromStr;
use std::time::Duration;

use alloy::primitives::{Address, B256, Bytes, Signature, eip191_hash_message, keccak256};
use futures::future::BoxFuture;
use rand::Rng;
use sqlx::PgPool;
use time::OffsetDateTime;

/// What a sign-in message must say.
#[derive(Debug, Clone)]
pub struct SiweConfig {
    /// The `domain` (host[:port]) clients sign for; a message for another domain is refused.
    pub domain: String,
    /// The chain id the message must name (the deployment's).
    pub chain_id: u64,
    /// How long a nonce stays usable.
    pub nonce_ttl: Duration,
    /// How long a session lasts.
    pub session_ttl: Duration,
    /// Largest accepted clock difference for `Issued At` in the future.
    pub clock_skew: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing `Authorization: Bearer <token>` header")]
    Missing,
    #[error(
        "unknown, expired or revoked token: send a session token from signing in or an API key from \
         `openledger keys create --address <yours>` (free models need no Authorization header at all)"
    )]
    BadToken,
    #[error("not a valid EIP-4361 message: {0}")]
    Malformed(String),
    #[error("the message is for domain {got}, this server is {want}")]
    WrongDomain { got: String, want: String },
    #[error("the message's URI {got} is not this server's (https://{want} or http://{want})")]
    WrongUri { got: String, want: String },
    #[error("the message is for chain {got}, this server is on chain {want}")]
    WrongChain { got: u64, want: u64 },
    #[error("the message has expired or is not valid yet")]
    Expired,
    #[error("the message was issued in the future")]
    IssuedInFuture,
    #[error("the message was issued more than {max_age_secs} s ago: sign a fresh one")]
    IssuedTooLongAgo { max_age_secs: u64 },
    #[error("the nonce is unknown, expired or already used")]
    BadNonce,
    #[error("the signature is not valid: {0}")]
    BadSignature(String),
    #[error(
        "the message was signed by {signer}, not by {claimed} (nor does {claimed} accept the signature as a \
         contract wallet, ERC-1271)"
    )]
    WrongSigner { signer: Address, claimed: Address },
    /// A contract wallet's signature could not be checked: the node did not answer.
    #[error("checking the contract wallet's signature (ERC-1271): {0}")]
    Chain(String),
    /// The database cannot be reached (a retry may succeed).
    #[error("the database is unavailable")]
    Unavailable,
    #[error("database: {0}")]
    Db(String),
}

/// Asks a smart-contract wallet whether a signature is its own (ERC-1271 `isValidSignature`): how sign-in
/// accepts wallets that have no private key of their own (Safe and other smart accounts). `chain::Chain`
/// implements it.
pub trait ContractWallets: Send + Sync {
    /// `Ok(false)` for an address with no code, a wallet that refuses, or one that reverts.
    fn is_valid_signature<'a>(
        &'a self,
        wallet: Address,
        hash: B256,
        signature: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, String>>;
}

impl From<sqlx::Error> for AuthError {
    fn from(e: sqlx::Error) -> Self {
        if openledger_indexer::is_connection_error(&e) {
            AuthError::Unavailable
        } else {
            AuthError::Db(e.to_string())
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub address: Address,
    /// Operators see and manage every job.
    pub admin: bool,
    pub token_id: i64,
    pub kind: TokenKind,
    pub expires_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Session,
    ApiKey,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Session => "session",
            TokenKind::ApiKey => "api_key",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            TokenKind::Session => "ols_",
            TokenKind::ApiKey => "olk_",
        }
    }
}

fn token_hash(secret: &str) -> String {
    format!("{:#x}", keccak256(secret.as_bytes()))
}

/// A fresh alphanumeric nonce (EIP-4361 wants at least 8).
fn random_alnum(n: usize) -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

/// Hands out a sign-in nonce, and sweeps expired ones.
pub async fn issue_nonce(
    pool: &PgPool,
    ttl: Duration,
) -> Result<(String, OffsetDateTime), AuthError> {
    let nonce = random_alnum(24);
    let expires = OffsetDateTime::now_utc() + ttl;
    sqlx::query("DELETE FROM auth_nonces WHERE expires_at < now()")
        .execute(pool)
        .await?;
    sqlx::query("INSERT INTO auth_nonces (nonce, expires_at) VALUES ($1, $2)")
        .bind(&nonce)
        .bind(expires)
        .execute(pool)
        .await?;
    Ok((nonce, expires))
}

/// Checks a signed EIP-4361 message; the nonce is checked (and used up) by `sign_in`.
pub fn verify_message(
    cfg: &SiweConfig,
    message: &str,
    signature: &str,
    now: OffsetDateTime,
) -> Result<(Address, String), AuthError> {
    let msg = siwe::Message::from_str(message).map_err(|e| AuthError::Malformed(e.to_string()))?;
    if msg.domain.as_str() != cfg.domain {
        return Err(AuthError::WrongDomain {
            got: msg.domain.to_string(),
            want: cfg.domain.clone(),
        });
    }
    // the resource signed for is this server: its URI's authority is the domain (no user info, no other host)
    let uri = msg.uri.as_str();
    let authority = uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("http://"))
        .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or_default());
    if authority != Some(cfg.domain.as_str()) {
        return Err(AuthError::WrongUri {
            got: uri.to_owned(),
            want: cfg.domain.clone(),
        });
    }
    if msg.chain_id != cfg.chain_id {
        return Err(AuthError::WrongChain {
            got: msg.chain_id,
            want: cfg.chain_id,
        });
    }
    if !msg.valid_at(&now) {
        return Err(AuthError::Expired);
    }
    if *msg.issued_at.as_ref() > now + cfg.clock_skew {
        return Err(AuthError::IssuedInFuture);
    }
    // a message is signed for a nonce this server handed out at most `nonce_ttl` ago: one issued before
    // that (an old or replayed message without an expiration) is stale
    let max_age = cfg.nonce_ttl + cfg.clock_skew;
    if *msg.issued_at.as_ref() < now - max_age {
        return Err(AuthError::IssuedTooLongAgo {
            max_age_secs: max_age.as_secs(),
        });
    }
    let sig = Signature::from_str(signature.trim())
        .map_err(|e| AuthError::BadSignature(e.to_string()))?;
    // the exact text the wallet signed (EIP-191 personal_sign)
    let signer = sig
        .recover_address_from_msg(message.as_bytes())
        .map_err(|e| AuthError::BadSignature(e.to_string()))?;
    let claimed = Address::from(msg.address);
    if signer != claimed {
        return Err(AuthError::WrongSigner { signer, claimed });
    }
    Ok((claimed, msg.nonce))
}

/// A session: the bearer token (shown once) and what it grants.
#[derive(Debug, Clone)]
pub struct Issued {
    pub token: String,
    pub id: i64,
    pub address: Address,
    pub expires_at: Option<OffsetDateTime>,
}

/// A message whose checks all passed but whose signature is not its address's key's: whether the address is a
/// contract wallet that accepts the signature over the EIP-191 hash of the message (ERC-1271).
async fn signed_by_contract(
    wallets: &dyn ContractWallets,
    message: &str,
    signature: &str,
) -> Result<Option<(Address, String)>, AuthError> {
    let msg = siwe::Message::from_str(message).map_err(|e| AuthError::Malformed(e.to_string()))?;
    let Ok(sig) = Bytes::from_str(signature.trim()) else {
        return Ok(None);
    };
    let claimed = Address::from(msg.address);
    let ok = wallets
        .is_valid_signature(claimed, eip191_hash_message(message), &sig)
        .await
        .map_err(AuthError::Chain)?;
    Ok(ok.then_some((claimed, msg.nonce)))
}

/// Verifies a signed message (by the address's key, or, with `wallets`, by a contract wallet at the address),
/// consumes its nonce and opens a session, in one transaction.
pub async fn sign_in(
    pool: &PgPool,
    cfg: &SiweConfig,
    message: &str,
    signature: &str,
    wallets: Option<&dyn ContractWallets>,
) -> Result<Issued, AuthError> {
    let (address, nonce) = match verify_message(cfg, message, signature, OffsetDateTime::now_utc())
    {
        Ok(v) => v,
        // everything but the signature checked out: a contract wallet may have signed
        Err(e @ (AuthError::WrongSigner { .. } | AuthError::BadSignature(_))) => match wallets {
            Some(w) => signed_by_contract(w, message, signature).await?.ok_or(e)?,
            None => return Err(e),
        },
        Err(e) => return Err(e),
    };
    let mut tx = pool.begin().await?;
    let used = sqlx::query("DELETE FROM auth_nonces WHERE nonce = $1 AND expires_at >= now()")
        .bind(&nonce)
        .execute(&mut *tx)
        .await?;
    if used.rows_affected() != 1 {
        return Err(AuthError::BadNonce);
    }
    let expires = OffsetDateTime::now_utc() + cfg.session_ttl;
    let issued = insert_token(
        &mut tx,
        TokenKind::Session,
        address,
        "",
        false,
        Some(expires),
    )
    .await?;
    tx.commit().await?;
    Ok(issued)
}

async fn insert_token(
    conn: &mut sqlx::PgConnection,
    kind: TokenKind,
    address: Address,
    label: &str,
    admin: bool,
    expires_at: Option<OffsetDateTime>,
) -> Result<Issued, AuthError> {
    let secret = format!("{}{}", kind.prefix(), random_alnum(40));
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO auth_tokens (token_hash, kind, address, label, admin, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(token_hash(&secret))
    .bind(kind.as_str())
    .bind(format!("{address:#x}"))
    .bind(label)
    .bind(admin)
    .bind(expires_at)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Issued {
        token: secret,
        id,
        address,
        expires_at,
    })
}

/// Creates an operator API key for `address` (admin: may manage every job).
pub async fn create_api_key(
    pool: &PgPool,
    address: Address,
    label: &str,
    admin: bool,
    ttl: Option<Duration>,
) -> Result<Issued, AuthError> {
    let mut conn = pool.acquire().await?;
    let expires = ttl.map(|t| OffsetDateTime::now_utc() + t);
    insert_token(&mut conn, TokenKind::ApiKey, address, label, admin, expires).await
}

/// Resolves a bearer token to its caller.
pub async fn authenticate(pool: &PgPool, token: &str) -> Result<Caller, AuthError> {
    if !(token.starts_with("ols_") || token.starts_with("olk_")) || token.len() > 128 {
        return Err(AuthError::BadToken);
    }
    let row: Option<(i64, String, String, bool, Option<OffsetDateTime>)> = sqlx::query_as(
        "UPDATE auth_tokens SET last_used_at = now()
         WHERE token_hash = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
         RETURNING id, kind, address, admin, expires_at",
    )
    .bind(token_hash(token))
    .fetch_optional(pool)
    .await?;
    let (id, kind, address, admin, expires_at) = row.ok_or(AuthError::BadToken)?;
    Ok(Caller {
        address: Address::from_str(&address).map_err(|e| AuthError::Db(e.to_string()))?,
        admin,
        token_id: id,
        kind: if kind == "session" {
            TokenKind::Session
        } else {
            TokenKind::ApiKey
        },
        expires_at,
    })
}

/// Revokes a token by id; false if there was no such live token.
pub async fn revoke(pool: &PgPool, id: i64) -> Result<bool, AuthError> {
    let r = sqlx::query(
        "UPDATE auth_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// An API key as listed by `openledger keys list` (never the secret).
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct KeyInfo {
    pub id: i64,
    pub address: String,
    pub label: String,
    pub admin: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
}

pub async fn list_api_keys(pool: &PgPool) -> Result<Vec<KeyInfo>, AuthError> {
    Ok(sqlx::query_as(
        "SELECT id, address, label, admin, created_at, expires_at, revoked_at, last_used_at
         FROM auth_tokens WHERE kind = 'api_key' ORDER BY id",
    )
    .fetch_all(pool)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::signers::SignerSync;
    use alloy::signers::local::PrivateKeySigner;

    fn cfg() -> SiweConfig {
        SiweConfig {
            domain: "localhost:8080".into(),
            chain_id: 7331,
            nonce_ttl: Duration::from_secs(300),
            session_ttl: Duration::from_secs(3600),
            clock_skew: Duration::from_secs(60),
        }
    }

    fn message(addr: Address, domain: &str, chain: u64, issued: &str, exp: Option<&str>) -> String {
        let mut m = format!(
            "{domain} wants you to sign in with your Ethereum account:\n{}\n\nSign in to OpenLedger\n\nURI: http://{domain}\nVersion: 1\nChain ID: {chain}\nNonce: abcdefgh1234\nIssued At: {issued}",
            addr.to_checksum(None)
        );
        if let Some(e) = exp {
            m.push_str(&format!("\nExpiration Time: {e}"));
        }
        m
    }

    fn sign(k: &PrivateKeySigner, m: &str) -> String {
        k.sign_message_sync(m.as_bytes()).unwrap().to_string()
    }

    #[test]
    fn checks_domain_chain_time_and_signer() {
        let k = PrivateKeySigner::random();
        let other = PrivateKeySigner::random();
        // 5.5 minutes after the messages' Issued At: within the nonce's 5 minutes and the 1 minute of skew
        let now = OffsetDateTime::parse(
            "2026-01-01T00:05:30Z",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let ok = message(
            k.address(),
            "localhost:8080",
            7331,
            "2026-01-01T00:00:00Z",
            Some("2026-01-01T01:00:00Z"),
        );
        assert_eq!(
            verify_message(&cfg(), &ok, &sign(&k, &ok), now).unwrap(),
            (k.address(), "abcdefgh1234".to_string())
        );
        // issued long ago, without an expiration: stale
        let old = message(
            k.address(),
            "localhost:8080",
            7331,
            "2020-01-01T00:00:00Z",
            None,
        );
        assert_eq!(
            verify_message(&cfg(), &old, &sign(&k, &old), now),
            Err(AuthError::IssuedTooLongAgo { max_age_secs: 360 })
        );
        let wrong_domain = message(
            k.address(),
            "evil.example",
            7331,
            "2026-01-01T00:00:00Z",
            None,
        );
        assert!(matches!(
            verify_message(&cfg(), &wrong_domain, &sign(&k, &wrong_domain), now),
            Err(AuthError::WrongDomain { .. })
        ));
        // signed for this domain but naming another resource: a message phished for another site
        for uri in [
            "https://evil.example",
            "http://localhost:8080@evil.example/",
            "http://localhost:80800",
            "ftp://localhost:8080",
        ] {
            let m = ok.replace("URI: http://localhost:8080", &format!("URI: {uri}"));
            assert!(
                matches!(
                    verify_message(&cfg(), &m, &sign(&k, &m), now),
                    Err(AuthError::WrongUri { .. })
                ),
                "{uri}"
            );
        }
        for uri in [
            "https://localhost:8080",
            "http://localhost:8080/app#/connect",
        ] {
            let m = ok.replace("URI: http://localhost:8080", &format!("URI: {uri}"));
            assert!(
                verify_message(&cfg(), &m, &sign(&k, &m), now).is_ok(),
                "{uri}"
            );
        }
        let wrong_chain = message(
            k.address(),
            "localhost:8080",
            1,
            "2026-01-01T00:00:00Z",
            None,
        );
        assert!(matches!(
            verify_message(&cfg(), &wrong_chain, &sign(&k, &wrong_chain), now),
            Err(AuthError::WrongChain { got: 1, want: 7331 })
        ));
        let expired = message(
            k.address(),
            "localhost:8080",
            7331,
            "2026-01-01T00:00:00Z",
            Some("2026-01-01T00:05:00Z"),
        );
        assert_eq!(
            verify_message(&cfg(), &expired, &sign(&k, &expired), now),
            Err(AuthError::Expired)
        );
        let future = message(
            k.address(),
            "localhost:8080",
            7331,
            "2026-01-01T00:30:00Z",
            None,
        );
        assert_eq!(
            verify_message(&cfg(), &future, &sign(&k, &future), now),
            Err(AuthError::IssuedInFuture)
        );
        // someone else's signature over a message naming k
        assert!(matches!(
            verify_message(&cfg(), &ok, &sign(&other, &ok), now),
            Err(AuthError::WrongSigner { .. })
        ));
        // a signature over a different text
        let tampered = ok.replace("Sign in to OpenLedger", "Sign in to OpenLedgeR");
        assert!(matches!(
            verify_message(&cfg(), &tampered, &sign(&k, &ok), now),
            Err(AuthError::WrongSigner { .. })
        ));
        assert!(matches!(
            verify_message(&cfg(), "hello", "0x00", now),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            verify_message(&cfg(), &ok, "0x1234", now),
            Err(AuthError::BadSignature(_))
        ));
    }
}
