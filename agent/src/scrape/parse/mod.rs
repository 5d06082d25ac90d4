//! Pull parser for scraped exposition bodies: Prometheus text format 0.0.4 and OpenMetrics 1.0
//! text.
//!
//! This is the scraper's hot path, so the parser never copies the body: every [`Entry`] borrows
//! from it, label pairs are found again lazily by [`Labels::iter`] and unescaped only when the
//! value holds a backslash, and the only scratch buffer (label names for the duplicate check)
//! lives in the [`Parser`] and is reused, so steady-state parsing allocates nothing.
//!
//! # Grammar accepted
//!
//! Both formats are line based; a line ends at `\n` (a `\r` is an ordinary byte and makes the
//! value invalid, as in Prometheus).
//!
//! ```text
//! metric-name   = [a-zA-Z_:][a-zA-Z0-9_:]*
//! label-name    = [a-zA-Z_][a-zA-Z0-9_]*
//! label-value   = '"' ( '\' any-char-but-LF | any-char-but-'"'-'\'-LF )* '"'
//!                 unescaped: \\ -> \   \" -> "   \n -> LF; any other \x stays as the two bytes
//! label-set     = '{' [ label-name '=' label-value ( ',' label-name '=' label-value )* [','] ] '}'
//!                 (the trailing ',' is 0.0.4 only: OpenMetrics rejects `{a="b",}`)
//! float         = Go strconv.ParseFloat syntax without hex and without '_':
//!                 [+-]? ( digits ['.' digits*] | '.' digits ) ( [eE] [+-]? digits )?
//!                 | [+-]? ( "inf" | "infinity" )   (any case)
//!                 | "nan"                           (any case, no sign)
//!                 a finite literal that overflows f64 is an error (Go's ErrRange)
//! ```
//!
//! ## Prometheus text format 0.0.4
//!
//! ```text
//! line     = ws* ( "#" ws+ "HELP" ws+ metric-name [any-byte help-text]
//!               | "#" ws+ "TYPE" ws+ metric-name any-byte type
//!               | "#" comment-text | "" )
//!          | ws* sample                    (each ends at LF; the last LF may be missing)
//! sample   = metric-name ws* [label-set] ws* float [ws+ digits] ws*
//! ws       = ' ' | '\t'
//! type     = counter | gauge | histogram | summary | untyped
//! ```
//! Leading whitespace on a sample line is part of the metric name (Prometheus's series starts
//! at the line's first byte), which makes the name invalid: the scrape fails on it after metric
//! relabelling, as Prometheus's does. Whitespace may also stand around `{`, `}`, `=` and `,`
//! inside a label set, and, as in Prometheus, a missing comma between two labels is tolerated.
//! A metric name without labels must be followed by whitespace. Timestamps are integer
//! milliseconds (`[0-9]+`, no sign). The text of HELP and TYPE is the rest of the line after
//! the one byte following the name, whatever that byte is (so `# TYPE m gauge ` and
//! `# TYPE m  gauge` are invalid types, as in Prometheus); HELP text is unescaped for `\\` and
//! `\n` only. Other `#` lines (including `# UNIT`, `# EOF` and `#HELP`) are comments.
//!
//! ## OpenMetrics 1.0 text
//!
//! ```text
//! exposition = ( metadata | sample )* "# EOF" [LF]        (nothing may follow)
//! metadata   = "# HELP " metric-name " " escaped-text LF
//!            | "# TYPE " metric-name " " om-type LF
//!            | "# UNIT " metric-name " " unit LF           (unit must be a "_"-suffix of the name)
//! sample     = metric-name [label-set] " " float [" " float-seconds] [" # " exemplar] LF
//! exemplar   = label-set " " float [" " float-seconds]
//! om-type    = counter | gauge | histogram | gaugehistogram | summary | info | stateset | unknown
//! ```
//! Separators are exactly one space; blank lines, other comments and trailing whitespace are
//! errors. Timestamps are float seconds, converted to milliseconds by truncation like
//! Prometheus does. HELP text unescapes `\\`, `\"` and `\n`.
//!
//! ## Families
//!
//! The parser remembers the last `# TYPE` and tags each [`Sample`] whose name belongs to that
//! family with its [`MetricType`] (see [`MetricType::sample_suffixes`]: `_total`/`_created` for
//! counters, `_bucket`/`_count`/`_sum`/`_created` for histograms, `_info` for info, ...);
//! samples outside the family get [`MetricType::Unknown`]. As in Prometheus this is not an
//! error.
//!
//! Not supported: the UTF-8 quoted metric and label names of Prometheus 3 (`{"a.b"="c"}`), and
//! OpenMetrics 2.0 drafts (`ct@`, native histograms in text).

mod error;
mod float;
mod format;
mod labels;
mod parser;

#[cfg(test)]
mod tests;

use std::borrow::Cow;

pub use error::{ParseError, ParseErrorKind};
pub use float::{parse_go_float, NORMAL_NAN_BITS};
pub use format::{
    escape_help, escape_label_value, format_entries, format_entry, format_sample, format_value,
};
pub use labels::{LabelIter, Labels};
pub use parser::Parser;

/// Which text format a body is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text exposition format 0.0.4 (`text/plain; version=0.0.4`), the default.
    PrometheusText,
    /// OpenMetrics 1.0 text (`application/openmetrics-text`).
    OpenMetrics,
}

impl Format {
    /// Chooses the format from a response's `Content-Type` header, as Prometheus does:
    /// `application/openmetrics-text` (any parameters, any case) is OpenMetrics, anything else
    /// (including a missing header) is the 0.0.4 text format.
    pub fn from_content_type(content_type: Option<&str>) -> Format {
        let media = content_type
            .and_then(|ct| ct.split(';').next())
            .unwrap_or("")
            .trim();
        if media.eq_ignore_ascii_case("application/openmetrics-text") {
            Format::OpenMetrics
        } else {
            Format::PrometheusText
        }
    }
}

/// A metric family's type, from a `# TYPE` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
    /// OpenMetrics only.
    GaugeHistogram,
    Summary,
    /// OpenMetrics only.
    Info,
    /// OpenMetrics only.
    StateSet,
    /// `untyped` in 0.0.4, `unknown` in OpenMetrics, and every sample outside a typed family.
    Unknown,
}

impl MetricType {
    /// The OpenMetrics spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
            MetricType::GaugeHistogram => "gaugehistogram",
            MetricType::Summary => "summary",
            MetricType::Info => "info",
            MetricType::StateSet => "stateset",
            MetricType::Unknown => "unknown",
        }
    }

    /// The spelling in a 0.0.4 `# TYPE` line; OpenMetrics-only types have none and are written
    /// as `untyped`.
    pub fn as_prometheus_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
            MetricType::Summary => "summary",
            MetricType::GaugeHistogram
            | MetricType::Info
            | MetricType::StateSet
            | MetricType::Unknown => "untyped",
        }
    }

    fn from_prometheus(s: &str) -> Option<MetricType> {
        Some(match s {
            "counter" => MetricType::Counter,
            "gauge" => MetricType::Gauge,
            "histogram" => MetricType::Histogram,
            "summary" => MetricType::Summary,
            "untyped" => MetricType::Unknown,
            _ => return None,
        })
    }

    fn from_openmetrics(s: &str) -> Option<MetricType> {
        Some(match s {
            "counter" => MetricType::Counter,
            "gauge" => MetricType::Gauge,
            "histogram" => MetricType::Histogram,
            "gaugehistogram" => MetricType::GaugeHistogram,
            "summary" => MetricType::Summary,
            "info" => MetricType::Info,
            "stateset" => MetricType::StateSet,
            "unknown" => MetricType::Unknown,
            _ => return None,
        })
    }

    /// The suffixes a sample name may add to the family name in a family of this type (`""`
    /// is the bare family name). Lenient on purpose: the union of what 0.0.4 exporters
    /// (`# TYPE foo_total counter` with sample `foo_total`) and OpenMetrics (`# TYPE foo
    /// counter` with `foo_total` and `foo_created`) produce.
    pub fn sample_suffixes(self) -> &'static [&'static str] {
        match self {
            MetricType::Counter => &["", "_total", "_created"],
            MetricType::Histogram => &["_bucket", "_count", "_sum", "_created"],
            MetricType::GaugeHistogram => &["_bucket", "_gcount", "_gsum"],
            MetricType::Summary => &["", "_count", "_sum", "_created"],
            MetricType::Info => &["_info"],
            MetricType::Gauge | MetricType::StateSet | MetricType::Unknown => &[""],
        }
    }

    /// Whether a sample called `sample_name` belongs to family `family` of this type.
    pub fn family_contains(self, family: &str, sample_name: &str) -> bool {
        match sample_name.strip_prefix(family) {
            Some(suffix) => self.sample_suffixes().contains(&suffix),
            None => false,
        }
    }
}

/// One parsed line.
#[derive(Clone, Debug, PartialEq)]
pub enum Entry<'a> {
    Sample(Sample<'a>),
    /// `# TYPE name kind`.
    Type {
        name: &'a str,
        kind: MetricType,
    },
    /// `# HELP name text`, unescaped (borrowed unless the text holds an escape).
    Help {
        name: &'a str,
        help: Cow<'a, str>,
    },
    /// OpenMetrics `# UNIT name unit`.
    Unit {
        name: &'a str,
        unit: &'a str,
    },
    /// Any other `#` line of a 0.0.4 body: the raw bytes after the `#` (not validated as
    /// UTF-8, since Prometheus does not reject bodies for what their comments hold).
    Comment(&'a [u8]),
    /// OpenMetrics `# EOF`; always the last entry of an OpenMetrics body.
    Eof,
}

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample<'a> {
    /// The series exactly as scraped, `name{labels}` (or `name` alone), including any
    /// whitespace the 0.0.4 format allowed inside it: a stable cache key for the series.
    pub series: &'a [u8],
    /// The metric name.
    pub name: &'a str,
    /// The label set, validated; iterate with [`Labels::iter`].
    pub labels: Labels<'a>,
    /// The value; a NaN in the body is returned with Prometheus's bits, [`NORMAL_NAN_BITS`],
    /// so that it is never mistaken for a staleness marker.
    pub value: f64,
    /// Milliseconds since the epoch, if the line had a timestamp.
    pub timestamp: Option<i64>,
    /// OpenMetrics exemplar.
    pub exemplar: Option<Exemplar<'a>>,
    /// The last `# TYPE` before this sample (family name and type), for [`Sample::kind`].
    /// Kept unresolved because the scrape path does not need the type per sample: matching
    /// the name against the family's suffixes for every sample was ~3% of agentctl's CPU.
    pub family: Option<(&'a str, MetricType)>,
}

impl Sample<'_> {
    /// The type of the family this sample belongs to (the last `# TYPE`, when the sample's
    /// name is the family name plus one of its type's suffixes), or `Unknown`.
    pub fn kind(&self) -> MetricType {
        match self.family {
            Some((family, kind)) if kind.family_contains(family, self.name) => kind,
            _ => MetricType::Unknown,
        }
    }
}

/// An OpenMetrics exemplar: `# {trace_id="x"} 1.0 1234.5`.
#[derive(Clone, Debug, PartialEq)]
pub struct Exemplar<'a> {
    pub labels: Labels<'a>,
    pub value: f64,
    /// Milliseconds since the epoch.
    pub timestamp: Option<i64>,
}

/// What [`Parser::next_known`] yields.
#[derive(Clone, Debug, PartialEq)]
pub enum Parsed<'a> {
    Entry(Entry<'a>),
    /// A sample whose series text the caller knew (see [`Parser::next_known`]).
    Known(Known<'a>),
}

/// A 0.0.4 sample line that starts with a series text the caller said it knows: the text,
/// and what follows it, parsed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Known<'a> {
    /// The series text, as the caller knew it.
    pub series: &'a [u8],
    /// As [`Sample::value`].
    pub value: f64,
    /// As [`Sample::timestamp`].
    pub timestamp: Option<i64>,
}

/// Parses a whole body into entries, stopping at the first error. Convenience for tests and
/// tools; the scrape loop uses [`Parser`] directly to avoid collecting.
pub fn parse_all(body: &[u8], format: Format) -> Result<Vec<Entry<'_>>, ParseError> {
    Parser::new(body, format).collect()
}
