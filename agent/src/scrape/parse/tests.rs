//! Parser tests: targeted cases, the fixture corpus in `fixtures/exposition/`, and properties.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::*;

fn prom(body: &str) -> Result<Vec<Entry<'_>>, ParseError> {
    parse_all(body.as_bytes(), Format::PrometheusText)
}

fn om(body: &str) -> Result<Vec<Entry<'_>>, ParseError> {
    parse_all(body.as_bytes(), Format::OpenMetrics)
}

fn samples<'a>(entries: &[Entry<'a>]) -> Vec<Sample<'a>> {
    entries
        .iter()
        .filter_map(|e| match e {
            Entry::Sample(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

fn only_sample(body: &str) -> Sample<'_> {
    let entries = prom(body).unwrap();
    let mut s = samples(&entries);
    assert_eq!(s.len(), 1, "{entries:?}");
    s.remove(0)
}

fn pairs(labels: &Labels<'_>) -> Vec<(String, String)> {
    labels
        .iter()
        .map(|(n, v)| (n.to_owned(), v.into_owned()))
        .collect()
}

fn owned_pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

fn prom_err(body: &str) -> ParseError {
    match prom(body) {
        Err(e) => e,
        Ok(entries) => panic!("{body:?} parsed: {entries:?}"),
    }
}

fn om_err(body: &str) -> ParseError {
    match om(body) {
        Err(e) => e,
        Ok(entries) => panic!("{body:?} parsed: {entries:?}"),
    }
}

#[test]
fn content_type_selects_format() {
    for (ct, want) in [
        (
            Some("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            Format::OpenMetrics,
        ),
        (Some("Application/OpenMetrics-Text"), Format::OpenMetrics),
        (Some("text/plain; version=0.0.4"), Format::PrometheusText),
        (Some("application/json"), Format::PrometheusText),
        (Some(""), Format::PrometheusText),
        (None, Format::PrometheusText),
    ] {
        assert_eq!(Format::from_content_type(ct), want, "{ct:?}");
    }
}

#[test]
fn sample_fields_borrow_from_the_body() {
    let s =
        only_sample("http_requests:rate5m{code=\"200\",path=\"/a,b={c}#\"} 1.5e3 1700000000000\n");
    assert_eq!(
        s.series,
        b"http_requests:rate5m{code=\"200\",path=\"/a,b={c}#\"}"
    );
    assert_eq!(s.name, "http_requests:rate5m");
    assert_eq!(
        pairs(&s.labels),
        owned_pairs(&[("code", "200"), ("path", "/a,b={c}#")])
    );
    assert!(s.labels.iter().all(|(_, v)| matches!(v, Cow::Borrowed(_))));
    assert_eq!(s.value, 1500.0);
    assert_eq!(s.timestamp, Some(1_700_000_000_000));
    assert_eq!(s.exemplar, None);
    assert_eq!(s.labels.get("code").as_deref(), Some("200"));
    assert_eq!(s.labels.get("missing"), None);
}

#[test]
fn escapes_are_undone_lazily() {
    let s = only_sample(r#"m{a="q\"uote",b="back\\slash",c="new\nline",d="tab\t",e="plain"} 1"#);
    let p = s.labels.iter().collect::<Vec<_>>();
    assert_eq!(p[0].1, "q\"uote");
    assert_eq!(p[1].1, "back\\slash");
    assert_eq!(p[2].1, "new\nline");
    assert_eq!(
        p[3].1, "tab\\t",
        "unknown escapes are kept as Prometheus does"
    );
    assert!(matches!(p[4].1, Cow::Borrowed("plain")));
}

#[test]
fn special_values_and_float_syntax() {
    for (text, want) in [
        ("+Inf", f64::INFINITY),
        ("-Inf", f64::NEG_INFINITY),
        ("Inf", f64::INFINITY),
        ("1e3", 1000.0),
        ("-0.5", -0.5),
        (".5", 0.5),
    ] {
        assert_eq!(only_sample(&format!("m {text}\n")).value, want, "{text}");
    }
    let nan = only_sample("m NaN\n").value;
    assert_eq!(nan.to_bits(), NORMAL_NAN_BITS);
    for bad in ["1_000", "0x10", "1e400", "abc", "+NaN"] {
        let e = prom_err(&format!("m {bad}\n"));
        assert!(
            matches!(e.kind, ParseErrorKind::InvalidValue { .. }),
            "{bad}: {e}"
        );
        assert_eq!((e.line, e.column), (1, 3), "{bad}");
    }
}

#[test]
fn prometheus_text_layout_rules() {
    // Empty label set, trailing comma, whitespace everywhere it is allowed, tabs.
    let s = only_sample("m{} 1");
    assert!(s.labels.is_empty());
    assert_eq!(s.series, b"m{}");
    let s = only_sample("m{a=\"b\",} 1\n");
    assert_eq!(pairs(&s.labels), owned_pairs(&[("a", "b")]));
    let s = only_sample("m \t{ a = \"b\" , c=\"d\" }\t2 \t 17 \t\n");
    assert_eq!(pairs(&s.labels), owned_pairs(&[("a", "b"), ("c", "d")]));
    assert_eq!(s.series, b"m \t{ a = \"b\" , c=\"d\" }");
    assert_eq!((s.value, s.timestamp), (2.0, Some(17)));
    // Leading whitespace is part of the name (which the scrape refuses), as in Prometheus.
    let s = only_sample("  \tm{a=\"b\"} 1\n");
    assert_eq!((s.name, s.series), ("  \tm", &b"  \tm{a=\"b\"}"[..]));
    // Prometheus tolerates a missing comma between labels and no space after `}`.
    let s = only_sample("m{a=\"1\" b=\"2\"}3\n");
    assert_eq!(pairs(&s.labels), owned_pairs(&[("a", "1"), ("b", "2")]));
    assert_eq!(s.value, 3.0);
    // Blank and whitespace-only lines.
    assert_eq!(samples(&prom("\n\n  \t\nm 1\n\n").unwrap()).len(), 1);
    assert_eq!(prom("").unwrap(), vec![]);
}

#[test]
fn metadata_and_comments() {
    let entries = prom(
        "# HELP m Some \\\\ help\\nsecond \"line\"\n# TYPE m counter\n#HELP not meta\n# just a comment\n#\n# HELP empty\n# UNIT m seconds\n",
    )
    .unwrap();
    assert_eq!(
        entries,
        vec![
            Entry::Help {
                name: "m",
                help: Cow::Owned("Some \\ help\nsecond \"line\"".to_owned())
            },
            Entry::Type {
                name: "m",
                kind: MetricType::Counter
            },
            Entry::Comment(b"HELP not meta"),
            Entry::Comment(b" just a comment"),
            Entry::Comment(b""),
            Entry::Help {
                name: "empty",
                help: Cow::Borrowed("")
            },
            Entry::Comment(b" UNIT m seconds"),
        ]
    );
    let e = prom_err("# TYPE m gaugehistogram\n");
    assert_eq!(e.kind, ParseErrorKind::InvalidType("gaugehistogram".into()));
    assert_eq!((e.line, e.column), (1, 10));
    // The type is the rest of the line less one separator byte, as Prometheus reads it.
    for (line, kind) in [
        ("# TYPE m\n", ""),
        ("# TYPE m gauge \n", "gauge "),
        ("# TYPE m gauge\t\n", "gauge\t"),
        ("# TYPE m  gauge\n", " gauge"),
    ] {
        assert_eq!(
            prom_err(line).kind,
            ParseErrorKind::InvalidType(kind.into()),
            "{line:?}"
        );
    }
    assert_eq!(
        prom_err("# TYPE m gauge   \t\n").to_string(),
        "line 1, column 10: invalid metric type \"gauge   \\t\""
    );
    let entries = prom("# TYPE m\tgauge\n# HELP m  two spaces \n# HELP m-x odd\n").unwrap();
    assert_eq!(
        entries,
        vec![
            Entry::Type {
                name: "m",
                kind: MetricType::Gauge
            },
            Entry::Help {
                name: "m",
                help: Cow::Borrowed(" two spaces ")
            },
            Entry::Help {
                name: "m",
                help: Cow::Borrowed("x odd")
            },
        ]
    );
    let e = prom_err("# HELP m\u{e9}t\u{e9}\n");
    assert_eq!(
        (e.line, e.column, e.kind),
        (1, 9, ParseErrorKind::InvalidUtf8)
    );
}

#[test]
fn families_tag_samples() {
    let entries = prom(
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_count 1\nh_sum 2\nh 3\nother 1\n# TYPE c_total counter\nc_total 4\n",
    )
    .unwrap();
    let kinds: Vec<_> = samples(&entries)
        .iter()
        .map(|s| (s.name, s.kind()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("h_bucket", MetricType::Histogram),
            ("h_count", MetricType::Histogram),
            ("h_sum", MetricType::Histogram),
            ("h", MetricType::Unknown),
            ("other", MetricType::Unknown),
            ("c_total", MetricType::Counter),
        ]
    );
    assert!(MetricType::Counter.family_contains("foo", "foo_created"));
    assert!(MetricType::Info.family_contains("build", "build_info"));
    assert!(!MetricType::Info.family_contains("build", "build"));
    assert!(MetricType::GaugeHistogram.family_contains("q", "q_gsum"));
    assert!(!MetricType::Gauge.family_contains("q", "q_sum"));
}

#[test]
fn errors_carry_position_and_reason() {
    let e = prom_err("ok 1\nm{a=\"b\" INVALID} 1\n");
    assert_eq!((e.line, e.column), (2, 16));
    assert_eq!(
        e.to_string(),
        "line 2, column 16: expected '=' after label name, got \"}\""
    );
    let e = prom_err("m{a=\"b\",a=\"c\"} 1\n");
    assert_eq!(e.kind, ParseErrorKind::DuplicateLabel("a".into()));
    assert_eq!((e.line, e.column), (1, 9));
    let e = prom_err("m{__name__=\"x\"} 1\n");
    assert_eq!(e.kind, ParseErrorKind::DuplicateLabel("__name__".into()));
    let e = prom_err("m{a=\"unterminated} 1\n");
    assert_eq!(e.kind, ParseErrorKind::UnterminatedLabelValue);
    let e = prom_err("m{a=\"b\\");
    assert_eq!(e.kind, ParseErrorKind::UnterminatedLabelValue);
    let e = prom_err("m 1 -5\n");
    assert_eq!((e.line, e.column), (1, 5));
    let e = prom_err("m 1 99999999999999999999\n");
    assert!(matches!(e.kind, ParseErrorKind::InvalidTimestamp { .. }));
    let e = prom_err("m 1 2 3\n");
    assert!(e.to_string().contains("end of line after timestamp"), "{e}");
    let e = prom_err("m\n");
    assert!(
        e.to_string().contains("expected value, got end of line"),
        "{e}"
    );
    let e = prom_err("m=1\n");
    assert!(e.to_string().contains("whitespace or '{'"), "{e}");
    let e = prom_err("1m 1\n");
    assert_eq!((e.line, e.column), (1, 1));
    // After an error the parser yields nothing more.
    let mut p = Parser::new(b"bad\ngood 1\n", Format::PrometheusText);
    assert!(p.next().unwrap().is_err());
    assert!(p.next().is_none());
}

#[test]
fn invalid_utf8_is_an_error_but_not_in_comments() {
    let body: &[u8] = b"# caf\xe9\nm{a=\"caf\xe9\"} 1\n";
    let mut p = Parser::new(body, Format::PrometheusText);
    assert_eq!(p.next().unwrap().unwrap(), Entry::Comment(b" caf\xe9"));
    let e = p.next().unwrap().unwrap_err();
    assert_eq!(
        (e.line, e.column, e.kind),
        (2, 9, ParseErrorKind::InvalidUtf8)
    );
}

/// Repeated names: an error in a series (Prometheus's storage refuses it), except for names
/// the caller overwrites (the target's labels) and in exemplars (Prometheus keeps them).
#[test]
fn repeated_label_names() {
    let body = b"m{job=\"a\",x=\"1\",job=\"b\"} 1\n";
    let mut p = Parser::new(body, Format::PrometheusText);
    assert_eq!(
        p.next().unwrap().unwrap_err().kind,
        ParseErrorKind::DuplicateLabel("job".into())
    );
    let mut p = Parser::new(body, Format::PrometheusText);
    p.tolerate(["job", "instance", "__name__"]);
    let Entry::Sample(s) = p.next().unwrap().unwrap() else {
        panic!("a sample");
    };
    assert_eq!(s.labels.len(), 3);
    // Still an error for names not tolerated, and always for `__name__`.
    let mut p = Parser::new(b"m{__name__=\"x\"} 1\n", Format::PrometheusText);
    p.tolerate(["__name__"]);
    assert!(p.next().unwrap().is_err());
    let entries = om("m_total 1 # {a=\"b\",a=\"c\"} 1\n# EOF\n").unwrap();
    let Entry::Sample(s) = &entries[0] else {
        panic!("a sample");
    };
    assert_eq!(s.exemplar.as_ref().map(|e| e.labels.len()), Some(2));
}

#[test]
fn many_labels_duplicate_check_is_not_quadratic_and_still_exact() {
    let mut line = String::from("m{");
    for i in 0..5000 {
        line.push_str(&format!("l{i}=\"v\","));
    }
    line.push_str("} 1\n");
    assert_eq!(only_sample(&line).labels.len(), 5000);
    let dup = line.replace("} 1", "l4321=\"again\"} 1");
    assert_eq!(
        prom_err(&dup).kind,
        ParseErrorKind::DuplicateLabel("l4321".into())
    );
}

#[test]
fn openmetrics_body() {
    let body = "# TYPE foo counter\n# UNIT foo_seconds seconds\n# HELP foo A \\\"quoted\\\" help\nfoo_total{a=\"b\"} 17 1520879607.789 # {trace_id=\"KOO5S4vxi0o\"} 0.67 1520879602.5\nfoo_created 1520430000.123\nfoo_total 1 # {} 2\n# EOF\n";
    let entries = om(body).unwrap();
    assert_eq!(entries.last(), Some(&Entry::Eof));
    assert_eq!(
        entries[1],
        Entry::Unit {
            name: "foo_seconds",
            unit: "seconds"
        }
    );
    assert_eq!(
        entries[2],
        Entry::Help {
            name: "foo",
            help: Cow::Owned("A \"quoted\" help".into())
        }
    );
    let s = samples(&entries);
    assert_eq!(s[0].timestamp, Some(1_520_879_607_789));
    assert_eq!(s[0].kind(), MetricType::Counter);
    let ex = s[0].exemplar.as_ref().unwrap();
    assert_eq!(
        pairs(&ex.labels),
        owned_pairs(&[("trace_id", "KOO5S4vxi0o")])
    );
    assert_eq!((ex.value, ex.timestamp), (0.67, Some(1_520_879_602_500)));
    assert_eq!(s[1].name, "foo_created");
    assert_eq!(s[1].kind(), MetricType::Counter);
    assert_eq!(s[1].value, 1_520_430_000.123);
    let ex = s[2].exemplar.as_ref().unwrap();
    assert!(ex.labels.is_empty());
    assert_eq!((ex.value, ex.timestamp), (2.0, None));
    // `# EOF` without its newline is fine.
    assert_eq!(om("m 1\n# EOF").unwrap().len(), 2);
}

#[test]
fn openmetrics_errors() {
    for (body, want) in [
        ("m 1\n", "line 2, column 1: data does not end with # EOF"),
        ("m 1", "line 1, column 4: data does not end with # EOF"),
        ("", "line 1, column 1: data does not end with # EOF"),
        ("# EOF\n\n", "line 2, column 1: unexpected data after # EOF"),
        ("# EOF\nm 1\n", "line 2, column 1: unexpected data after # EOF"),
        ("\n# EOF\n", "line 1, column 1: expected a sample or metadata (blank line), got end of line"),
        ("# comment\n# EOF\n", "line 1, column 1: expected \"# HELP \", \"# TYPE \", \"# UNIT \" or \"# EOF\", got \"#\""),
        ("# TYPE m untyped\n# EOF\n", "line 1, column 10: invalid metric type \"untyped\""),
        ("# UNIT m_bytes seconds\n# EOF\n", "line 1, column 16: unit \"seconds\" is not a suffix of metric name \"m_bytes\""),
        ("m  1\n# EOF\n", "line 1, column 3: expected value, got \" \""),
        ("m 1 \n# EOF\n", "line 1, column 5: invalid timestamp \"\": empty"),
        ("m{a=\"b\" } 1\n# EOF\n", "line 1, column 8: expected ',' or '}' after label value, got \" \""),
        ("m{a=\"b\",} 1\n# EOF\n", "line 1, column 9: expected label name, got \"}\""),
        ("m 1 # {a=\"b\",} 1\n# EOF\n", "line 1, column 14: expected label name, got \"}\""),
        ("m 1 NaN\n# EOF\n", "line 1, column 5: invalid timestamp \"NaN\": not finite"),
        ("m 1 1e300\n# EOF\n", "line 1, column 5: invalid timestamp \"1e300\": out of the int64 millisecond range"),
        ("m 1 # {a=\"b\"}\n# EOF\n", "line 1, column 14: expected a space before the exemplar value, got end of line"),
        ("m 1 2 3\n# EOF\n", "line 1, column 6: expected end of line or exemplar, got \" \""),
    ] {
        assert_eq!(om_err(body).to_string(), want, "{body:?}");
    }
}

#[test]
fn parser_reset_keeps_working() {
    let first = b"a{x=\"1\",y=\"2\"} 1\n".to_vec();
    let mut p = Parser::new(&first, Format::PrometheusText);
    assert!(p.next().unwrap().is_ok());
    let second = b"b 2\n# EOF\n".to_vec();
    let mut p = p.reset(&second, Format::OpenMetrics);
    assert_eq!(p.format(), Format::OpenMetrics);
    let entries: Vec<_> = p.by_ref().collect::<Result<_, _>>().unwrap();
    assert_eq!(entries.len(), 2);
}

// ---------------------------------------------------------------------------------------------
// Fixture corpus.

/// One line per entry, the form the `.expected` files use (see fixtures/exposition/README.md).
fn dump(body: &[u8], format: Format) -> String {
    let mut out = String::new();
    for entry in Parser::new(body, format) {
        let line = match entry {
            Err(e) => format!("error {e}"),
            Ok(Entry::Sample(s)) => {
                let mut text = Vec::new();
                format_sample(&mut text, s.name, s.labels.iter(), s.value, s.timestamp);
                let mut line = String::from_utf8_lossy(&text).trim_end().to_owned();
                if s.timestamp.is_none() {
                    line.push_str(" -");
                }
                line = format!("sample {line} {}", s.kind().as_str());
                if let Some(ex) = s.exemplar {
                    let mut text = Vec::new();
                    format_sample(&mut text, "", ex.labels.iter(), ex.value, ex.timestamp);
                    let text = String::from_utf8_lossy(&text);
                    let text = if ex.labels.is_empty() {
                        format!("{{}}{}", text.trim_end())
                    } else {
                        text.trim_end().to_owned()
                    };
                    line.push_str(&format!(" # {text}"));
                }
                line
            }
            Ok(Entry::Type { name, kind }) => format!("type {name} {}", kind.as_str()),
            Ok(Entry::Help { name, help }) => format!("help {name} {help:?}"),
            Ok(Entry::Unit { name, unit }) => format!("unit {name} {unit:?}"),
            Ok(Entry::Comment(text)) => format!("comment {:?}", String::from_utf8_lossy(text)),
            Ok(Entry::Eof) => "eof".to_owned(),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/exposition")
}

fn fixture_format(path: &Path) -> Option<Format> {
    match path.extension()?.to_str()? {
        "prom" => Some(Format::PrometheusText),
        "om" => Some(Format::OpenMetrics),
        _ => None,
    }
}

/// Every `*.prom` (text 0.0.4) and `*.om` (OpenMetrics) fixture parses to exactly its
/// `*.expected` dump. Set `AGENTCTL_BLESS=1` to rewrite the dumps (then review the diff).
#[test]
fn fixture_corpus_matches_expected_dumps() {
    let bless = std::env::var_os("AGENTCTL_BLESS").is_some();
    let mut checked = 0;
    let mut entries: Vec<_> = std::fs::read_dir(fixture_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let Some(format) = fixture_format(&path) else {
            continue;
        };
        let body = std::fs::read(&path).unwrap();
        let got = dump(&body, format);
        let expected_path = path.with_extension("expected");
        if bless {
            std::fs::write(&expected_path, &got).unwrap();
        }
        let want = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|e| panic!("{}: {e}", expected_path.display()));
        assert_eq!(got, want, "{}", path.display());
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} fixtures found");
}

/// Valid 0.0.4 fixtures survive parse -> format -> parse unchanged.
#[test]
fn fixture_corpus_round_trips_through_format() {
    for entry in std::fs::read_dir(fixture_dir()).unwrap() {
        let path = entry.unwrap().path();
        if fixture_format(&path) != Some(Format::PrometheusText) {
            continue;
        }
        let body = std::fs::read(&path).unwrap();
        let Ok(parsed) = parse_all(&body, Format::PrometheusText) else {
            continue;
        };
        let mut text = Vec::new();
        format_entries(&mut text, &parsed);
        let again = parse_all(&text, Format::PrometheusText).unwrap();
        assert_eq!(
            dump(&text, Format::PrometheusText),
            dump(&body, Format::PrometheusText),
            "{}",
            path.display()
        );
        assert_eq!(again.len(), parsed.len(), "{}", path.display());
    }
}

// ---------------------------------------------------------------------------------------------
// Properties.

/// An owned, comparable view of an entry (NaN compared by class, since parsing normalises it).
#[derive(Debug, Clone, PartialEq)]
enum Owned {
    Sample {
        name: String,
        labels: Vec<(String, String)>,
        value: ValueKey,
        timestamp: Option<i64>,
    },
    Type(String, MetricType),
    Help(String, String),
    Comment(Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ValueKey {
    NaN,
    Bits(u64),
}

fn value_key(v: f64) -> ValueKey {
    if v.is_nan() {
        ValueKey::NaN
    } else {
        ValueKey::Bits(v.to_bits())
    }
}

fn to_owned(entry: &Entry<'_>) -> Owned {
    match entry {
        Entry::Sample(s) => Owned::Sample {
            name: s.name.to_owned(),
            labels: pairs(&s.labels),
            value: value_key(s.value),
            timestamp: s.timestamp,
        },
        Entry::Type { name, kind } => Owned::Type((*name).to_owned(), *kind),
        Entry::Help { name, help } => Owned::Help((*name).to_owned(), help.to_string()),
        Entry::Comment(c) => Owned::Comment(c.to_vec()),
        Entry::Unit { .. } | Entry::Eof => unreachable!("not generated"),
    }
}

fn metric_name() -> impl Strategy<Value = String> {
    "[a-zA-Z_:][a-zA-Z0-9_:]{0,12}"
}

fn label_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9/._-]{0,12}",
        "[ -~]{0,16}",
        any::<String>(),
        Just("a,b=c}{#\"\\\n".to_owned()),
    ]
}

fn labels_strategy() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::btree_map("[a-zA-Z_][a-zA-Z0-9_]{0,8}", label_value(), 0..6).prop_map(
        |m| {
            m.into_iter()
                .filter(|(name, _)| name != "__name__")
                .collect()
        },
    )
}

fn value_strategy() -> impl Strategy<Value = f64> {
    prop_oneof![
        (0u32..100_000).prop_map(f64::from),
        any::<f64>(),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        proptest::num::u64::ANY.prop_map(f64::from_bits),
    ]
}

fn kind_strategy() -> impl Strategy<Value = MetricType> {
    prop_oneof![
        Just(MetricType::Counter),
        Just(MetricType::Gauge),
        Just(MetricType::Histogram),
        Just(MetricType::Summary),
        Just(MetricType::Unknown),
    ]
}

fn owned_entry() -> impl Strategy<Value = Owned> {
    prop_oneof![
        6 => (metric_name(), labels_strategy(), value_strategy(), proptest::option::of(0i64..i64::MAX))
            .prop_map(|(name, labels, value, timestamp)| Owned::Sample {
                name,
                labels,
                value: value_key(value),
                timestamp,
            }),
        1 => (metric_name(), kind_strategy()).prop_map(|(n, k)| Owned::Type(n, k)),
        1 => (metric_name(), any::<String>()).prop_map(|(n, h)| Owned::Help(n, h)),
        1 => "( [ -~]{0,20})?".prop_filter("would read as HELP/TYPE", |c| {
                let t = c.trim_start();
                !t.starts_with("HELP") && !t.starts_with("TYPE")
            }).prop_map(|c| Owned::Comment(c.into_bytes())),
    ]
}

fn value_of(key: ValueKey) -> f64 {
    match key {
        ValueKey::NaN => f64::NAN,
        ValueKey::Bits(b) => f64::from_bits(b),
    }
}

/// Writes owned entries with `format_*`.
fn write_owned(entries: &[Owned]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        match e {
            Owned::Sample {
                name,
                labels,
                value,
                timestamp,
            } => format_sample(
                &mut out,
                name,
                labels.iter().map(|(n, v)| (n, v)),
                value_of(*value),
                *timestamp,
            ),
            Owned::Type(name, kind) => format_entry(&mut out, &Entry::Type { name, kind: *kind }),
            Owned::Help(name, help) => format_entry(
                &mut out,
                &Entry::Help {
                    name,
                    help: Cow::Borrowed(help),
                },
            ),
            Owned::Comment(c) => format_entry(&mut out, &Entry::Comment(c)),
        }
    }
    out
}

/// Renders owned entries as canonical 0.0.4 text by hand, independently of `format_*`, so
/// that `format(parse(x)) == x` is checked against a second implementation of the layout.
fn render_canonical(entries: &[Owned]) -> String {
    let mut out = String::new();
    for e in entries {
        match e {
            Owned::Sample {
                name,
                labels,
                value,
                timestamp,
            } => {
                out.push_str(name);
                if !labels.is_empty() {
                    let rendered: Vec<String> = labels
                        .iter()
                        .map(|(n, v)| {
                            let v = v
                                .replace('\\', "\\\\")
                                .replace('"', "\\\"")
                                .replace('\n', "\\n");
                            format!("{n}=\"{v}\"")
                        })
                        .collect();
                    out.push_str(&format!("{{{}}}", rendered.join(",")));
                }
                let mut v = Vec::new();
                format_value(&mut v, value_of(*value));
                out.push(' ');
                out.push_str(std::str::from_utf8(&v).unwrap());
                if let Some(ts) = timestamp {
                    out.push_str(&format!(" {ts}"));
                }
                out.push('\n');
            }
            Owned::Type(name, kind) => {
                out.push_str(&format!("# TYPE {name} {}\n", kind.as_prometheus_str()));
            }
            Owned::Help(name, help) => {
                let help = help.replace('\\', "\\\\").replace('\n', "\\n");
                out.push_str(&format!("# HELP {name} {help}\n"));
            }
            Owned::Comment(c) => {
                out.push('#');
                out.push_str(std::str::from_utf8(c).unwrap());
                out.push('\n');
            }
        }
    }
    out
}

/// Byte strings that look like expositions, to reach deep into the grammar.
fn exposition_like() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        "[a-z_:{}=\",# \t\n\\\\0-9.eE+\\-INFa]{0,200}".prop_map(String::into_bytes),
        (
            proptest::collection::vec(owned_entry(), 0..8),
            proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        )
            .prop_map(|(entries, edits)| {
                let mut body = render_canonical(&entries).into_bytes();
                body.extend_from_slice(b"# EOF\n");
                for (at, byte) in edits {
                    if body.is_empty() {
                        body.push(byte);
                    } else {
                        let i = at.index(body.len());
                        if byte % 3 == 0 {
                            body.remove(i);
                        } else {
                            body[i] = byte;
                        }
                    }
                }
                body
            }),
    ]
}

fn drain(body: &[u8], format: Format) {
    // Touch everything a caller could touch, so lazy decoding is exercised too.
    for entry in Parser::new(body, format).flatten() {
        if let Entry::Sample(s) = entry {
            for (name, value) in s.labels.iter() {
                assert!(!name.is_empty());
                let _ = value.len();
            }
            if let Some(ex) = s.exemplar {
                assert_eq!(ex.labels.iter().count(), ex.labels.len());
            }
            assert_eq!(s.labels.iter().count(), s.labels.len());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any bytes: Ok or Err, never a panic, and iteration ends.
    #[test]
    fn never_panics(body in exposition_like()) {
        drain(&body, Format::PrometheusText);
        drain(&body, Format::OpenMetrics);
    }

    /// format(parse(x)) == x for canonical 0.0.4 expositions.
    #[test]
    fn format_of_parse_is_identity(entries in proptest::collection::vec(owned_entry(), 0..12)) {
        let text = render_canonical(&entries);
        let parsed = parse_all(text.as_bytes(), Format::PrometheusText).unwrap();
        let mut again = Vec::new();
        format_entries(&mut again, &parsed);
        prop_assert_eq!(String::from_utf8(again).unwrap(), text);
    }

    /// parse(format(entries)) == entries.
    #[test]
    fn parse_of_format_is_identity(entries in proptest::collection::vec(owned_entry(), 0..12)) {
        let text = write_owned(&entries);
        let parsed = parse_all(&text, Format::PrometheusText).unwrap();
        let owned: Vec<Owned> = parsed.iter().map(to_owned).collect();
        prop_assert_eq!(owned, entries);
    }

    /// The same samples written as OpenMetrics parse to the same values.
    #[test]
    fn openmetrics_samples_parse(
        samples in proptest::collection::vec(
            (metric_name(), labels_strategy(), value_strategy(), proptest::option::of(0i64..4_000_000_000_000)),
            0..8,
        )
    ) {
        let mut text = Vec::new();
        for (name, labels, value, ts) in &samples {
            format_sample(&mut text, name, labels.iter().map(|(n, v)| (n, v)), *value, None);
            if let Some(ts) = ts {
                // Milliseconds as decimal seconds: exact in text, parsed back exactly.
                let line_end = text.len() - 1;
                let secs = format!(" {}.{:03}", ts / 1000, ts % 1000);
                text.splice(line_end..line_end, secs.bytes());
            }
        }
        text.extend_from_slice(b"# EOF\n");
        let parsed = parse_all(&text, Format::OpenMetrics).unwrap();
        prop_assert_eq!(parsed.len(), samples.len() + 1);
        for ((name, labels, value, ts), entry) in samples.iter().zip(&parsed) {
            let Entry::Sample(s) = entry else { panic!("{entry:?}") };
            prop_assert_eq!(s.name, name.as_str());
            prop_assert_eq!(&pairs(&s.labels), labels);
            prop_assert_eq!(value_key(s.value), value_key(*value));
            prop_assert_eq!(s.timestamp, *ts);
        }
    }
}

#[test]
fn huge_label_value_is_kept_whole() {
    let body = std::fs::read(fixture_dir().join("huge_label_value.prom")).unwrap();
    let entries = parse_all(&body, Format::PrometheusText).unwrap();
    let s = samples(&entries);
    let big = s[0].labels.get("big").unwrap();
    assert!(big.len() >= 64 * 1024, "{}", big.len());
    assert!(big.contains("ä€😀") && big.contains(",={}#\\\""));
    assert_eq!(s[0].labels.get("after").as_deref(), Some("2"));
    assert_eq!(s[1].name, "next");
}

/// `next_known` with every series text seen before offered for every line it starts: a line
/// whose series is such a text yields a `Known` sample with what `next_entry` yields for it;
/// a text that is only a prefix of the line's series is refused; errors are the same.
#[test]
fn next_known_yields_what_next_entry_yields() {
    let seen_body =
        "m 1\nm{a=\"1\"} 1\nm {a=\"1\"} 1\nm{ a = \"1\" ,} 1\nm_total 1\nn{a=\"x\\\"}\"} 1\n";
    let seen: Vec<&[u8]> = samples(&prom(seen_body).unwrap())
        .iter()
        .map(|s| s.series)
        .collect();
    let lines = [
        "m 2",
        "m  2 17",
        "m\t2",
        "m",
        "m_total 3",
        "m_totalx 3",
        "m{a=\"1\"} 4",
        "m{a=\"1\"}4",
        "m{a=\"1\"} 4 5",
        "m{a=\"1\"}x",
        "m{a=\"1\"}} 4",
        "m{a=\"1\"} 4 5 6",
        "m {a=\"1\"} 5",
        "m {a=\"1\"}",
        "m{ a = \"1\" ,} 6",
        "n{a=\"x\\\"}\"} 7",
        "n{a=\"x\\\"}\"}",
        "m{a=\"1\",b=\"2\"} 8",
        "m {b=\"1\"} 9",
        "m{a=\"1\"} NaN",
        "m 1e400",
    ];
    // Invalid UTF-8 after a known series (only the rest of the line is checked there).
    let invalid: [&[u8]; 5] = [
        b"m{a=\"1\"} 4\xff",
        b"m{a=\"1\"}\xff 4",
        b"m 2 \xc3",
        b"m \xe2\x82",
        b"m{a=\"1\"} 4 \xc3\xa4",
    ];
    let lines = lines.iter().map(|l| l.as_bytes()).chain(invalid);
    for line in lines {
        for text in &seen {
            if !line.starts_with(text) {
                continue;
            }
            let mut full = Parser::new(line, Format::PrometheusText);
            let want = full.next_entry();
            let mut fast = Parser::new(line, Format::PrometheusText);
            let got = fast.next_known(&mut |l| l.starts_with(text).then_some(text.len()));
            let ctx = format!(
                "{:?} with {:?}",
                String::from_utf8_lossy(line),
                String::from_utf8_lossy(text)
            );
            match (want, got) {
                (Err(w), Err(g)) => assert_eq!(w, g, "{ctx}"),
                (Ok(Some(Entry::Sample(w))), Ok(Some(Parsed::Known(g)))) => {
                    assert_eq!(
                        w.series, *text,
                        "{ctx}: known only when the series is the text"
                    );
                    assert_eq!(
                        (w.value.to_bits(), w.timestamp),
                        (g.value.to_bits(), g.timestamp),
                        "{ctx}"
                    );
                    assert_eq!(g.series, *text, "{ctx}");
                }
                (Ok(Some(Entry::Sample(w))), Ok(Some(Parsed::Entry(Entry::Sample(g))))) => {
                    assert_ne!(
                        w.series, *text,
                        "{ctx}: the text is the series, known expected"
                    );
                    assert_eq!(format!("{w:?}"), format!("{g:?}"), "{ctx}");
                }
                (w, g) => panic!("{ctx}: {w:?} against {g:?}"),
            }
        }
    }
    // OpenMetrics lines are never known.
    let mut p = Parser::new(b"m 1\n# EOF\n", Format::OpenMetrics);
    let first = p.next_known(&mut |_| Some(1)).unwrap();
    assert!(matches!(first, Some(Parsed::Entry(Entry::Sample(_)))));
}
