//! The line parser; see the module docs for the grammar.

use super::error::{excerpt, ParseError, ParseErrorKind};
use super::float::parse_go_float;
use super::labels::{unescape, Labels};
use super::{Entry, Exemplar, Format, Known, MetricType, Parsed, Sample};

/// Up to this many labels, duplicates are found by comparing each new name with the previous
/// ones; above it, by sorting the names once at the end (a body with thousands of labels on
/// one line must not cost quadratic time).
const LINEAR_DUP_CHECK_MAX: usize = 16;

/// Byte classes for names, looked up once per byte.
const NAME_START: u8 = 1; // [a-zA-Z_:] for metric names
const NAME_CHAR: u8 = 2; // [a-zA-Z0-9_:]
const LABEL_START: u8 = 4; // [a-zA-Z_]
const LABEL_CHAR: u8 = 8; // [a-zA-Z0-9_]

const CLASSES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        let alpha = c.is_ascii_alphabetic() || c == b'_';
        let digit = c.is_ascii_digit();
        let mut class = 0;
        if alpha || c == b':' {
            class |= NAME_START | NAME_CHAR;
        }
        if digit {
            class |= NAME_CHAR | LABEL_CHAR;
        }
        if alpha {
            class |= LABEL_START | LABEL_CHAR;
        }
        t[i] = class;
        i += 1;
    }
    t
};

fn is(class: u8, b: Option<&u8>) -> bool {
    b.is_some_and(|&b| CLASSES[b as usize] & class != 0)
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t')) {
        i += 1;
    }
    i
}

/// End of the token starting at `i`: the next space or tab (and, in 0.0.4 values, `{`).
fn token_end(b: &[u8], i: usize, stop_at_brace: bool) -> usize {
    let rest = b.get(i..).unwrap_or_default();
    let len = rest
        .iter()
        .position(|&c| c == b' ' || c == b'\t' || (stop_at_brace && c == b'{'))
        .unwrap_or(rest.len());
    i + len
}

/// The caller's answer to "does this line start with a series text you know, and how long is
/// it" (see [`Parser::next_known`]).
/// A sample line's value, timestamp and exemplar.
type Tail<'a> = (f64, Option<i64>, Option<Exemplar<'a>>);

type KnownSeries<'f> = &'f mut dyn FnMut(&[u8]) -> Option<usize>;

/// Pull parser over one body. Yields entries until the end of the body, `# EOF` or the first
/// error; after either of the last two it yields nothing more.
///
/// Steady state allocates nothing: the label-name scratch vector is reused across lines
/// (reuse one `Parser` per target with [`Parser::reset`] to keep it across scrapes too).
#[derive(Debug)]
pub struct Parser<'a> {
    body: &'a [u8],
    pos: usize,
    /// Number of the next line to read, 1-based.
    line: usize,
    format: Format,
    done: bool,
    seen_eof: bool,
    /// The last `# TYPE`: family name and type.
    family: Option<(&'a str, MetricType)>,
    /// Scratch: label names of the series being parsed, for the duplicate check.
    names: Vec<&'a str>,
    /// Label names whose repetition in a series is not an error (see [`Parser::tolerate`]).
    tolerated: Vec<Box<str>>,
}

impl<'a> Parser<'a> {
    pub fn new(body: &'a [u8], format: Format) -> Self {
        Parser {
            body,
            pos: 0,
            line: 1,
            format,
            done: false,
            seen_eof: false,
            family: None,
            names: Vec::new(),
            tolerated: Vec::new(),
        }
    }

    /// Starts over on a new body, keeping the scratch buffer's capacity and the tolerated
    /// names.
    pub fn reset<'b>(self, body: &'b [u8], format: Format) -> Parser<'b> {
        let mut names = self.names;
        names.clear();
        // The scratch holds no borrows once cleared, so it can take the new lifetime.
        let names: Vec<&'b str> = names.into_iter().map(|_| "").collect();
        Parser {
            names,
            tolerated: self.tolerated,
            ..Parser::new(body, format)
        }
    }

    /// Label names a series may repeat: the caller overwrites them (the scrape sets the
    /// target's labels over the scraped ones), so, as in Prometheus, where only the final label
    /// set must be free of repeats, a repeat of one of these is no error. The first value is
    /// the one a [`Labels`] lookup finds. `__name__` is never tolerated.
    pub fn tolerate<'n>(&mut self, names: impl IntoIterator<Item = &'n str>) {
        self.tolerated = names
            .into_iter()
            .filter(|n| *n != "__name__")
            .map(Box::from)
            .collect();
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// The next entry, `Ok(None)` at the end.
    pub fn next_entry(&mut self) -> Result<Option<Entry<'a>>, ParseError> {
        let result = self.next_inner(None);
        if result.is_err() {
            self.done = true;
        }
        match result {
            Ok(Some(Parsed::Entry(e))) => Ok(Some(e)),
            // Only `next_known` yields known samples.
            Ok(Some(Parsed::Known(_)) | None) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Like [`next_entry`](Self::next_entry), with a shortcut for sample lines whose series
    /// text was seen before. For each 0.0.4 sample line, `known` is asked whether the line
    /// starts with a series text that this parser (with the same [`tolerate`](Self::tolerate)
    /// list, in either format) already returned as [`Sample::series`]; it answers with that
    /// text's length. The line then yields a [`Known`] sample: its series is not parsed again
    /// (the label set was validated when the text was first seen, and the parse of a series
    /// depends on its bytes alone), only the value and timestamp after it are. Everything
    /// else, OpenMetrics lines included, is as `next_entry` returns it, and every error is the
    /// one `next_entry` would return.
    ///
    /// The scrape cache answers `known` with the series it expects next (targets expose their
    /// series in the same order every scrape), which spares a hit the label parsing and the
    /// hash lookup of the text.
    pub fn next_known(
        &mut self,
        known: &mut dyn FnMut(&[u8]) -> Option<usize>,
    ) -> Result<Option<Parsed<'a>>, ParseError> {
        let result = self.next_inner(Some(known));
        if result.is_err() {
            self.done = true;
        }
        result
    }

    fn next_inner(
        &mut self,
        mut known: Option<KnownSeries<'_>>,
    ) -> Result<Option<Parsed<'a>>, ParseError> {
        loop {
            if self.done {
                return Ok(None);
            }
            let body = self.body;
            if self.pos >= body.len() {
                self.done = true;
                if self.format == Format::OpenMetrics && !self.seen_eof {
                    return Err(err(self.line, 0, ParseErrorKind::MissingEof));
                }
                return Ok(None);
            }
            let rest = &body[self.pos..];
            let (line, has_newline) = match memchr::memchr(b'\n', rest) {
                Some(i) => (&rest[..i], true),
                None => (rest, false),
            };
            self.pos += line.len() + usize::from(has_newline);
            let number = self.line;
            self.line += 1;
            let entry = match self.format {
                Format::PrometheusText => self.prometheus_line(line, number, &mut known)?,
                Format::OpenMetrics => self
                    .openmetrics_line(line, number, has_newline)?
                    .map(Parsed::Entry),
            };
            if let Some(entry) = entry {
                return Ok(Some(entry));
            }
        }
    }

    fn prometheus_line(
        &mut self,
        line: &'a [u8],
        number: usize,
        known: &mut Option<KnownSeries<'_>>,
    ) -> Result<Option<Parsed<'a>>, ParseError> {
        let start = skip_ws(line, 0);
        match line.get(start) {
            None => Ok(None),
            Some(b'#') => self
                .prometheus_comment(line, start, number)
                .map(|e| Some(Parsed::Entry(e))),
            Some(_) => {
                if let Some(end) = known
                    .as_mut()
                    .and_then(|k| k(line))
                    .filter(|&n| series_ends_at(line, n))
                {
                    // `line[..end]` has exactly the bytes of a series text the caller knows,
                    // which was UTF-8 when it was learnt: only the rest is checked (the same
                    // error, at the same column, as checking the whole line).
                    debug_assert!(std::str::from_utf8(&line[..end]).is_ok());
                    let tail = &line[end..];
                    let text = std::str::from_utf8(tail).map_err(|e| {
                        err(number, end + e.valid_up_to(), ParseErrorKind::InvalidUtf8)
                    })?;
                    let (value, timestamp, _) =
                        self.sample_tail(text, 0, number, false).map_err(|mut e| {
                            e.column += end;
                            e
                        })?;
                    return Ok(Some(Parsed::Known(Known {
                        series: &line[..end],
                        value,
                        timestamp,
                    })));
                }
                let text = utf8(line, number)?;
                self.sample(text, start, number, false)
                    .map(|s| Some(Parsed::Entry(Entry::Sample(s))))
            }
        }
    }

    /// A 0.0.4 `#` line at `hash`: HELP, TYPE or a free comment.
    fn prometheus_comment(
        &mut self,
        line: &'a [u8],
        hash: usize,
        number: usize,
    ) -> Result<Entry<'a>, ParseError> {
        let comment = Entry::Comment(&line[hash + 1..]);
        let after_hash = skip_ws(line, hash + 1);
        if after_hash == hash + 1 {
            return Ok(comment);
        }
        let keyword = &line[after_hash..];
        let is_help = keyword.starts_with(b"HELP");
        if !(is_help || keyword.starts_with(b"TYPE"))
            || !matches!(keyword.get(4), Some(b' ' | b'\t'))
        {
            return Ok(comment);
        }
        let text = utf8(line, number)?;
        let name_start = skip_ws(line, after_hash + 4);
        let name_end = metric_name_end(line, name_start, number, "metric name after HELP/TYPE")?;
        let name = &text[name_start..name_end];
        // The rest of the line less its first byte is the text, as Prometheus's lexer has it
        // (it takes everything after the name and drops one separator character, whatever it
        // is): `# TYPE m  gauge` is the type " gauge", and trailing whitespace belongs to the
        // type, which makes both invalid there too.
        let meta_start = (name_end + 1).min(line.len());
        if !text.is_char_boundary(meta_start) {
            return Err(err(number, name_end, ParseErrorKind::InvalidUtf8));
        }
        let meta = &text[meta_start..];
        if is_help {
            return Ok(Entry::Help {
                name,
                help: unescape(meta, false),
            });
        }
        let kind = MetricType::from_prometheus(meta).ok_or_else(|| {
            err(
                number,
                meta_start,
                ParseErrorKind::InvalidType(meta.to_owned()),
            )
        })?;
        self.family = Some((name, kind));
        Ok(Entry::Type { name, kind })
    }

    fn openmetrics_line(
        &mut self,
        line: &'a [u8],
        number: usize,
        has_newline: bool,
    ) -> Result<Option<Entry<'a>>, ParseError> {
        if line == b"# EOF" {
            if self.pos < self.body.len() {
                return Err(err(self.line, 0, ParseErrorKind::DataAfterEof));
            }
            self.seen_eof = true;
            self.done = true;
            return Ok(Some(Entry::Eof));
        }
        // Only `# EOF` may end the body without a newline.
        if !has_newline {
            return Err(err(number, line.len(), ParseErrorKind::MissingEof));
        }
        match line.first() {
            None => Err(unexpected(
                line,
                0,
                number,
                "a sample or metadata (blank line)",
            )),
            Some(b'#') => self.openmetrics_metadata(line, number).map(Some),
            Some(_) => {
                let text = utf8(line, number)?;
                self.sample(text, 0, number, true)
                    .map(|s| Some(Entry::Sample(s)))
            }
        }
    }

    fn openmetrics_metadata(
        &mut self,
        line: &'a [u8],
        number: usize,
    ) -> Result<Entry<'a>, ParseError> {
        let keyword = line.get(2..6).unwrap_or_default();
        if !line.starts_with(b"# ")
            || !matches!(keyword, b"HELP" | b"TYPE" | b"UNIT")
            || line.get(6) != Some(&b' ')
        {
            return Err(unexpected(
                line,
                0,
                number,
                "\"# HELP \", \"# TYPE \", \"# UNIT \" or \"# EOF\"",
            ));
        }
        let text = utf8(line, number)?;
        let name_end = metric_name_end(line, 7, number, "metric name")?;
        let name = &text[7..name_end];
        if line.get(name_end) != Some(&b' ') {
            return Err(unexpected(
                line,
                name_end,
                number,
                "a space after the metric name",
            ));
        }
        let rest = &text[name_end + 1..];
        match keyword {
            b"HELP" => Ok(Entry::Help {
                name,
                help: unescape(rest, true),
            }),
            b"TYPE" => {
                let kind = MetricType::from_openmetrics(rest).ok_or_else(|| {
                    err(
                        number,
                        name_end + 1,
                        ParseErrorKind::InvalidType(rest.to_owned()),
                    )
                })?;
                self.family = Some((name, kind));
                Ok(Entry::Type { name, kind })
            }
            _ => {
                let unit = rest;
                let is_suffix = unit.is_empty()
                    || name
                        .strip_suffix(unit)
                        .is_some_and(|prefix| prefix.ends_with('_'));
                if !is_suffix {
                    return Err(err(
                        number,
                        name_end + 1,
                        ParseErrorKind::UnitNotSuffix {
                            metric: name.to_owned(),
                            unit: unit.to_owned(),
                        },
                    ));
                }
                Ok(Entry::Unit { name, unit })
            }
        }
    }

    /// A sample line starting at `start`. `om` selects OpenMetrics rules: single spaces only,
    /// float-second timestamps, exemplars.
    fn sample(
        &mut self,
        text: &'a str,
        start: usize,
        number: usize,
        om: bool,
    ) -> Result<Sample<'a>, ParseError> {
        let b = text.as_bytes();
        let name_end = metric_name_end(b, start, number, "metric name")?;
        // A 0.0.4 sample line's leading whitespace belongs to its name and series, as in
        // Prometheus's parser (its lexer skips the whitespace, its series starts at the line):
        // `   m 1` names the metric "   m", which the scrape then refuses as an invalid name
        // unless metric relabelling renames it.
        let name = &text[..name_end];
        let start = if om { start } else { 0 };
        let mut i = if om { name_end } else { skip_ws(b, name_end) };
        let (labels, series_end) = if b.get(i) == Some(&b'{') {
            let (labels, end) = self.label_set(text, i + 1, number, om, true)?;
            i = end;
            (labels, end)
        } else {
            if i == name_end && i < b.len() && !om {
                return Err(unexpected(
                    b,
                    i,
                    number,
                    "whitespace or '{' after metric name",
                ));
            }
            (Labels::default(), name_end)
        };
        let series = &b[start..series_end];
        let (value, timestamp, exemplar) = self.sample_tail(text, i, number, om)?;
        Ok(Sample {
            series,
            name,
            labels,
            value,
            timestamp,
            exemplar,
            family: self.family,
        })
    }

    /// The rest of a sample line after its series (at `i`): value, timestamp, exemplar.
    fn sample_tail(
        &mut self,
        text: &'a str,
        mut i: usize,
        number: usize,
        om: bool,
    ) -> Result<Tail<'a>, ParseError> {
        let b = text.as_bytes();
        // Value.
        if om {
            if b.get(i) != Some(&b' ') {
                return Err(unexpected(b, i, number, "a space before the value"));
            }
            i += 1;
        } else {
            i = skip_ws(b, i);
        }
        let value_end = token_end(b, i, !om);
        if value_end == i {
            return Err(unexpected(b, i, number, "value"));
        }
        let value = float(text, i, value_end, number)?;
        i = value_end;

        let mut timestamp = None;
        let mut exemplar = None;
        if om {
            if i < b.len() {
                if b.get(i) != Some(&b' ') {
                    return Err(unexpected(b, i, number, "a space after the value"));
                }
                i += 1;
                if !b[i..].starts_with(b"# ") {
                    let ts_end = token_end(b, i, false);
                    timestamp = Some(seconds_to_millis(text, i, ts_end, number)?);
                    i = ts_end;
                    if i < b.len() {
                        if !b[i..].starts_with(b" # ") {
                            return Err(unexpected(b, i, number, "end of line or exemplar"));
                        }
                        i += 1;
                    }
                }
                if i < b.len() {
                    exemplar = Some(self.exemplar(text, i + 2, number)?);
                }
            }
        } else {
            i = skip_ws(b, i);
            if i < b.len() {
                let digits_end = i + b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
                if digits_end == i {
                    return Err(unexpected(b, i, number, "timestamp or end of line"));
                }
                timestamp = Some(integer_millis(text, i, digits_end, number)?);
                i = skip_ws(b, digits_end);
                if i < b.len() {
                    return Err(unexpected(b, i, number, "end of line after timestamp"));
                }
            }
        }

        Ok((value, timestamp, exemplar))
    }

    /// An OpenMetrics exemplar starting at `i` (the `{`), to the end of the line.
    fn exemplar(
        &mut self,
        text: &'a str,
        i: usize,
        number: usize,
    ) -> Result<Exemplar<'a>, ParseError> {
        let b = text.as_bytes();
        if b.get(i) != Some(&b'{') {
            return Err(unexpected(b, i, number, "'{' opening the exemplar labels"));
        }
        let (labels, mut i) = self.label_set(text, i + 1, number, true, false)?;
        if b.get(i) != Some(&b' ') {
            return Err(unexpected(
                b,
                i,
                number,
                "a space before the exemplar value",
            ));
        }
        i += 1;
        let value_end = token_end(b, i, false);
        if value_end == i {
            return Err(unexpected(b, i, number, "exemplar value"));
        }
        let value = float(text, i, value_end, number)?;
        i = value_end;
        let mut timestamp = None;
        if i < b.len() {
            if b[i] != b' ' {
                return Err(unexpected(
                    b,
                    i,
                    number,
                    "a space before the exemplar timestamp",
                ));
            }
            i += 1;
            let ts_end = token_end(b, i, false);
            timestamp = Some(seconds_to_millis(text, i, ts_end, number)?);
            if ts_end < b.len() {
                return Err(unexpected(b, ts_end, number, "end of line after exemplar"));
            }
        }
        Ok(Exemplar {
            labels,
            value,
            timestamp,
        })
    }

    /// The label pairs starting right after `{`; returns the set and the index after `}`.
    fn label_set(
        &mut self,
        text: &'a str,
        open: usize,
        number: usize,
        om: bool,
        has_metric_name: bool,
    ) -> Result<(Labels<'a>, usize), ParseError> {
        let b = text.as_bytes();
        let mut i = open;
        let mut escaped = false;
        self.names.clear();
        loop {
            if !om {
                i = skip_ws(b, i);
            }
            if b.get(i) == Some(&b'}') {
                break;
            }
            if !is(LABEL_START, b.get(i)) {
                return Err(unexpected(b, i, number, "label name"));
            }
            let name_start = i;
            i += 1;
            while is(LABEL_CHAR, b.get(i)) {
                i += 1;
            }
            let name = &text[name_start..i];
            if !om {
                i = skip_ws(b, i);
            }
            if b.get(i) != Some(&b'=') {
                return Err(unexpected(b, i, number, "'=' after label name"));
            }
            i += 1;
            if !om {
                i = skip_ws(b, i);
            }
            if b.get(i) != Some(&b'"') {
                return Err(unexpected(b, i, number, "'\"' opening the label value"));
            }
            i += 1;
            loop {
                let rest = b.get(i..).unwrap_or_default();
                match memchr::memchr2(b'"', b'\\', rest) {
                    None => {
                        return Err(err(number, b.len(), ParseErrorKind::UnterminatedLabelValue))
                    }
                    Some(k) if rest[k] == b'"' => {
                        i += k + 1;
                        break;
                    }
                    Some(k) => {
                        escaped = true;
                        i += k + 2;
                        if i > b.len() {
                            return Err(err(
                                number,
                                b.len(),
                                ParseErrorKind::UnterminatedLabelValue,
                            ));
                        }
                    }
                }
            }
            // An exemplar may repeat a name (Prometheus stores it, the last value shows).
            let duplicate = has_metric_name
                && (name == "__name__"
                    || (self.names.len() < LINEAR_DUP_CHECK_MAX
                        && self.names.contains(&name)
                        && !self.tolerated.iter().any(|t| **t == *name)));
            if duplicate {
                return Err(err(
                    number,
                    name_start,
                    ParseErrorKind::DuplicateLabel(name.to_owned()),
                ));
            }
            self.names.push(name);
            if !om {
                i = skip_ws(b, i);
            }
            match b.get(i) {
                // OpenMetrics's grammar has no trailing comma (`{a="b",}`); Prometheus's
                // OpenMetrics parser fails the scrape on it.
                Some(b',') if om && b.get(i + 1) == Some(&b'}') => {
                    return Err(unexpected(b, i + 1, number, "label name"))
                }
                Some(b',') => i += 1,
                Some(b'}') => {}
                // Prometheus's 0.0.4 parser tolerates a missing comma between labels.
                Some(_) if !om && is(LABEL_START, b.get(i)) => {}
                _ => return Err(unexpected(b, i, number, "',' or '}' after label value")),
            }
        }
        if has_metric_name && self.names.len() > LINEAR_DUP_CHECK_MAX {
            self.names.sort_unstable();
            let tolerated = |n: &str| self.tolerated.iter().any(|t| **t == *n);
            if let Some(pair) = self
                .names
                .windows(2)
                .find(|w| w[0] == w[1] && !tolerated(w[0]))
            {
                return Err(err(
                    number,
                    open,
                    ParseErrorKind::DuplicateLabel(pair[0].to_owned()),
                ));
            }
        }
        let len = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        Ok((Labels::new(&text[open..i], len, escaped), i + 1))
    }
}

impl<'a> Iterator for Parser<'a> {
    type Item = Result<Entry<'a>, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_entry().transpose()
    }
}

/// Whether a 0.0.4 sample line's series ends after its first `n` bytes when they are a series
/// text the parser returned before: a text with a label set ends at its `}` whatever follows,
/// a bare name only where the name cannot go on (`m` is not the series of `m_total 1`) and no
/// label set follows after whitespace (nor of `m {a="1"} 1`).
fn series_ends_at(line: &[u8], n: usize) -> bool {
    match n.checked_sub(1).and_then(|last| line.get(last)) {
        None => false,
        Some(b'}') => true,
        Some(_) => {
            matches!(line.get(n), None | Some(b' ' | b'\t'))
                && line.get(skip_ws(line, n)) != Some(&b'{')
        }
    }
}

fn err(line: usize, column0: usize, kind: ParseErrorKind) -> ParseError {
    ParseError {
        line,
        column: column0 + 1,
        kind,
    }
}

fn unexpected(line: &[u8], pos: usize, number: usize, expected: &'static str) -> ParseError {
    err(
        number,
        pos,
        ParseErrorKind::Unexpected {
            expected,
            got: excerpt(line, pos),
        },
    )
}

fn utf8(line: &[u8], number: usize) -> Result<&str, ParseError> {
    std::str::from_utf8(line).map_err(|e| err(number, e.valid_up_to(), ParseErrorKind::InvalidUtf8))
}

/// End of the metric name starting at `start`.
fn metric_name_end(
    b: &[u8],
    start: usize,
    number: usize,
    expected: &'static str,
) -> Result<usize, ParseError> {
    if !is(NAME_START, b.get(start)) {
        return Err(unexpected(b, start, number, expected));
    }
    let mut i = start + 1;
    while is(NAME_CHAR, b.get(i)) {
        i += 1;
    }
    Ok(i)
}

fn float(text: &str, start: usize, end: usize, number: usize) -> Result<f64, ParseError> {
    let token = &text[start..end];
    parse_go_float(token).map_err(|reason| {
        err(
            number,
            start,
            ParseErrorKind::InvalidValue {
                text: token.to_owned(),
                reason,
            },
        )
    })
}

/// A 0.0.4 timestamp: `[0-9]+` milliseconds that fit an i64.
fn integer_millis(text: &str, start: usize, end: usize, number: usize) -> Result<i64, ParseError> {
    let token = &text[start..end];
    token.parse::<i64>().map_err(|_| {
        err(
            number,
            start,
            ParseErrorKind::InvalidTimestamp {
                text: token.to_owned(),
                reason: "out of the int64 range",
            },
        )
    })
}

/// An OpenMetrics timestamp: float seconds, truncated toward zero to milliseconds like
/// Prometheus's `int64(ts * 1000)`, but rounded to the microsecond first so that a written
/// `1520879607.789` is 1520879607789 and not, through binary float noise, ...788.
fn seconds_to_millis(
    text: &str,
    start: usize,
    end: usize,
    number: usize,
) -> Result<i64, ParseError> {
    let token = &text[start..end];
    let invalid = |reason| {
        err(
            number,
            start,
            ParseErrorKind::InvalidTimestamp {
                text: token.to_owned(),
                reason,
            },
        )
    };
    if end == start {
        return Err(invalid("empty"));
    }
    let seconds = parse_go_float(token).map_err(invalid)?;
    if !seconds.is_finite() {
        return Err(invalid("not finite"));
    }
    let micros = (seconds * 1e6).round();
    // Exclusive upper bound: 2^63 itself is representable as f64 but not as i64.
    if !(-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&micros) {
        return Err(invalid("out of the int64 millisecond range"));
    }
    Ok(micros as i64 / 1000)
}
