//! The node's one error type and its single mapping to gRPC status codes.

use tonic::{Code, Status};

/// Everything that can go wrong inside the node.
///
/// Each variant maps to exactly one gRPC code in [`From<Error> for Status`]; HTTP handlers
/// map the same code to an HTTP status, so both front doors agree.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A client sent something malformed: a bad name, ticket, header or body.
    #[error("{0}")]
    InvalidArgument(String),

    /// The dataset or version does not exist (or has expired).
    #[error("{0}")]
    NotFound(String),

    /// An upload does not match its data contract; nothing was stored.
    #[error("data contract violation: {0}")]
    ContractViolation(String),

    /// No or an unknown bearer token.
    #[error("{0}")]
    Unauthenticated(String),

    /// A valid token used for a namespace it is not bound to.
    #[error("{0}")]
    PermissionDenied(String),

    /// A configured limit (upload size, batch count, message size) was exceeded.
    #[error("{0}")]
    ResourceExhausted(String),

    /// A budget shared with other requests is in use (request memory, upload slots): the
    /// same request may succeed later. RESOURCE_EXHAUSTED on gRPC, 429 on HTTP.
    #[error("{0}")]
    Busy(String),

    /// The request does not apply to the object as it is (e.g. releasing a version that
    /// declared no consumers).
    #[error("{0}")]
    FailedPrecondition(String),

    /// The product does not offer this method.
    #[error("{0}")]
    Unimplemented(String),

    /// A client stopped sending in the middle of a call for longer than allowed.
    #[error("{0}")]
    DeadlineExceeded(String),

    /// A concurrent writer won a race the caller can retry.
    #[error("{0}")]
    Aborted(String),

    /// The object store failed.
    #[error("failed to {action}: {}", explain_storage(source))]
    Storage {
        action: String,
        #[source]
        source: object_store::Error,
    },

    /// Arrow or Parquet failed to encode or decode data.
    #[error("failed to {action}: {source}")]
    Data {
        action: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The failure of work several requests waited for (loading a version from storage).
    #[error("{0}")]
    Shared(std::sync::Arc<Error>),

    /// Configuration could not be loaded; only raised at start-up or on reload.
    #[error("{0}")]
    Config(String),

    /// A part of a committed version is missing from storage (damage, or a delete racing
    /// the read; readers check which).
    #[error("{0}")]
    MissingPart(String),

    /// A bug or an unexpected condition.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The text of a caught panic's payload.
pub fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::InvalidArgument(msg.into())
    }

    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::NotFound(msg.into())
    }

    pub fn storage(action: impl Into<String>, source: object_store::Error) -> Self {
        Self::Storage {
            action: action.into(),
            source,
        }
    }

    pub fn data(
        action: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Data {
            action: action.into(),
            source: source.into(),
        }
    }

    /// The gRPC code this error is reported with.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) | Error::ContractViolation(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::ResourceExhausted(_) | Error::Busy(_) => Code::ResourceExhausted,
            Error::Unimplemented(_) => Code::Unimplemented,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Aborted(_) => Code::Aborted,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::Storage { source, .. } => match source {
                object_store::Error::NotFound { .. } => Code::NotFound,
                _ => Code::Unavailable,
            },
            Error::Shared(e) => e.code(),
            Error::Data { .. } | Error::Config(_) | Error::MissingPart(_) | Error::Internal(_) => {
                Code::Internal
            }
        }
    }

    /// The HTTP status for the same failure, used by the HTTP side port.
    pub fn http_status(&self) -> u16 {
        if matches!(self, Error::Busy(_)) {
            return 429;
        }
        HTTP_STATUS
            .iter()
            .find(|(code, _)| *code == self.code())
            .map_or(500, |(_, status)| *status)
    }

    /// Converts a status received on an inbound stream (e.g. tonic's message-size check)
    /// into the node's error, keeping the code.
    pub fn from_inbound(status: Status) -> Self {
        let msg = status.message().to_string();
        match status.code() {
            // tonic reports an oversized message as OutOfRange; to clients that is a limit.
            Code::OutOfRange => Error::ResourceExhausted(format!(
                "{msg}; split the table into smaller record batches (pyarrow: \
                 writer.write_table(table, max_chunksize=...)) or raise --max-message-size"
            )),
            Code::ResourceExhausted => Error::ResourceExhausted(msg),
            Code::InvalidArgument => Error::InvalidArgument(msg),
            Code::DeadlineExceeded => Error::DeadlineExceeded(msg),
            Code::Cancelled | Code::Aborted => {
                Error::Aborted(format!("upload cancelled by the client: {msg}"))
            }
            _ => Error::InvalidArgument(format!("failed to read the upload stream: {msg}")),
        }
    }
}

/// The HTTP status of each gRPC code the node answers with (anything else is 500), read
/// both ways: errors become statuses on the HTTP port, statuses become codes in metrics.
const HTTP_STATUS: &[(Code, u16)] = &[
    (Code::InvalidArgument, 400),
    (Code::Unauthenticated, 401),
    (Code::PermissionDenied, 403),
    (Code::NotFound, 404),
    (Code::FailedPrecondition, 409),
    (Code::Aborted, 409),
    (Code::DeadlineExceeded, 408),
    (Code::ResourceExhausted, 413),
    (Code::Unimplemented, 501),
    (Code::Unavailable, 503),
];

/// The gRPC code an HTTP status of the node stands for (the inverse of
/// [`Error::http_status`]; `429 Too Many Requests` is a busy budget).
pub fn code_of_http_status(status: u16) -> Code {
    match status {
        200..=299 => Code::Ok,
        429 => Code::ResourceExhausted,
        _ => HTTP_STATUS
            .iter()
            .find(|(_, s)| *s == status)
            .map_or(Code::Internal, |(code, _)| *code),
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let code = err.code();
        match code {
            Code::Internal | Code::Unavailable => tracing::error!(error = %err, "request failed"),
            Code::ResourceExhausted | Code::Aborted => {
                tracing::warn!(error = %err, "request refused")
            }
            _ => tracing::debug!(error = %err, "request refused"),
        }
        Status::new(code, err.to_string())
    }
}

impl From<arrow::error::ArrowError> for Error {
    fn from(e: arrow::error::ArrowError) -> Self {
        Error::data("process Arrow data", e)
    }
}

impl From<arrow_flight::error::FlightError> for Error {
    fn from(e: arrow_flight::error::FlightError) -> Self {
        use arrow_flight::error::FlightError;
        match e {
            FlightError::Tonic(status) => Error::from_inbound(*status),
            FlightError::ProtocolError(m) | FlightError::DecodeError(m) => {
                Error::InvalidArgument(format!("malformed Flight stream: {m}"))
            }
            FlightError::Arrow(e) => Error::InvalidArgument(format!("malformed Arrow data: {e}")),
            other => Error::InvalidArgument(format!("malformed Flight stream: {other}")),
        }
    }
}

/// The object store's error as a sentence that says what to change, for the mistakes
/// people make setting up S3 or MinIO; otherwise the error as it is.
pub fn explain_storage(e: &object_store::Error) -> String {
    let mut chain = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    let hint = if chain.contains("URL scheme is not allowed")
        || (chain.contains("builder error") && chain.contains("http://"))
    {
        Some("the storage endpoint is plain HTTP, which is off by default; pass --allow-http or set AWS_ALLOW_HTTP=true")
    } else if chain.contains("169.254.169.254") {
        Some("no storage credentials were given, and there is no cloud instance metadata service to get them from; set --storage-access-key-id and --storage-secret-access-key (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a web identity)")
    } else if chain.contains("NoSuchBucket") || chain.contains("bucket does not exist") {
        Some("the bucket does not exist; create it (e.g. `mc mb`) or correct the bucket in the storage URL")
    } else if chain.contains("InvalidAccessKeyId") {
        Some("the storage server does not know the access key id; check --storage-access-key-id or AWS_ACCESS_KEY_ID")
    } else if chain.contains("SignatureDoesNotMatch") {
        Some("the secret access key does not match the access key id; check --storage-secret-access-key or AWS_SECRET_ACCESS_KEY")
    } else if chain.contains("AccessDenied") {
        Some("the storage server denied access: the credentials lack permission on this bucket or prefix")
    } else if chain.contains("Connection refused")
        || chain.contains("dns error")
        || chain.contains("error trying to connect")
        || chain.contains("tcp connect error")
    {
        Some("cannot connect to the storage endpoint; is it running, and are --storage-endpoint / AWS_ENDPOINT_URL right?")
    } else {
        None
    };
    match hint {
        // reqwest's "builder error" says nothing a user can act on.
        Some(h) if chain.contains("builder error") => h.to_string(),
        Some(h) => format!("{h} ({e})"),
        None => e.to_string(),
    }
}
