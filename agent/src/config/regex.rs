//! Regular expressions with Prometheus's semantics: RE2 syntax, fully anchored
//! (`^(?:re)$`), and ASCII-only Perl classes (`\d \w \s \b` match ASCII as in Go, where Rust's
//! default is Unicode).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An anchored Prometheus regex; keeps the source text for display and re-marshalling.
#[derive(Clone)]
pub struct PromRegex {
    source: String,
    re: regex::Regex,
}

impl PromRegex {
    pub fn new(source: &str) -> Result<Self, String> {
        let translated = ascii_perl_classes(source);
        let re = regex::Regex::new(&format!("^(?:{translated})$"))
            .map_err(|e| format!("invalid regular expression {source:?}: {}", first_line(&e.to_string())))?;
        Ok(PromRegex { source: source.to_owned(), re })
    }
    pub fn as_str(&self) -> &str {
        &self.source
    }
    pub fn regex(&self) -> &regex::Regex {
        &self.re
    }
    pub fn is_match(&self, s: &str) -> bool {
        self.re.is_match(s)
    }
}

fn first_line(s: &str) -> String {
    // regex's errors are multi-line drawings; the last line holds the reason.
    s.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or(s).trim().to_owned()
}

impl PartialEq for PromRegex {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl fmt::Debug for PromRegex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.source)
    }
}

impl Serialize for PromRegex {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for PromRegex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = super::duration::scalar_string(d)?;
        PromRegex::new(&s).map_err(serde::de::Error::custom)
    }
}

/// Rewrites `\d \D \w \W \s \S \b \B` to their ASCII meaning (Go's RE2). Outside a bracket
/// class they become `(?-u:\d)`; inside one, POSIX ASCII classes (`[:digit:]`) or explicit sets.
fn ascii_perl_classes(src: &str) -> String {
    let mut out = String::with_capacity(src.len() + 16);
    let mut chars = src.chars().peekable();
    let mut in_class = false;
    let mut class_start = false;
    while let Some(c) = chars.next() {
        if c == '\\' {
            let Some(&n) = chars.peek() else {
                out.push(c);
                break;
            };
            chars.next();
            class_start = false;
            match (n, in_class) {
                ('d' | 'D' | 'w' | 'W' | 's' | 'S' | 'b' | 'B', false) => {
                    out.push_str("(?-u:\\");
                    out.push(n);
                    out.push(')');
                }
                ('d', true) => out.push_str("[:digit:]"),
                ('D', true) => out.push_str("[:^digit:]"),
                ('w', true) => out.push_str("[:word:]"),
                ('W', true) => out.push_str("[:^word:]"),
                ('s', true) => out.push_str("\\t\\n\\x0C\\r "),
                ('S', true) => out.push_str("[:^space:]"),
                _ => {
                    out.push('\\');
                    out.push(n);
                }
            }
            continue;
        }
        if in_class {
            // `]` right after `[` or `[^` is a literal; `[:alpha:]` is a nested POSIX class.
            if c == ']' && !class_start {
                in_class = false;
            } else if c == '[' && chars.peek() == Some(&':') {
                out.push(c);
                for p in chars.by_ref() {
                    out.push(p);
                    if p == ']' {
                        break;
                    }
                }
                class_start = false;
                continue;
            }
            class_start = class_start && c == '^';
        } else if c == '[' {
            in_class = true;
            class_start = true;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchored() {
        let r = PromRegex::new("foo|bar").unwrap();
        assert!(r.is_match("foo"));
        assert!(r.is_match("bar"));
        assert!(!r.is_match("foobar"));
        assert!(!r.is_match("xfoo"));
        assert!(PromRegex::new("(.*)").unwrap().is_match(""));
    }

    #[test]
    fn perl_classes_are_ascii() {
        let d = PromRegex::new(r"\d+").unwrap();
        assert!(d.is_match("123"));
        assert!(!d.is_match("١٢٣"), "Arabic-Indic digits are not \\d in RE2");
        let w = PromRegex::new(r"\w+").unwrap();
        assert!(!w.is_match("é"));
        let cls = PromRegex::new(r"[\d.]+").unwrap();
        assert!(cls.is_match("10.0.0.1"));
        assert!(!cls.is_match("١"));
        let s = PromRegex::new(r"a\sb").unwrap();
        assert!(s.is_match("a b"));
        assert!(!s.is_match("a\u{a0}b"));
        let neg = PromRegex::new(r"[^\d]+").unwrap();
        assert!(neg.is_match("abc"));
        assert!(!neg.is_match("a1"));
        let lit = PromRegex::new(r"[]a]+").unwrap();
        assert!(lit.is_match("]a"));
        let posix = PromRegex::new(r"[[:alpha:]\d]+").unwrap();
        assert!(posix.is_match("a1"));
        assert!(PromRegex::new(r"\.\*").unwrap().is_match(".*"));
    }

    #[test]
    fn dot_does_not_match_newline() {
        assert!(!PromRegex::new("a.b").unwrap().is_match("a\nb"));
    }

    #[test]
    fn invalid_is_an_error_with_the_source() {
        let e = PromRegex::new("(unclosed").unwrap_err();
        assert!(e.starts_with("invalid regular expression \"(unclosed\""), "{e}");
    }
}
