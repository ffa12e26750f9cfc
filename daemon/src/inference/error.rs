//! Why an inference request was not served. The HTTP layer turns each kind into its status and problem
//! (`api/openai.rs`); the batch job waits on `Overloaded`, retries on `is_transient`, and writes the rest
//! into the batch's error file as the HTTP endpoint would have answered.

use super::ResolveError;
use super::credits::CreditError;
use super::payment::PaymentError;
use super::records::RecordError;
use crate::chain::ChainError;

#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    /// The request itself is wrong: a field out of range, a prompt that cannot be built.
    #[error("{0}")]
    Invalid(String),
    /// The named model is unknown or trained on another base.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// The model cannot be paid for yet (not registered on this chain).
    #[error("{0}")]
    NotPayable(String),
    /// No payment or credit covers the request; the message says how to pay.
    #[error("{0}")]
    PaymentRequired(String),
    #[error(transparent)]
    Payment(#[from] PaymentError),
    #[error(transparent)]
    Credit(#[from] CreditError),
    #[error(transparent)]
    Record(#[from] RecordError),
    /// Sponsoring a payment needs the chain.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The engine's queue is full: retry shortly.
    #[error("the server is at capacity")]
    Overloaded,
    /// The engine could not run the request (an adapter that cannot load, a stopped engine).
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

impl InferenceError {
    pub fn internal(e: impl std::fmt::Display) -> Self {
        InferenceError::Internal(e.to_string())
    }

    /// A failure of this process or its database rather than of the request: worth running again.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            InferenceError::Internal(_)
                | InferenceError::Db(_)
                | InferenceError::Resolve(ResolveError::Db(_))
                | InferenceError::Payment(PaymentError::Db(_) | PaymentError::Pending(_))
                | InferenceError::Credit(CreditError::Db(_))
                | InferenceError::Record(RecordError::Db(_))
        )
    }
}
