//! Log output: logfmt (the old agent's format, `ts=… level=… msg=… key=value`) or JSON lines.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Logfmt,
    Json,
}

/// Installs the global subscriber writing to standard error. Calling it twice is harmless.
pub fn init(level: Level, format: Format) {
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        // A failed write (standard error closed: the reader went away) is dropped. Reporting it
        // would `eprintln!` to that same closed stream, which panics the task that logged, and a
        // panicked signal task never starts the shutdown.
        .log_internal_errors(false)
        .with_ansi(false);
    let _ = match format {
        Format::Logfmt => builder.event_format(Logfmt).try_init(),
        Format::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

/// A logfmt event formatter: `ts=2026-01-02T03:04:05.678Z level=info msg="…" key=value`.
/// The message comes after the timestamp and level, fields after it, in call order.
#[derive(Debug, Clone, Copy, Default)]
pub struct Logfmt;

impl<S, N> FormatEvent<S, N> for Logfmt
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = match *event.metadata().level() {
            Level::ERROR => "error",
            Level::WARN => "warn",
            Level::INFO => "info",
            Level::DEBUG => "debug",
            Level::TRACE => "trace",
        };
        let mut visitor = LogfmtVisitor::default();
        event.record(&mut visitor);
        write!(writer, "ts={} level={level}", rfc3339_now())?;
        if let Some(msg) = &visitor.message {
            writer.write_str(" msg=")?;
            write_value(&mut writer, msg)?;
        }
        writer.write_str(&visitor.fields)?;
        writeln!(writer)
    }
}

#[derive(Default)]
struct LogfmtVisitor {
    message: Option<String>,
    fields: String,
}

impl LogfmtVisitor {
    fn push(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = Some(value.to_owned());
            return;
        }
        self.fields.push(' ');
        self.fields.push_str(field.name());
        self.fields.push('=');
        let _ = write_value(&mut self.fields, value);
    }
}

impl Visit for LogfmtVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.push(field, &format!("{value:?}"));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.push(field, &value.to_string());
    }
}

/// Writes a logfmt value, quoting it when it is empty or holds spaces, quotes, `=` or controls.
fn write_value(w: &mut impl fmt::Write, value: &str) -> fmt::Result {
    let needs_quotes = value.is_empty()
        || value
            .chars()
            .any(|c| c == ' ' || c == '"' || c == '=' || c == '\\' || c.is_control());
    if !needs_quotes {
        return w.write_str(value);
    }
    w.write_char('"')?;
    for c in value.chars() {
        match c {
            '"' => w.write_str("\\\"")?,
            '\\' => w.write_str("\\\\")?,
            '\n' => w.write_str("\\n")?,
            '\t' => w.write_str("\\t")?,
            '\r' => w.write_str("\\r")?,
            c if c.is_control() => write!(w, "\\u{{{:x}}}", c as u32)?,
            c => w.write_char(c)?,
        }
    }
    w.write_char('"')
}

/// The current UTC time as RFC 3339 with milliseconds (log lines are stamped with the real
/// time, whatever clock the components were given).
fn rfc3339_now() -> String {
    crate::clock::rfc3339_millis(crate::clock::Clock::system().unix_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logfmt_quotes_only_when_needed() {
        let mut s = String::new();
        write_value(&mut s, "plain").unwrap();
        s.push(' ');
        write_value(&mut s, "two words").unwrap();
        s.push(' ');
        write_value(&mut s, "").unwrap();
        s.push(' ');
        write_value(&mut s, "a\"b\nc").unwrap();
        assert_eq!(s, r#"plain "two words" "" "a\"b\nc""#);
    }
}
