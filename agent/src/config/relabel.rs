//! `relabel_config`, parsed and validated as Prometheus 2.42 does (`model/relabel`), with its
//! defaults (`separator: ;`, `regex: (.*)`, `replacement: $1`, `action: replace`) and its
//! error texts.

use serde::{Deserialize, Deserializer, Serialize};

use super::invalid::Invalid;
use super::regex::PromRegex;
use super::url::is_valid_label_name;
use crate::path;

/// A relabelling action. Names are matched case-insensitively, as Prometheus does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Replace,
    Keep,
    Drop,
    KeepEqual,
    DropEqual,
    HashMod,
    LabelMap,
    LabelDrop,
    LabelKeep,
    Lowercase,
    Uppercase,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Replace => "replace",
            Action::Keep => "keep",
            Action::Drop => "drop",
            Action::KeepEqual => "keepequal",
            Action::DropEqual => "dropequal",
            Action::HashMod => "hashmod",
            Action::LabelMap => "labelmap",
            Action::LabelDrop => "labeldrop",
            Action::LabelKeep => "labelkeep",
            Action::Lowercase => "lowercase",
            Action::Uppercase => "uppercase",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "replace" => Action::Replace,
            "keep" => Action::Keep,
            "drop" => Action::Drop,
            "keepequal" => Action::KeepEqual,
            "dropequal" => Action::DropEqual,
            "hashmod" => Action::HashMod,
            "labelmap" => Action::LabelMap,
            "labeldrop" => Action::LabelDrop,
            "labelkeep" => Action::LabelKeep,
            "lowercase" => Action::Lowercase,
            "uppercase" => Action::Uppercase,
            "" => return Err("relabel action cannot be empty".into()),
            _ => return Err(format!("unknown relabel action {s:?}")),
        })
    }
}

impl Serialize for Action {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Action {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = super::duration::scalar_string(d)?;
        Action::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A relabel rule as written; absent fields take Prometheus's defaults in [`RelabelConfig`].
///
/// A field written as `null` is not absent: as in Prometheus (whose YAML decoder sets a null
/// field to its zero value, over the default), `separator: null` and `replacement: null` are
/// empty, `regex: null` is the empty regex (it matches only the empty string), and
/// `action: null` is an error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelabelConfigRaw {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_labels: Option<Vec<String>>,
    #[serde(
        default,
        deserialize_with = "null_is_empty",
        skip_serializing_if = "Option::is_none"
    )]
    pub separator: Option<String>,
    #[serde(
        default,
        deserialize_with = "null_is_empty_regex",
        skip_serializing_if = "Option::is_none"
    )]
    pub regex: Option<PromRegex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modulus: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_label: Option<String>,
    #[serde(
        default,
        deserialize_with = "null_is_empty",
        skip_serializing_if = "Option::is_none"
    )]
    pub replacement: Option<String>,
    #[serde(
        default,
        deserialize_with = "null_is_no_action",
        skip_serializing_if = "Option::is_none"
    )]
    pub action: Option<Action>,
}

/// Called only for a field that is present: `null` is Go's zero value, not the default.
fn null_is_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Some(Option::<String>::deserialize(d)?.unwrap_or_default()))
}

fn null_is_empty_regex<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PromRegex>, D::Error> {
    match Option::<PromRegex>::deserialize(d)? {
        Some(r) => Ok(Some(r)),
        None => Ok(Some(PromRegex::new("").map_err(serde::de::Error::custom)?)),
    }
}

fn null_is_no_action<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Action>, D::Error> {
    match Option::<Action>::deserialize(d)? {
        Some(a) => Ok(Some(a)),
        None => Err(serde::de::Error::custom("relabel action cannot be empty")),
    }
}

/// A list of entries none of which may be null (`- ` alone), failing with `message` at the
/// first null one, as Prometheus does; a null list is an empty one.
pub(crate) fn non_null_entries<'de, D, T>(d: D, message: &'static str) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct V<T>(&'static str, std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a sequence")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::new();
            while let Some(entry) = seq.next_element::<Option<T>>()? {
                out.push(entry.ok_or_else(|| serde::de::Error::custom(self.0))?);
            }
            Ok(out)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Vec<T>, E> {
            Ok(Vec::new())
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Vec<T>, E> {
            Ok(Vec::new())
        }
    }
    d.deserialize_seq(V(message, std::marker::PhantomData))
}

/// `relabel_configs`, with Prometheus's text for a null rule.
pub(crate) fn target_rules<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<RelabelConfigRaw>, D::Error> {
    non_null_entries(d, "empty or null target relabeling rule in scrape config")
}

/// `metric_relabel_configs`, with Prometheus's text for a null rule.
pub(crate) fn metric_rules<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<RelabelConfigRaw>, D::Error> {
    non_null_entries(d, "empty or null metric relabeling rule in scrape config")
}

/// `write_relabel_configs`, with Prometheus's text for a null rule.
pub(crate) fn write_rules<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<RelabelConfigRaw>, D::Error> {
    non_null_entries(d, "empty or null relabeling rule in remote write config")
}

/// `host_filter_relabel_configs` (a null rule crashed the old agent at run time).
pub(crate) fn host_filter_rules<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<RelabelConfigRaw>, D::Error> {
    non_null_entries(
        d,
        "empty or null relabeling rule in host_filter_relabel_configs",
    )
}

/// A validated relabel rule with every default applied.
#[derive(Debug, Clone, PartialEq)]
pub struct RelabelConfig {
    pub source_labels: Vec<String>,
    pub separator: String,
    pub regex: PromRegex,
    pub modulus: u64,
    pub target_label: String,
    pub replacement: String,
    pub action: Action,
}

pub const DEFAULT_SEPARATOR: &str = ";";
pub const DEFAULT_REGEX: &str = "(.*)";
pub const DEFAULT_REPLACEMENT: &str = "$1";

/// `^(?:(?:[a-zA-Z_]|\$(?:\{\w+\}|\w+))+\w*)+$`: a label name that may hold `$1` / `${name}`.
fn is_valid_relabel_target(s: &str) -> bool {
    thread_local! {
        static RE: regex::Regex =
            regex::Regex::new(r"^(?:(?:[a-zA-Z_]|\$(?:\{(?-u:\w)+\}|(?-u:\w)+))+(?-u:\w)*)+$")
                .expect("static regex");
    }
    RE.with(|re| re.is_match(s))
}

impl RelabelConfigRaw {
    /// Applies defaults and Prometheus's checks (`relabel.Config.Validate`).
    pub fn validate(&self) -> Result<RelabelConfig, String> {
        self.validate_located().map_err(|e| e.message)
    }

    /// [`Self::validate`], with the field each error is about.
    pub fn validate_located(&self) -> Result<RelabelConfig, Invalid> {
        let action = self.action.unwrap_or(Action::Replace);
        let name = action.as_str();
        for (i, l) in self.source_labels.iter().flatten().enumerate() {
            if !is_valid_label_name(l) {
                return Err(Invalid::at(
                    format!("{l:?} is not a valid label name"),
                    path!["source_labels", i],
                ));
            }
        }
        let target = |m: String| Invalid::at(m, path!["target_label"]);
        let cfg = RelabelConfig {
            source_labels: self.source_labels.clone().unwrap_or_default(),
            separator: self
                .separator
                .clone()
                .unwrap_or_else(|| DEFAULT_SEPARATOR.into()),
            regex: match &self.regex {
                Some(r) => r.clone(),
                None => PromRegex::new(DEFAULT_REGEX).expect("default regex"),
            },
            modulus: self.modulus.unwrap_or(0),
            target_label: self.target_label.clone().unwrap_or_default(),
            replacement: self
                .replacement
                .clone()
                .unwrap_or_else(|| DEFAULT_REPLACEMENT.into()),
            action,
        };
        let default_regex = cfg.regex.as_str() == DEFAULT_REGEX;
        let default_replacement = cfg.replacement == DEFAULT_REPLACEMENT;
        let default_separator = cfg.separator == DEFAULT_SEPARATOR;
        if cfg.modulus == 0 && action == Action::HashMod {
            return Err(Invalid::at(
                "relabel configuration for hashmod requires non-zero modulus",
                path!["modulus"],
            ));
        }
        let needs_target = matches!(
            action,
            Action::Replace
                | Action::HashMod
                | Action::Lowercase
                | Action::Uppercase
                | Action::KeepEqual
                | Action::DropEqual
        );
        if needs_target && cfg.target_label.is_empty() {
            return Err(target(format!(
                "relabel configuration for {name} action requires 'target_label' value"
            )));
        }
        let templated_target = matches!(
            action,
            Action::Replace
                | Action::Lowercase
                | Action::Uppercase
                | Action::KeepEqual
                | Action::DropEqual
        );
        if templated_target && !is_valid_relabel_target(&cfg.target_label) {
            return Err(target(format!(
                "{:?} is invalid 'target_label' for {name} action",
                cfg.target_label
            )));
        }
        let plain_target = matches!(
            action,
            Action::Lowercase
                | Action::Uppercase
                | Action::KeepEqual
                | Action::DropEqual
                | Action::HashMod
        );
        if plain_target && !is_valid_label_name(&cfg.target_label) {
            return Err(target(format!(
                "{:?} is invalid 'target_label' for {name} action",
                cfg.target_label
            )));
        }
        if matches!(action, Action::Lowercase | Action::Uppercase) && !default_replacement {
            return Err(Invalid::at(
                format!("'replacement' can not be set for {name} action"),
                path!["replacement"],
            ));
        }
        if action == Action::LabelMap && !is_valid_relabel_target(&cfg.replacement) {
            return Err(Invalid::at(
                format!(
                    "{:?} is invalid 'replacement' for {name} action",
                    cfg.replacement
                ),
                path!["replacement"],
            ));
        }
        if matches!(action, Action::KeepEqual | Action::DropEqual)
            && (!default_regex || cfg.modulus != 0 || !default_separator || !default_replacement)
        {
            return Err(Invalid::new(format!(
                "{name} action requires only 'source_labels' and `target_label`, and no other fields"
            )));
        }
        if matches!(action, Action::LabelDrop | Action::LabelKeep)
            && (self.source_labels.is_some()
                || !cfg.target_label.is_empty()
                || cfg.modulus != 0
                || !default_separator
                || !default_replacement)
        {
            return Err(Invalid::new(format!(
                "{name} action requires only 'regex', and no other fields"
            )));
        }
        Ok(cfg)
    }
}

/// Validates a list, prefixing errors with the rule's index; the error's path starts at
/// `field`.
pub fn validate_all(
    raw: &[RelabelConfigRaw],
    field: &'static str,
) -> Result<Vec<RelabelConfig>, Invalid> {
    raw.iter()
        .enumerate()
        .map(|(i, r)| {
            r.validate_located().map_err(|e| {
                e.prefixed(format_args!("{field}[{i}]"))
                    .within(path![field, i])
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(y: &str) -> Result<RelabelConfig, String> {
        let raw: RelabelConfigRaw = serde_yaml::from_str(y).map_err(|e| e.to_string())?;
        raw.validate()
    }

    #[test]
    fn defaults() {
        let c = parse("target_label: x").unwrap();
        assert_eq!(c.action, Action::Replace);
        assert_eq!(c.separator, ";");
        assert_eq!(c.regex.as_str(), "(.*)");
        assert_eq!(c.replacement, "$1");
    }

    #[test]
    fn prometheus_errors() {
        assert_eq!(
            parse("action: hashmod\ntarget_label: x").unwrap_err(),
            "relabel configuration for hashmod requires non-zero modulus"
        );
        assert_eq!(
            parse("action: replace").unwrap_err(),
            "relabel configuration for replace action requires 'target_label' value"
        );
        assert_eq!(
            parse("action: labeldrop\nregex: a\ntarget_label: b").unwrap_err(),
            "labeldrop action requires only 'regex', and no other fields"
        );
        assert_eq!(
            parse("action: lowercase\ntarget_label: b\nreplacement: x").unwrap_err(),
            "'replacement' can not be set for lowercase action"
        );
        assert_eq!(
            parse("action: keepequal\ntarget_label: b\nregex: x").unwrap_err(),
            "keepequal action requires only 'source_labels' and `target_label`, and no other fields"
        );
        assert!(parse("action: frobnicate")
            .unwrap_err()
            .contains("unknown relabel action \"frobnicate\""));
        assert!(parse("source_labels: ['1bad']\ntarget_label: x")
            .unwrap_err()
            .contains("not a valid label name"));
        assert!(parse("target_label: '1x'")
            .unwrap_err()
            .contains("is invalid 'target_label' for replace action"));
    }

    /// A field written as `null` is Go's zero value, not the default (Prometheus's YAML
    /// decoder sets it so); `action: null` is Prometheus's error.
    #[test]
    fn null_fields_are_zero_values() {
        let c = parse("target_label: x\nseparator: null\nreplacement: null\nregex: null").unwrap();
        assert_eq!(c.separator, "");
        assert_eq!(c.replacement, "");
        assert_eq!(c.regex.as_str(), "");
        assert!(c.regex.is_match("") && !c.regex.is_match("a"));
        assert!(parse("target_label: x\naction: null")
            .unwrap_err()
            .contains("relabel action cannot be empty"));
        assert!(parse("target_label: x\naction: ''")
            .unwrap_err()
            .contains("relabel action cannot be empty"));
        // Absent fields still take the defaults.
        let c = parse("target_label: x").unwrap();
        assert_eq!((c.separator.as_str(), c.replacement.as_str()), (";", "$1"));
    }

    #[test]
    fn errors_name_their_field() {
        let raw: RelabelConfigRaw =
            serde_yaml::from_str("source_labels: [a, '1b']\ntarget_label: x").unwrap();
        let e = raw.validate_located().unwrap_err();
        assert_eq!(e.path, path!["source_labels", 1usize]);
        let raw: RelabelConfigRaw =
            serde_yaml::from_str("action: hashmod\ntarget_label: x").unwrap();
        assert_eq!(raw.validate_located().unwrap_err().path, path!["modulus"]);
        let e = validate_all(&[RelabelConfigRaw::default()], "relabel_configs").unwrap_err();
        assert_eq!(e.path, path!["relabel_configs", 0usize, "target_label"]);
        assert!(e.message.starts_with("relabel_configs[0]: "), "{e}");
    }

    #[test]
    fn templated_targets_and_case_insensitive_actions() {
        assert!(parse("target_label: '${1}_x'\nregex: '(.*)'").is_ok());
        assert_eq!(
            parse("action: LabelMap\nregex: __meta_(.+)")
                .unwrap()
                .action,
            Action::LabelMap
        );
    }
}
