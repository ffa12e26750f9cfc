/// Everything that can go wrong loading, running or training a model. Messages name the file or the
/// parameter at fault, since they end up in job failures and API problems.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A model file that cannot be read as what it claims to be (truncated, corrupt, wrong tensors).
    #[error("{path}: not a usable model file: {reason}")]
    Corrupt { path: String, reason: String },
    /// The model's architecture or configuration is outside what this crate runs.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A parameter out of range (rank 0, learning rate <= 0, sequence too long...).
    #[error("invalid {name}: {reason}")]
    Invalid { name: &'static str, reason: String },
    #[error("training stopped: {0}")]
    Stopped(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }

    pub fn corrupt(path: impl AsRef<std::path::Path>, reason: impl std::fmt::Display) -> Self {
        ModelError::Corrupt {
            path: path.as_ref().display().to_string(),
            reason: reason.to_string(),
        }
    }

    pub fn invalid(name: &'static str, reason: impl std::fmt::Display) -> Self {
        ModelError::Invalid {
            name,
            reason: reason.to_string(),
        }
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
