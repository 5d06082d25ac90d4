//! Log output: logfmt (the old agent's format, `ts=… level=… msg=… key=value`) or JSON lines.
//!
//! What a line is about comes from the spans it is logged in, not from fields repeated at each
//! call: an instance's tasks run in an `instance` span (`instance=<name>`,
//! `instance::span`), a scrape job's in a `scrape_job` span inside it (`job=…`), a scrape loop
//! in a `target` span inside that (`target_url=…`), a remote_write endpoint's tasks in a
//! `remote_write` span inside the instance's (`remote_name=…`, `QueueManager::span`). Both
//! formats write the fields of every enclosing span, outermost first, on the line itself, as
//! if they had been given at the call: logfmt after `msg`, before the event's own fields; JSON
//! as top-level keys after the event's fields. A field the event gives itself wins over a
//! span's of the same name.
//!
//! - These spans are created at ERROR level (`error_span!`): a span below `--log.level` is
//!   disabled and would take its fields off the lines logged in it.
//! - `tokio::spawn` does not carry the current span into the new task: spawn with
//!   `.instrument(span)` or `.in_current_span()` (`tracing::Instrument`).

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Logfmt,
    Json,
}

/// Installs the global subscriber writing to standard error. Calling it twice is harmless.
pub fn init(level: Level, format: Format) {
    let _ = tracing::dispatcher::set_global_default(subscriber(level, format, std::io::stderr));
}

/// The subscriber [`init`] installs, writing to `writer`.
fn subscriber<W>(level: Level, format: Format, writer: W) -> tracing::Dispatch
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(writer)
        // A failed write (standard error closed: the reader went away) is dropped. Reporting it
        // would `eprintln!` to that same closed stream, which panics the task that logged, and a
        // panicked signal task never starts the shutdown.
        .log_internal_errors(false)
        .with_ansi(false)
        // Span fields are kept as JSON (typed values) and put on each line by the formatters.
        .fmt_fields(JsonFields::new());
    match format {
        Format::Logfmt => tracing::Dispatch::new(builder.event_format(Logfmt).finish()),
        Format::Json => tracing::Dispatch::new(builder.event_format(Json).finish()),
    }
}

/// The fields of the spans enclosing the event, outermost first, without those named in
/// `skip` (the event's own).
fn span_fields<S>(
    ctx: &FmtContext<'_, S, JsonFields>,
    skip: &[String],
) -> Vec<(String, serde_json::Value)>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let mut out: Vec<(String, serde_json::Value)> = Vec::new();
    let Some(scope) = ctx.event_scope() else {
        return out;
    };
    for span in scope.from_root() {
        let ext = span.extensions();
        let Some(fields) = ext.get::<FormattedFields<JsonFields>>() else {
            continue;
        };
        let Ok(serde_json::Value::Object(map)) = serde_json::from_str(&fields.fields) else {
            continue;
        };
        for (k, v) in map {
            if skip.contains(&k) {
                continue;
            }
            // An inner span's value replaces an outer one's.
            match out.iter_mut().find(|(name, _)| *name == k) {
                Some(slot) => slot.1 = v,
                None => out.push((k, v)),
            }
        }
    }
    out
}

/// A logfmt event formatter: `ts=2026-01-02T03:04:05.678Z level=info msg="…" key=value`.
/// The message comes after the timestamp and level, fields after it, in call order.
#[derive(Debug, Clone, Copy, Default)]
pub struct Logfmt;

impl<S> FormatEvent<S, JsonFields> for Logfmt
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
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
        for (name, value) in span_fields(ctx, &visitor.names) {
            write!(writer, " {name}=")?;
            match value {
                serde_json::Value::String(s) => write_value(&mut writer, &s)?,
                other => write_value(&mut writer, &other.to_string())?,
            }
        }
        writer.write_str(&visitor.fields)?;
        writeln!(writer)
    }
}

#[derive(Default)]
struct LogfmtVisitor {
    message: Option<String>,
    fields: String,
    names: Vec<String>,
}

impl LogfmtVisitor {
    fn push(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = Some(value.to_owned());
            return;
        }
        self.names.push(field.name().to_owned());
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

/// A JSON-lines event formatter:
/// `{"timestamp":"2026-01-02T03:04:05.678901Z","level":"INFO","message":"…","key":value,…,"target":"agent::…"}`,
/// the event's fields (message included) in call order, then the spans' fields, then the target.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl<S> FormatEvent<S, JsonFields> for Json
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut visitor = JsonVisitor::default();
        event.record(&mut visitor);
        let now = crate::clock::unix_nanos(crate::clock::Clock::system().now());
        let mut fields = vec![
            (
                "timestamp".to_owned(),
                serde_json::Value::String(crate::clock::rfc3339(
                    now,
                    crate::clock::Fraction::Micros,
                )),
            ),
            (
                "level".to_owned(),
                serde_json::Value::String(event.metadata().level().to_string()),
            ),
        ];
        let names: Vec<String> = visitor.fields.iter().map(|(k, _)| k.clone()).collect();
        fields.extend(visitor.fields);
        fields.extend(span_fields(ctx, &names));
        fields.push((
            "target".to_owned(),
            serde_json::Value::String(event.metadata().target().to_owned()),
        ));
        writer.write_char('{')?;
        for (i, (k, v)) in fields.iter().enumerate() {
            if i > 0 {
                writer.write_char(',')?;
            }
            let key = serde_json::to_string(k).map_err(|_| fmt::Error)?;
            let value = serde_json::to_string(v).map_err(|_| fmt::Error)?;
            write!(writer, "{key}:{value}")?;
        }
        writer.write_str("}\n")
    }
}

/// An event's fields as JSON values, in call order.
#[derive(Default)]
struct JsonVisitor {
    fields: Vec<(String, serde_json::Value)>,
}

impl JsonVisitor {
    fn push(&mut self, field: &Field, value: serde_json::Value) {
        self.fields.push((field.name().to_owned(), value));
    }
}

impl Visit for JsonVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.push(field, format!("{value:?}").into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.push(field, value.to_string().into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field, value.into());
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
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The lines `f` logs, at `--log.level=warn`, in `format`.
    fn lines(format: Format, f: impl FnOnce()) -> Vec<String> {
        let out = Capture::default();
        let writer = out.clone();
        tracing::dispatcher::with_default(
            &subscriber(Level::WARN, format, move || writer.clone()),
            f,
        );
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    /// An instance's line, a scrape target's and a remote_write endpoint's, logged in the
    /// spans the agent runs them in (error-level spans: enabled at `warn`).
    fn log_one_of_each() {
        // As `instance::span` makes it (not called: logging sits below instance).
        let instance = tracing::error_span!("instance", instance = "team/a");
        let _i = instance.enter();
        tracing::warn!(folder = "team--a", "instance line");
        {
            let job = tracing::error_span!("scrape_job", job = "node");
            let _j = job.enter();
            let target = tracing::error_span!("target", target_url = "http://h:9100/metrics");
            let _t = target.enter();
            tracing::warn!(error = "connection refused", "target line");
        }
        let remote = tracing::error_span!("remote_write", remote_name = "r1");
        let _r = remote.enter();
        tracing::error!(samples = 3u64, "endpoint line");
        // The event's own field wins over the span's.
        tracing::warn!(instance = "other", "override line");
        // Below the level: not written, whatever the spans.
        tracing::info!("hidden");
    }

    #[test]
    fn logfmt_lines_carry_the_fields_of_their_spans() {
        let got = lines(Format::Logfmt, log_one_of_each);
        let tails: Vec<&str> = got
            .iter()
            .map(|l| &l[l.find(" level=").expect("a level")..])
            .collect();
        assert_eq!(
            tails,
            [
                r#" level=warn msg="instance line" instance=team/a folder=team--a"#,
                r#" level=warn msg="target line" instance=team/a job=node target_url=http://h:9100/metrics error="connection refused""#,
                r#" level=error msg="endpoint line" instance=team/a remote_name=r1 samples=3"#,
                r#" level=warn msg="override line" remote_name=r1 instance=other"#,
            ]
        );
        assert!(got.iter().all(|l| l.starts_with("ts=")), "{got:?}");
    }

    #[test]
    fn json_lines_carry_the_fields_of_their_spans() {
        let got = lines(Format::Json, log_one_of_each);
        let parsed: Vec<serde_json::Value> = got
            .iter()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect();
        assert_eq!(parsed.len(), 4, "{got:?}");
        let expected = [
            serde_json::json!({"level": "WARN", "message": "instance line", "instance": "team/a", "folder": "team--a"}),
            serde_json::json!({"level": "WARN", "message": "target line", "instance": "team/a", "job": "node",
                "target_url": "http://h:9100/metrics", "error": "connection refused"}),
            serde_json::json!({"level": "ERROR", "message": "endpoint line", "instance": "team/a", "remote_name": "r1", "samples": 3}),
            serde_json::json!({"level": "WARN", "message": "override line", "instance": "other", "remote_name": "r1"}),
        ];
        for (line, want) in parsed.iter().zip(expected) {
            let mut line = line.as_object().unwrap().clone();
            let ts = line.remove("timestamp").expect("a timestamp");
            assert!(
                crate::clock::parse_rfc3339(ts.as_str().unwrap()).is_some(),
                "{ts}"
            );
            assert_eq!(line.remove("target").unwrap(), "agent::logging::tests");
            assert_eq!(serde_json::Value::Object(line), want);
        }
    }

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
