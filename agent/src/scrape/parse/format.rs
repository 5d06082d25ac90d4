//! Writing entries back as Prometheus text format 0.0.4, in the canonical layout the parser
//! reads back unchanged: `name{a="b",c="d"} value [timestamp]\n`, single spaces, no `{}` for
//! an empty label set, floats as Go's `FormatFloat(v, 'g', -1, 64)`, timestamps in integer
//! milliseconds.
//!
//! 0.0.4 has no units, exemplars or end marker: `Unit` and `Eof` are written as the comments
//! `# UNIT name unit` and `# EOF` (which a 0.0.4 parser reads as comments) and exemplars are
//! dropped. OpenMetrics-only types are written as `untyped`.

use super::float::write_go_float;
use super::{Entry, MetricType};

/// Appends one entry, newline included.
pub fn format_entry(out: &mut Vec<u8>, entry: &Entry<'_>) {
    match entry {
        Entry::Sample(s) => format_sample(out, s.name, s.labels.iter(), s.value, s.timestamp),
        Entry::Type { name, kind } => {
            out.extend_from_slice(b"# TYPE ");
            out.extend_from_slice(name.as_bytes());
            out.push(b' ');
            out.extend_from_slice(MetricType::as_prometheus_str(*kind).as_bytes());
            out.push(b'\n');
        }
        Entry::Help { name, help } => {
            out.extend_from_slice(b"# HELP ");
            out.extend_from_slice(name.as_bytes());
            out.push(b' ');
            escape_help(out, help);
            out.push(b'\n');
        }
        Entry::Unit { name, unit } => {
            out.extend_from_slice(b"# UNIT ");
            out.extend_from_slice(name.as_bytes());
            out.push(b' ');
            out.extend_from_slice(unit.as_bytes());
            out.push(b'\n');
        }
        Entry::Comment(text) => {
            out.push(b'#');
            out.extend_from_slice(text);
            out.push(b'\n');
        }
        Entry::Eof => out.extend_from_slice(b"# EOF\n"),
    }
}

/// Appends all entries.
pub fn format_entries<'e, 'a: 'e>(
    out: &mut Vec<u8>,
    entries: impl IntoIterator<Item = &'e Entry<'a>>,
) {
    for entry in entries {
        format_entry(out, entry);
    }
}

/// Appends one sample line from its parts; label values are escaped here.
pub fn format_sample<N, V>(
    out: &mut Vec<u8>,
    name: &str,
    labels: impl IntoIterator<Item = (N, V)>,
    value: f64,
    timestamp: Option<i64>,
) where
    N: AsRef<str>,
    V: AsRef<str>,
{
    out.extend_from_slice(name.as_bytes());
    let mut first = true;
    for (label, label_value) in labels {
        out.push(if first { b'{' } else { b',' });
        first = false;
        out.extend_from_slice(label.as_ref().as_bytes());
        out.extend_from_slice(b"=\"");
        escape_label_value(out, label_value.as_ref());
        out.push(b'"');
    }
    if !first {
        out.push(b'}');
    }
    out.push(b' ');
    format_value(out, value);
    if let Some(ts) = timestamp {
        out.push(b' ');
        out.extend_from_slice(ts.to_string().as_bytes());
    }
    out.push(b'\n');
}

/// Appends a sample value the way Prometheus client libraries write it.
pub fn format_value(out: &mut Vec<u8>, value: f64) {
    write_go_float(out, value);
}

/// Appends a label value with `\`, `"` and newline escaped.
pub fn escape_label_value(out: &mut Vec<u8>, value: &str) {
    for &b in value.as_bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'"' => out.extend_from_slice(b"\\\""),
            b'\n' => out.extend_from_slice(b"\\n"),
            _ => out.push(b),
        }
    }
}

/// Appends 0.0.4 HELP text with `\` and newline escaped (quotes are not escaped in HELP).
pub fn escape_help(out: &mut Vec<u8>, help: &str) {
    for &b in help.as_bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            _ => out.push(b),
        }
    }
}
