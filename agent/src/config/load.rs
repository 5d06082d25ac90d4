//! Reading config text: strict YAML with errors that name the file, line, column and key;
//! `${VAR}` expansion; telling an agent config from an instance config.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::agent::{AgentConfig, AgentConfigRaw};
use super::instance::{GlobalConfig, InstanceConfig, InstanceConfigRaw};
use super::invalid::Invalid;

/// A config error: where (file, line, column when known) and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: Option<PathBuf>,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl ConfigError {
    pub fn new(message: impl Into<String>) -> Self {
        ConfigError {
            file: None,
            line: None,
            column: None,
            message: message.into(),
        }
    }

    pub fn in_file(mut self, file: &Path) -> Self {
        self.file = Some(file.to_path_buf());
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}:", file.display())?;
        }
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{l}:{c}: ")?,
            (Some(l), None) => write!(f, "{l}: ")?,
            _ if self.file.is_some() => f.write_str(" ")?,
            _ => {}
        }
        f.write_str(&self.message)
    }
}

/// Which kind of config a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Agent,
    Instance,
}

const AGENT_KEYS: [&str; 9] = [
    "server",
    "metrics",
    "prometheus",
    "integrations",
    "logs",
    "loki",
    "traces",
    "tempo",
    "agent_management",
];
const INSTANCE_KEYS: [&str; 10] = [
    "name",
    "host_filter",
    "host_filter_relabel_configs",
    "scrape_configs",
    "remote_write",
    "wal_truncate_frequency",
    "min_wal_time",
    "max_wal_time",
    "remote_flush_deadline",
    "write_stale_on_shutdown",
];

/// Tells the kind from the top-level keys.
pub fn detect_kind(text: &str) -> Result<Kind, ConfigError> {
    if is_blank_yaml(text) {
        return Err(ConfigError::new(
            "the file is empty: expected an agent or instance config",
        ));
    }
    check_yaml_limits(text)?;
    let value: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| refine_location(yaml_error(&e), text))?;
    let Some(map) = value.as_mapping() else {
        return Err(ConfigError::new(
            "expected a mapping of keys (an agent or instance config) at the top level",
        ));
    };
    let keys: Vec<&str> = map.keys().filter_map(|k| k.as_str()).collect();
    if keys.iter().any(|k| AGENT_KEYS.contains(k)) {
        Ok(Kind::Agent)
    } else if keys.iter().any(|k| INSTANCE_KEYS.contains(k)) {
        Ok(Kind::Instance)
    } else {
        Err(ConfigError::new(format!(
            "cannot tell an agent config from an instance config: none of the top-level keys ({}) is known; use --kind",
            keys.join(", ")
        )))
    }
}

/// Strictly parses YAML into `T` (unknown and duplicate keys are errors).
pub fn parse_strict<T: DeserializeOwned>(text: &str, what: &str) -> Result<T, ConfigError> {
    if is_blank_yaml(text) {
        return Err(ConfigError::new(format!(
            "the file is empty: expected {what}"
        )));
    }
    check_yaml_limits(text)?;
    serde_yaml::from_str(text).map_err(|e| refine_location(yaml_error(&e), text))
}

/// Deepest flow nesting (`[` `{`) accepted. serde_yaml refuses nesting over 128 anyway, but
/// only after its parser has read the whole document, and that parser spends time proportional
/// to depth x length on flow collections: 100,000 `{a: ` took 44 s of CPU. Checked before.
pub const MAX_FLOW_DEPTH: usize = 256;

/// Smallest budget for what a document expands to through aliases (see [`check_yaml_limits`]).
pub const MIN_EXPANSION_BUDGET: usize = 16 << 20;

/// Refuses YAML that would cost far more to parse than its size suggests, before it is parsed:
///
/// * flow nesting deeper than [`MAX_FLOW_DEPTH`] (time: see there);
/// * alias expansion ("billion laughs"): serde_yaml replays an anchor's events at every alias
///   and only bounds the number of jumps, so a 400 KB anchor referenced 2,000 times became
///   3 GiB and 160 s. The document is walked once through the deserializer without building
///   anything, counting one unit per node plus the bytes of every scalar, and refused once that
///   passes `max(16 MiB, 2 x its length)` (without aliases a document never gets near that).
pub fn check_yaml_limits(text: &str) -> Result<(), ConfigError> {
    let depth = max_flow_depth(text);
    if depth > MAX_FLOW_DEPTH {
        return Err(ConfigError::new(format!(
            "YAML flow collections ([ ] or {{ }}) are nested deeper than {MAX_FLOW_DEPTH} levels"
        )));
    }
    // An alias (`*a`) needs an anchor (`&a`); without both there is nothing to expand (and a
    // regex's `.*` alone does not cost a second pass).
    if !text.contains('*') || !text.contains('&') {
        return Ok(());
    }
    let budget = MIN_EXPANSION_BUDGET.max(text.len().saturating_mul(2));
    let left = std::cell::Cell::new(budget);
    let de = serde_yaml::Deserializer::from_str(text);
    match serde::de::DeserializeSeed::deserialize(Expansion { left: &left }, de) {
        Err(e) if e.to_string().contains(EXPANSION_MARK) => Err(ConfigError::new(format!(
            "YAML aliases expand the document to more than {budget} bytes; refusing it"
        ))),
        // Other errors are the real parse's to report, with its wording and location.
        _ => Ok(()),
    }
}

const EXPANSION_MARK: &str = "expansion budget exhausted";

/// Walks a document without keeping anything, charging `left` for every node and scalar byte.
#[derive(Clone, Copy)]
struct Expansion<'a> {
    left: &'a std::cell::Cell<usize>,
}

impl Expansion<'_> {
    fn take<E: serde::de::Error>(self, n: usize) -> Result<(), E> {
        let left = self.left.get();
        if n > left {
            return Err(E::custom(EXPANSION_MARK));
        }
        self.left.set(left - n);
        Ok(())
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Expansion<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Expansion<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML")
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        self.take(1)
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        self.take(1)
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        self.take(1)
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        self.take(1)
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.take(1 + v.len())
    }
    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<(), E> {
        self.take(1 + v.len())
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.take(1)
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        self.take(1)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.take(1)?;
        d.deserialize_any(self)
    }
    fn visit_newtype_struct<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.take(1)?;
        d.deserialize_any(self)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.take(1)?;
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.take(1)?;
        while map.next_key_seed(self)?.is_some() {
            map.next_value_seed(self)?;
        }
        Ok(())
    }
    /// A tagged node (`!tag value`).
    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        use serde::de::VariantAccess;
        self.take(1)?;
        let (serde::de::IgnoredAny, variant) = data.variant()?;
        variant.newtype_variant_seed(self)
    }
}

/// The deepest nesting of flow collections in `text`, as a YAML scanner would see it; brackets
/// in quoted scalars and comments do not count. A quote opens a scalar only where a scalar can
/// start (after indentation, `- `, `: `, `? `, `[`, `{`, `,`, a tag or an anchor), so the
/// apostrophe in `it's` is text. To leave no way to hide brackets behind a quote this lexer
/// misreads, the result is also at least the depth counted with every bracket, quoted or not
/// (so more than 256 unclosed brackets inside quotes are refused too: a price for having no
/// blind spot).
fn max_flow_depth(text: &str) -> usize {
    let b = text.as_bytes();
    let (mut depth, mut max, mut raw_depth, mut raw_max) = (0usize, 0usize, 0usize, 0usize);
    for &c in b {
        match c {
            b'[' | b'{' => {
                raw_depth += 1;
                raw_max = raw_max.max(raw_depth);
            }
            b']' | b'}' => raw_depth = raw_depth.saturating_sub(1),
            _ => {}
        }
    }
    // Where a scalar may start: line start, after `- `/`: `/`? `, a flow indicator, or the
    // whitespace after a tag or anchor.
    let mut scalar_start = true;
    // The current token is a tag (`!…`) or anchor (`&…`), whose end is also a scalar start.
    let mut in_property = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\n' | b'\r' => {
                scalar_start = true;
                in_property = false;
            }
            b' ' | b'\t' => {
                if in_property {
                    scalar_start = true;
                    in_property = false;
                }
            }
            b'#' if i == 0 || matches!(b[i - 1], b' ' | b'\t' | b'\n' | b'\r') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'"' | b'\'' if scalar_start => {
                i += 1;
                while i < b.len() {
                    match b[i] {
                        b'\\' if c == b'"' => i += 1,
                        b'\'' if c == b'\'' && b.get(i + 1) == Some(&b'\'') => i += 1,
                        q if q == c => break,
                        _ => {}
                    }
                    i += 1;
                }
                scalar_start = false;
            }
            b'[' | b'{' | b',' => {
                if c != b',' {
                    depth += 1;
                    max = max.max(depth);
                }
                scalar_start = true;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                scalar_start = false;
            }
            b'-' | b':' | b'?' if scalar_start || c == b':' => {
                // An indicator only when followed by whitespace (or, for `:`, in flow style
                // right before a quote: `{"a":"b"}`); otherwise part of a plain scalar.
                let next = b.get(i + 1).copied().unwrap_or(b' ');
                scalar_start = matches!(next, b' ' | b'\t' | b'\n' | b'\r')
                    || (c == b':' && depth > 0 && matches!(next, b'"' | b'\''));
            }
            b'!' | b'&' if scalar_start => in_property = true,
            _ => scalar_start = false,
        }
        i += 1;
    }
    max.max(raw_max)
}

/// serde_yaml places errors raised inside a mapping (a bad value, a duplicate key) at the
/// mapping's start. Move them to the line of the key the message names, searching forward.
fn refine_location(mut e: ConfigError, text: &str) -> ConfigError {
    let Some(line) = e.line else { return e };
    let dup = e
        .message
        .split("duplicate field \"")
        .nth(1)
        .or_else(|| e.message.split("duplicate entry with key \"").nth(1));
    let (key, nth) = if let Some(rest) = dup {
        (rest.split('"').next().unwrap_or(""), 2)
    } else if let Some(value) = e.message.split('"').nth(1).filter(|v| !v.is_empty()) {
        // A bad value quoted in the message: find the line that holds it.
        for (i, l) in text.lines().enumerate().skip(line - 1) {
            if let Some((_, v)) = l.split_once(':') {
                let v = v.trim().trim_matches(|c| c == '"' || c == '\'');
                if v == value {
                    e.line = Some(i + 1);
                    e.column = Some(l.len() - l.trim_start().len() + 1);
                    return e;
                }
            }
        }
        return e;
    } else {
        return e;
    };
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return e;
    }
    let mut seen = 0;
    for (i, l) in text.lines().enumerate().skip(line - 1) {
        let trimmed = l.trim_start().trim_start_matches("- ").trim_start();
        if let Some(after) = trimmed.strip_prefix(key) {
            if after.trim_start().starts_with(':') {
                seen += 1;
                if seen == nth {
                    e.line = Some(i + 1);
                    e.column = Some(l.len() - trimmed.len() + 1);
                    return e;
                }
            }
        }
    }
    e
}

/// Whether `text` holds no YAML content (only blank lines, comments and document markers).
pub fn is_blank_yaml(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with('#') || l == "---" || l == "...")
}

/// Parses and validates an instance config with the given global settings. The name in the
/// text is replaced by `name` when one is given (the URL's or the file stem's name wins, as in
/// the old agent).
pub fn parse_instance_named(
    text: &str,
    name: Option<&str>,
    global: &GlobalConfig,
) -> Result<(InstanceConfigRaw, InstanceConfig), ConfigError> {
    let mut raw: InstanceConfigRaw = parse_strict(
        text,
        "an instance config (scrape_configs, remote_write, ...)",
    )?;
    if let Some(n) = name {
        raw.name = n.to_owned();
    }
    let mut named = raw.clone();
    if named.name.is_empty() {
        named.name = "config".into();
    }
    let cfg = named.validate(global).map_err(|e| located(e, text))?;
    Ok((raw, cfg))
}

/// [`parse_instance_named`] without a name override.
pub fn parse_instance(
    text: &str,
    global: &GlobalConfig,
) -> Result<(InstanceConfigRaw, InstanceConfig), ConfigError> {
    parse_instance_named(text, None, global)
}

/// A validation error with the line and column of the node it is about, or of its nearest
/// ancestor that is written in `text` (a missing field is reported at its mapping).
fn located(e: Invalid, text: &str) -> ConfigError {
    let position = (0..=e.path.len())
        .rev()
        .find_map(|n| super::invalid::locate(text, &e.path[..n]));
    ConfigError {
        line: position.map(|p| p.0),
        column: position.map(|p| p.1),
        ..ConfigError::new(e.message)
    }
}

/// Parses and validates an agent config.
pub fn parse_agent(text: &str) -> Result<(AgentConfigRaw, AgentConfig), ConfigError> {
    let raw: AgentConfigRaw = parse_strict(text, "an agent config (server, metrics, ...)")?;
    let cfg = raw.validate().map_err(|e| located(e, text))?;
    Ok((raw, cfg))
}

/// Reads a file, expanding `${VAR}` when asked.
pub fn read_file(path: &Path, expand_env: bool) -> Result<String, ConfigError> {
    let bytes = std::fs::read(path)
        .map_err(|e| ConfigError::new(format!("cannot read file: {e}")).in_file(path))?;
    let text = decode_text(bytes).map_err(|m| ConfigError::new(m).in_file(path))?;
    if expand_env {
        expand_env_vars(&text, |k| {
            std::env::var_os(k).map(|v| v.to_string_lossy().into_owned())
        })
        .map_err(|e| e.in_file(path))
    } else {
        Ok(text)
    }
}

/// A config file's text: UTF-8 (a leading byte-order mark is dropped), or UTF-16 or UTF-32
/// with a byte-order mark (what Windows Notepad's "Unicode" saves), converted as the old
/// agent's config encoder did. Unlike it, a malformed UTF-16/32 sequence is an error naming
/// its offset rather than a silent U+FFFD.
pub fn decode_text(bytes: Vec<u8>) -> Result<String, String> {
    let (encoding, width, big_endian, bom) = match bytes.as_slice() {
        [0xef, 0xbb, 0xbf, ..] => ("UTF-8", 1, false, 3),
        // UTF-32LE's mark starts like UTF-16LE's, so it is checked first.
        [0xff, 0xfe, 0, 0, ..] => ("UTF-32LE", 4, false, 4),
        [0, 0, 0xfe, 0xff, ..] => ("UTF-32BE", 4, true, 4),
        [0xff, 0xfe, ..] => ("UTF-16LE", 2, false, 2),
        [0xfe, 0xff, ..] => ("UTF-16BE", 2, true, 2),
        _ => ("UTF-8", 1, false, 0),
    };
    let body = &bytes[bom..];
    let bad = |offset: usize, what: &str| {
        format!("{encoding} text (byte-order mark found) with {what} at byte {offset}")
    };
    match width {
        1 => match std::str::from_utf8(body) {
            Ok(t) => Ok(t.to_owned()),
            Err(e) => Err(format!(
                "not UTF-8 text (byte {}), nor UTF-16 or UTF-32 with a byte-order mark",
                bom + e.valid_up_to()
            )),
        },
        2 => {
            if body.len() % 2 != 0 {
                return Err(bad(bytes.len() - 1, "a truncated character"));
            }
            let units = body.chunks_exact(2).map(|c| {
                let pair = [c[0], c[1]];
                if big_endian {
                    u16::from_be_bytes(pair)
                } else {
                    u16::from_le_bytes(pair)
                }
            });
            let mut out = String::with_capacity(body.len() / 2);
            let mut unit = 0;
            for c in char::decode_utf16(units) {
                let c = c.map_err(|_| bad(bom + 2 * unit, "an unpaired surrogate"))?;
                unit += c.len_utf16();
                out.push(c);
            }
            Ok(out)
        }
        _ => {
            if body.len() % 4 != 0 {
                return Err(bad(bytes.len() - body.len() % 4, "a truncated character"));
            }
            body.chunks_exact(4)
                .enumerate()
                .map(|(i, c)| {
                    let unit = [c[0], c[1], c[2], c[3]];
                    let v = if big_endian {
                        u32::from_be_bytes(unit)
                    } else {
                        u32::from_le_bytes(unit)
                    };
                    char::from_u32(v).ok_or_else(|| bad(bom + 4 * i, "an invalid character"))
                })
                .collect()
        }
    }
}

/// Loads and validates an agent config file.
pub fn load_agent_file(path: &Path, expand_env: bool) -> Result<AgentConfig, ConfigError> {
    load_agent_file_shown(path, expand_env).map(|(c, _)| c)
}

/// [`load_agent_file`], and the config as `GET /-/config` shows it: the YAML of what was read
/// (decoded, `-config.expand-env` applied), secrets as `<secret>`.
pub fn load_agent_file_shown(
    path: &Path,
    expand_env: bool,
) -> Result<(AgentConfig, String), ConfigError> {
    load_agent_file_with(path, expand_env, None)
}

/// [`load_agent_file_shown`] with the old agent's `-metrics.wal-directory`: the WAL directory
/// when the file does not set `metrics.wal_directory` (the old agent applied the file over its
/// flags, so the file wins).
pub fn load_agent_file_with(
    path: &Path,
    expand_env: bool,
    wal_directory_flag: Option<&str>,
) -> Result<(AgentConfig, String), ConfigError> {
    let text = read_file(path, expand_env)?;
    let (raw, mut cfg) = parse_agent(&text).map_err(|e| e.in_file(path))?;
    if let Some(dir) = wal_directory_flag.filter(|_| !raw.sets_wal_directory()) {
        cfg.wal_directory = dir.to_owned();
    }
    let shown = serde_yaml::to_string(&raw)
        .map_err(|e| ConfigError::new(format!("cannot render the config: {e}")).in_file(path))?;
    Ok((cfg, shown))
}

/// Expands `${VAR}` references as the old agent's `-config.expand-env` did (see
/// [`super::envsubst`] for the syntax): `$$` is a literal `$`, an unset variable is empty, and
/// a name made only of digits (`${1}`, a regex capture reference) is left as written.
pub fn expand_env_vars(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    super::envsubst::expand(text, lookup).map_err(|e| ConfigError {
        line: Some(e.line),
        ..ConfigError::new(format!(
            "unable to substitute config with environment variables: {e}"
        ))
    })
}

/// Turns a serde_yaml error into a `ConfigError` with line and column, and a message that
/// names the key: `unknown field "scrape_intervl" (did you mean "scrape_interval"?)`.
pub fn yaml_error(e: &serde_yaml::Error) -> ConfigError {
    let loc = e.location();
    let mut msg = e.to_string();
    if let Some(l) = &loc {
        let suffix = format!(" at line {} column {}", l.line(), l.column());
        if let Some(i) = msg.find(&suffix) {
            msg.replace_range(i..i + suffix.len(), "");
        }
    }
    ConfigError {
        file: None,
        line: loc.as_ref().map(|l| l.line()),
        column: loc.as_ref().map(|l| l.column()),
        message: friendly(&msg),
    }
}

fn friendly(msg: &str) -> String {
    if let Some(start) = msg.find("unknown field `") {
        let rest = &msg[start + "unknown field `".len()..];
        if let Some(end) = rest.find('`') {
            let field = &rest[..end];
            let expected: Vec<&str> = rest[end..].split('`').skip(2).step_by(2).collect();
            let mut out = format!("{}unknown field {field:?}", &msg[..start]);
            if let Some(best) = closest(field, &expected) {
                out.push_str(&format!(" (did you mean {best:?}?)"));
            }
            return out;
        }
    }
    let mut out = msg.replace('`', "\"");
    for (from, to) in [
        ("struct InstanceConfigRaw", "an instance config mapping"),
        ("struct AgentConfigRaw", "an agent config mapping"),
        ("struct ScrapeConfigRaw", "a scrape config mapping"),
        ("struct RemoteWriteConfigRaw", "a remote_write mapping"),
        ("struct RelabelConfigRaw", "a relabel config mapping"),
        ("struct StaticConfig", "a static config mapping"),
        ("struct ", "mapping "),
    ] {
        out = out.replace(from, to);
    }
    out
}

/// The candidate within edit distance 3 (and less than the name's length) of `name`.
fn closest<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(name, c), *c))
        .filter(|(d, _)| *d <= 3 && *d < name.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn inst(text: &str) -> Result<InstanceConfig, ConfigError> {
        parse_instance(text, &GlobalConfig::default()).map(|(_, c)| c)
    }

    #[test]
    fn unknown_key_names_line_column_and_suggestion() {
        let e = inst("scrape_configs:\n  - job_name: a\n    scrape_intervl: 1m\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert_eq!(e.column, Some(5), "{e}");
        assert!(
            e.message.contains("unknown field \"scrape_intervl\""),
            "{e}"
        );
        assert!(
            e.message.contains("did you mean \"scrape_interval\""),
            "{e}"
        );
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let e = inst("scrape_configs:\n  - job_name: a\n    job_name: b\n").unwrap_err();
        // serde reports a repeated struct field; the YAML layer a repeated map key.
        assert!(
            e.message.contains("duplicate field \"job_name\"")
                || e.message.contains("duplicate entry with key \"job_name\""),
            "{e}"
        );
        assert_eq!(e.line, Some(3));
    }

    #[test]
    fn fractional_prometheus_duration_rejected_with_location() {
        let e = inst("scrape_configs:\n  - job_name: a\n    scrape_interval: 1.5h\n").unwrap_err();
        assert!(
            e.message.contains("not a valid duration string: \"1.5h\""),
            "{e}"
        );
        assert_eq!(e.line, Some(3));
    }

    #[test]
    fn old_agent_texts() {
        let e = inst(
            "scrape_configs:\n  - job_name: j\n    scrape_interval: 10s\n    scrape_timeout: 20s\n",
        )
        .unwrap_err();
        assert_eq!(
            e.message,
            "scrape timeout greater than scrape interval for scrape config with job name \"j\""
        );
        let e = inst("scrape_configs:\n  - job_name: j\n  - job_name: j\n").unwrap_err();
        assert_eq!(
            e.message,
            "found multiple scrape configs with job name \"j\""
        );
        let e = inst("scrape_configs:\n  -\n").unwrap_err();
        assert_eq!(e.message, "empty or null scrape config section");
        let e = inst("min_wal_time: 5h\nmax_wal_time: 1h\n").unwrap_err();
        assert_eq!(e.message, "min_wal_time must be less than max_wal_time");
        let e = inst("wal_truncate_frequency: 0s\n").unwrap_err();
        assert_eq!(e.message, "wal_truncate_frequency must be greater than 0s");
        let e = inst("remote_write:\n  - url: http://a/\n  - url: http://a/\n").unwrap_err();
        assert_eq!(
            e.message,
            "remote_write[1] (http://a/): found two identical remote_write configs"
        );
        assert_eq!((e.line, e.column), (Some(3), Some(5)));
        let e = inst(
            "remote_write:\n  - url: http://a/\n    name: x\n  - url: http://b/\n    name: x\n",
        )
        .unwrap_err();
        assert_eq!(
            e.message,
            "remote_write[1] (http://b/): found duplicate remote write configs with name \"x\""
        );
        assert_eq!((e.line, e.column), (Some(5), Some(5)));
    }

    /// A discovery's `refresh_interval: 0s` is refused at its line (it panicked the consul
    /// discovery task; the others refreshed without a pause).
    #[test]
    fn a_refresh_interval_of_zero_is_refused_at_its_line() {
        for (kind, entry) in [
            ("file_sd_configs", "files: [a.json]"),
            ("http_sd_configs", "url: http://sd.example/"),
            ("dns_sd_configs", "names: [a.example]"),
            ("consul_sd_configs", "server: consul.example:8500"),
        ] {
            let text = format!(
                "scrape_configs:\n  - job_name: j\n    {kind}:\n      - {entry}\n        refresh_interval: 0s\n"
            );
            let e = inst(&text).unwrap_err();
            assert!(
                e.message.contains(&format!(
                    "{kind}[0]: refresh_interval must be greater than 0s"
                )),
                "{e}"
            );
            assert_eq!((e.line, e.column), (Some(5), Some(9)), "{kind}: {e}");
            let ok = text.replace("0s", "1s");
            inst(&ok).unwrap_or_else(|e| panic!("{kind}: {e}"));
        }
    }

    /// A scrape interval of centuries is compared with `wal_truncate_frequency` without
    /// overflowing (debug builds panicked; release builds wrapped and let it through).
    #[test]
    fn a_scrape_interval_of_centuries_is_greater_than_wal_truncate_frequency() {
        let e = inst("scrape_configs:\n  - job_name: j\n    scrape_interval: 600y\n").unwrap_err();
        assert_eq!(
            e.message,
            "scrape interval greater than wal_truncate_frequency for scrape config with job name \"j\""
        );
        assert_eq!(e.line, Some(3));
    }

    #[test]
    fn min_shards_beyond_the_limit_is_refused_at_its_endpoint() {
        let e = inst("remote_write:\n  - url: http://a/\n    queue_config:\n      min_shards: 100000000000\n      max_shards: 100000000000\n").unwrap_err();
        assert!(
            e.message
                .contains("queue_config: min_shards 100000000000 is more than 10000"),
            "{e}"
        );
        assert_eq!(e.line, Some(2), "{e}");
        inst("remote_write:\n  - url: http://a/\n    queue_config:\n      min_shards: 10000\n      max_shards: 100000000000\n").unwrap();
    }

    #[test]
    fn defaults_follow_global() {
        let c =
            inst("scrape_configs:\n  - job_name: j\n    scrape_interval: 5s\n  - job_name: k\n")
                .unwrap();
        assert_eq!(c.scrape_configs[0].scrape_timeout.to_string(), "5s");
        assert_eq!(c.scrape_configs[1].scrape_interval.to_string(), "1m");
        assert_eq!(c.scrape_configs[1].scrape_timeout.to_string(), "10s");
        assert_eq!(c.scrape_configs[1].metrics_path, "/metrics");
        assert!(c.scrape_configs[1].honor_timestamps);
    }

    #[test]
    fn remote_write_names_generated_and_stable() {
        let a = inst("remote_write:\n  - url: http://a/\n").unwrap();
        let b = inst("remote_write:\n  - url: http://a/\n").unwrap();
        assert!(a.remote_write[0].name.starts_with("config-"));
        assert_eq!(a.remote_write[0].name.len(), "config-".len() + 6);
        assert_eq!(a.remote_write[0].name, b.remote_write[0].name);
    }

    #[test]
    fn tabs_empty_and_wrong_shapes_are_clear_errors() {
        let e = inst("scrape_configs:\n\t- job_name: a\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        let e = inst("").unwrap_err();
        assert!(e.message.contains("the file is empty"), "{e}");
        let e = inst("# just a comment\n").unwrap_err();
        assert!(e.message.contains("the file is empty"), "{e}");
        let e = inst("- a\n- b\n").unwrap_err();
        assert!(
            e.message.contains("expected an instance config mapping"),
            "{e}"
        );
        let e = inst("scrape_configs: {job_name: a}\n").unwrap_err();
        assert!(e.message.contains("scrape_configs"), "{e}");
    }

    #[test]
    fn agent_rejects_local_configs_with_scraping_service() {
        let e = parse_agent(
            "metrics:\n  scraping_service:\n    enabled: true\n  configs:\n    - name: a\n",
        )
        .unwrap_err();
        assert_eq!(
            e.message,
            "cannot use configs when scraping_service mode is enabled"
        );
        let e = parse_agent("metrics:\n  instance_mode: weird\n").unwrap_err();
        assert_eq!(
            e.message,
            "unsupported instance_mode 'weird'. supported values 'shared', 'distinct'"
        );
    }

    #[test]
    fn agent_sharding_mode() {
        use crate::config::agent::Sharding;
        let ok = |y: &str| parse_agent(y).expect("valid").1.scraping_service.sharding;
        assert_eq!(
            ok("metrics:\n  scraping_service:\n    enabled: true\n"),
            Sharding::Configs
        );
        assert_eq!(
            ok("metrics:\n  scraping_service:\n    enabled: true\n    sharding: targets\n"),
            Sharding::Targets
        );
        let e = parse_agent("metrics:\n  scraping_service:\n    sharding: config\n").unwrap_err();
        assert_eq!(
            e.message,
            "scraping_service.sharding: invalid value \"config\" (one of: configs, targets)"
        );
        assert_eq!((e.line, e.column), (Some(3), Some(5)), "{e}");
        let e = parse_agent(
            "metrics:\n  scraping_service:\n    sharding: targets\n    kvstore:\n      prefix: ''\n",
        )
        .unwrap_err();
        assert!(
            e.message
                .contains("inside scraping_service.kvstore.prefix \"\""),
            "{e}"
        );
    }

    #[test]
    fn env_expansion() {
        let lookup = |k: &str| match k {
            "HOST" => Some("h:1".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        assert_eq!(expand_env_vars("a ${HOST} b", lookup).unwrap(), "a h:1 b");
        assert_eq!(expand_env_vars("${NOPE:-dflt}", lookup).unwrap(), "dflt");
        assert_eq!(expand_env_vars("${EMPTY:-dflt}", lookup).unwrap(), "dflt");
        assert_eq!(expand_env_vars("${NOPE}", lookup).unwrap(), "");
        assert_eq!(expand_env_vars("$1 and $$x", lookup).unwrap(), "$1 and $x");
        assert_eq!(
            expand_env_vars("replacement: /api/v1/nodes/${1}/proxy/metrics", lookup).unwrap(),
            "replacement: /api/v1/nodes/${1}/proxy/metrics"
        );
        let e = expand_env_vars("a\n${OPEN", lookup).unwrap_err();
        assert_eq!(e.line, Some(2));
        assert_eq!(
            e.message,
            "unable to substitute config with environment variables: missing closing brace"
        );
    }

    /// `-metrics.wal-directory` places the WAL when the file sets none; the file wins, as in the
    /// old agent (which applied the file over its flags).
    #[test]
    fn the_wal_directory_flag_applies_only_where_the_file_sets_none() {
        let dir = tempfile::tempdir().unwrap();
        let without = dir.path().join("without.yaml");
        std::fs::write(&without, "metrics:\n  global: {}\n").unwrap();
        let with = dir.path().join("with.yaml");
        std::fs::write(&with, "metrics:\n  wal_directory: /from/file\n").unwrap();
        let wal = |path: &Path, flag: Option<&str>| {
            load_agent_file_with(path, false, flag)
                .unwrap()
                .0
                .wal_directory
        };
        assert_eq!(wal(&without, None), "data-agent/");
        assert_eq!(wal(&without, Some("/from/flag")), "/from/flag");
        assert_eq!(wal(&with, Some("/from/flag")), "/from/file");
    }

    #[test]
    fn text_encodings() {
        let text = "a: \u{e9}\u{1f600}\n";
        let mut le16 = vec![0xff, 0xfe];
        let mut be32 = vec![0, 0, 0xfe, 0xff];
        for u in text.encode_utf16() {
            le16.extend(u.to_le_bytes());
        }
        for c in text.chars() {
            be32.extend((c as u32).to_be_bytes());
        }
        assert_eq!(decode_text(le16.clone()).unwrap(), text);
        assert_eq!(decode_text(be32).unwrap(), text);
        assert_eq!(decode_text(b"\xef\xbb\xbfa: 1".to_vec()).unwrap(), "a: 1");
        // An unpaired surrogate after a pair: the offset counts bytes, not characters.
        let mut bad = le16;
        bad.extend([0x00, 0xd8, b'x', 0]);
        let e = decode_text(bad).unwrap_err();
        assert!(e.contains("UTF-16LE") && e.contains("byte 16"), "{e}");
        let e = decode_text(b"a: \xe9".to_vec()).unwrap_err();
        assert!(e.starts_with("not UTF-8 text (byte 3)"), "{e}");
        let e = decode_text(vec![0xff, 0xfe, 0, 0, 1]).unwrap_err();
        assert!(e.contains("UTF-32LE") && e.contains("truncated"), "{e}");
    }

    /// `agent run --config.expand-env` reads through here: `${1}` reaches the relabel rule.
    #[test]
    fn agent_file_expansion_keeps_capture_references() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("agent.yml");
        std::fs::write(
            &f,
            "metrics:\n  configs:\n    - name: a\n      scrape_configs:\n        - job_name: k\n          relabel_configs:\n            - source_labels: [__address__]\n              regex: (.+)\n              target_label: __metrics_path__\n              replacement: /api/v1/nodes/${1}/proxy/metrics\n",
        )
        .unwrap();
        let cfg = load_agent_file(&f, true).unwrap();
        assert_eq!(
            cfg.configs[0].scrape_configs[0].relabel_configs[0].replacement,
            "/api/v1/nodes/${1}/proxy/metrics"
        );
    }

    #[test]
    fn kind_detection() {
        assert_eq!(detect_kind("scrape_configs: []\n").unwrap(), Kind::Instance);
        assert_eq!(
            detect_kind("server:\n  log_level: debug\n").unwrap(),
            Kind::Agent
        );
        assert!(detect_kind("foo: 1\n")
            .unwrap_err()
            .message
            .contains("--kind"));
    }

    #[test]
    fn secrets_redacted_unless_revealed() {
        let (raw, _) = parse_instance(
            "scrape_configs:\n  - job_name: a\n    basic_auth:\n      username: u\n      password: hunter2\n",
            &GlobalConfig::default(),
        )
        .unwrap();
        assert!(!raw.to_yaml(false).unwrap().contains("hunter2"));
        assert!(raw.to_yaml(false).unwrap().contains("<secret>"));
        assert!(raw.to_yaml(true).unwrap().contains("hunter2"));
        assert!(!format!("{raw:?}").contains("hunter2"));
    }

    /// Every field that makes the agent read a file from its own disk is refused unless
    /// `dangerous_allow_reading_files`, and the message names that setting.
    #[test]
    fn file_reading_fields_are_named_in_the_violation() {
        let cases = [
            ("bearer_token_file: /etc/passwd\n", "bearer_token_file"),
            ("basic_auth:\n      username: u\n      password_file: /etc/passwd\n", "password_file"),
            ("authorization:\n      credentials_file: /etc/passwd\n", "credentials_file"),
            ("tls_config:\n      ca_file: /etc/passwd\n", "ca_file"),
            ("tls_config:\n      cert_file: /a\n      key_file: /b\n", "cert_file"),
            ("oauth2:\n      client_id: c\n      client_secret_file: /etc/passwd\n      token_url: http://127.0.0.1:1/t\n", "client_secret_file"),
            ("oauth2:\n      client_id: c\n      client_secret: s\n      token_url: http://127.0.0.1:1/t\n      tls_config:\n        key_file: /k\n        cert_file: /c\n", "cert_file"),
            ("file_sd_configs:\n      - files: ['/etc/*.json']\n", "file_sd_configs"),
            ("kubernetes_sd_configs:\n      - role: pod\n        api_server: https://k8s:6443\n        bearer_token_file: /t\n", "bearer_token_file"),
        ];
        for (fields, name) in cases {
            let text = format!("scrape_configs:\n  - job_name: j\n    {fields}");
            let (raw, _) = parse_instance(&text, &GlobalConfig::default())
                .unwrap_or_else(|e| panic!("{text}: {e}"));
            let v = raw
                .file_reading_violation(&GlobalConfig::default())
                .unwrap_or_else(|| panic!("not refused: {text}"));
            assert!(
                v.contains(&format!(
                    "{name} must be empty unless dangerous_allow_reading_files is set"
                )),
                "{text}: {v}"
            );
        }
        let rw = "remote_write:\n  - url: http://127.0.0.1:1/push\n    tls_config:\n      key_file: /k\n      cert_file: /c\n";
        let (raw, _) = parse_instance(rw, &GlobalConfig::default()).expect("parse");
        let v = raw
            .file_reading_violation(&GlobalConfig::default())
            .expect("refused");
        assert!(v.starts_with("failed to validate remote_write at index 0: cert_file must be empty unless dangerous_allow_reading_files is set"), "{v}");
        let ok = "scrape_configs:\n  - job_name: j\n    static_configs:\n      - targets: [a:1]\n";
        let (raw, _) = parse_instance(ok, &GlobalConfig::default()).expect("parse");
        assert_eq!(raw.file_reading_violation(&GlobalConfig::default()), None);
    }

    #[test]
    fn deep_flow_nesting_is_refused_before_parsing() {
        let t = std::time::Instant::now();
        for body in [
            "[".repeat(100_000),
            "{a: ".repeat(100_000),
            format!(
                "scrape_configs:\n  - job_name: x\n    ec2_sd_configs:\n      - x: {}{}\n",
                "[".repeat(100_000),
                "]".repeat(100_000)
            ),
            // Quotes the lexer must not be fooled by: an apostrophe in a plain scalar, a tag.
            format!("x: it's {}", "[".repeat(300)),
            format!("x: {}", "[!t \"]\" ".repeat(300)),
        ] {
            let e = inst(&body).unwrap_err();
            assert!(e.message.contains("nested deeper than 256"), "{e}");
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            t.elapsed()
        );
        // Brackets in quoted scalars and comments are text.
        let ok = format!(
            "scrape_configs:\n  - job_name: 'a[{}'\n    # {}\n    static_configs: [{{targets: ['a:1']}}]\n",
            "[".repeat(100),
            "{".repeat(100)
        );
        assert!(check_yaml_limits(&ok).is_ok());
        assert!(inst(&ok).is_ok());
        assert_eq!(max_flow_depth("a: [b, {c: \"]]]\", d: '}}'}]\n"), 2);
    }

    #[test]
    fn alias_bombs_are_refused_and_ordinary_anchors_work() {
        let mut laughs = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..10 {
            let p = i - 1;
            laughs.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let big = format!("[{}]", vec!["\"0123456789abcdef\""; 20_000].join(", "));
        let wide = format!("a: &big {big}\nb: [{}]\n", vec!["*big"; 2_000].join(", "));
        let t = std::time::Instant::now();
        // Nested anchors hit serde_yaml's own repetition limit; one wide anchor does not.
        assert!(detect_kind(&laughs).is_err());
        assert!(parse_agent(&laughs).is_err());
        let e = check_yaml_limits(&wide).unwrap_err();
        assert!(
            e.message.contains("YAML aliases expand the document"),
            "{e}"
        );
        assert!(detect_kind(&wide).is_err());
        assert!(parse_agent(&wide).is_err());
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "{:?}",
            t.elapsed()
        );
        // Anchors and merge keys as people use them for shared settings still parse.
        let dry = "scrape_configs:\n  - job_name: a\n    static_configs: &t [{targets: ['a:1']}]\n  - job_name: b\n    static_configs: *t\n";
        assert!(check_yaml_limits(dry).is_ok());
        assert_eq!(inst(dry).unwrap().scrape_configs.len(), 2);
    }

    proptest! {
        #[test]
        fn random_yaml_never_panics(text in "[a-z_:\\- \\n\\t{}\\[\\],'\"0-9.&*!|>#]{0,200}") {
            let _ = inst(&text);
            let _ = parse_agent(&text);
            let _ = detect_kind(&text);
        }

        #[test]
        fn random_structured_yaml_never_panics(
            keys in proptest::collection::vec("(scrape_configs|job_name|static_configs|targets|remote_write|url|relabel_configs|action|regex|scrape_interval|metrics|global|x)", 1..8),
            vals in proptest::collection::vec("(1m|1.5h|\\[\\]|\\{\\}|null|-1|http://a/|'\\(.*'|hashmod|~)", 1..8),
        ) {
            let mut text = String::new();
            for (i, (k, v)) in keys.iter().zip(vals.iter()).enumerate() {
                text.push_str(&" ".repeat(i % 3 * 2));
                text.push_str(&format!("{k}: {v}\n"));
            }
            let _ = inst(&text);
            let _ = parse_agent(&text);
        }
    }
}
