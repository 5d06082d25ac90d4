//! Parse errors: where (1-based line, 1-based byte column) and why.

/// A body that does not follow its format. The whole scrape is rejected on the first error,
/// as Prometheus does.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {kind}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// 1-based byte offset in the line.
    pub column: usize,
    pub kind: ParseErrorKind,
}

/// Why a body was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    /// A token other than the grammar allows; `got` is a short quoted excerpt or
    /// `end of line`.
    #[error("expected {expected}, got {got}")]
    Unexpected { expected: &'static str, got: String },
    #[error("invalid value {text:?}: {reason}")]
    InvalidValue { text: String, reason: &'static str },
    #[error("invalid timestamp {text:?}: {reason}")]
    InvalidTimestamp { text: String, reason: &'static str },
    /// Prometheus's storage text for the same series (its parser lets it through).
    #[error("label name {0:?} is not unique: invalid sample")]
    DuplicateLabel(String),
    #[error("invalid metric type {0:?}")]
    InvalidType(String),
    #[error("label value is not terminated by '\"' before the end of the line")]
    UnterminatedLabelValue,
    #[error("invalid UTF-8")]
    InvalidUtf8,
    #[error("unit {unit:?} is not a suffix of metric name {metric:?}")]
    UnitNotSuffix { metric: String, unit: String },
    #[error("data does not end with # EOF")]
    MissingEof,
    #[error("unexpected data after # EOF")]
    DataAfterEof,
}

/// How much of the offending input an error quotes.
const EXCERPT_MAX: usize = 24;

/// A short excerpt of `line` starting at `pos`, up to the next separator, for error messages.
pub(super) fn excerpt(line: &[u8], pos: usize) -> String {
    let rest = line.get(pos..).unwrap_or_default();
    if rest.is_empty() {
        return "end of line".to_owned();
    }
    let end = rest
        .iter()
        .position(|&b| b == b' ' || b == b'\t')
        .unwrap_or(rest.len())
        .clamp(1, EXCERPT_MAX);
    format!(
        "{:?}",
        String::from_utf8_lossy(&rest[..end.min(rest.len())])
    )
}
