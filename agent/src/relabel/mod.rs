//! The relabelling engine, behaving as Prometheus 2.42's `model/relabel.Process`, on
//! [`crate::labels`]'s label sets.
//!
//! Rules are applied in order to a [`LabelsBuilder`]; each rule reads the state left by the
//! previous one. For every action, `value` below is the values of `source_labels` (a missing
//! label reads as the empty string) joined with `separator`:
//!
//! | action | effect |
//! |---|---|
//! | `replace` | if `regex` matches `value`: `target = expand(target_label)`; if `target` is not a valid label name, delete the label literally named `target_label`; else `res = expand(replacement)`; empty `res` deletes the label literally named `target_label`, otherwise `target` is set to `res`. No match: nothing. |
//! | `keep` / `drop` | drop the series unless / if `regex` matches `value` |
//! | `keepequal` / `dropequal` | drop unless / if the current value of `target_label` equals `value` |
//! | `hashmod` | `target_label` = `u64::from_be_bytes(md5(value)[8..16]) % modulus`, in decimal |
//! | `labelmap` | for each label (a snapshot taken before the rule) whose *name* matches `regex`, set `expand(replacement)` on the name to the label's value |
//! | `labeldrop` / `labelkeep` | delete every label whose name matches / does not match `regex` |
//! | `lowercase` / `uppercase` | `target_label` = `value` case-mapped rune by rune like Go's `strings.ToLower`/`ToUpper` |
//!
//! Setting an empty value deletes a label. `expand` is Go's `Regexp.Expand`: `$$` is a literal
//! `$`; `$name` takes the longest run of letters, digits and `_` as the name (so `$1x` names the
//! group `1x`, which does not exist, and expands to nothing); `${name}` delimits it; a name made
//! only of digits without a leading zero is a group number; an unknown group or one that did
//! not participate expands to nothing; a `$` not followed by a valid name is kept literally.
//!
//! The "literally named `target_label`" deletions are 2.42's behaviour (later versions delete the
//! expanded name instead); with a templated `target_label` they delete nothing, because such a
//! name can never be present.

use std::fmt::Write as _;

use md5::Digest;

use crate::config::regex::PromRegex;
use crate::config::relabel::{Action, RelabelConfig, DEFAULT_REGEX};
use crate::config::url::is_valid_label_name;
use crate::labels::{Labels, LabelsBuilder};

/// Applies `rules` in order to `lb`. Returns `false` when a rule dropped the series (the
/// builder's contents are then unspecified).
pub fn process(lb: &mut LabelsBuilder, rules: &[RelabelConfig]) -> bool {
    rules.iter().all(|rule| apply(lb, rule))
}

/// Relabels `labels`; `None` when dropped. Convenience over [`process`].
pub fn process_labels(labels: &Labels, rules: &[RelabelConfig]) -> Option<Labels> {
    if rules.is_empty() {
        return Some(labels.clone());
    }
    let mut lb = labels.builder();
    process(&mut lb, rules).then(|| lb.labels())
}

fn apply(lb: &mut LabelsBuilder, rule: &RelabelConfig) -> bool {
    // The scratch strings live in the builder so they keep their capacity across calls.
    let [mut val, mut s1, mut s2] = std::mem::take(&mut lb.scratch);
    val.clear();
    for (i, name) in rule.source_labels.iter().enumerate() {
        if i > 0 {
            val.push_str(&rule.separator);
        }
        val.push_str(lb.get(name).unwrap_or(""));
    }
    let keep = apply_with(lb, rule, &val, &mut s1, &mut s2);
    lb.scratch = [val, s1, s2];
    keep
}

fn apply_with(
    lb: &mut LabelsBuilder,
    rule: &RelabelConfig,
    val: &str,
    s1: &mut String,
    s2: &mut String,
) -> bool {
    let re = &rule.regex;
    match rule.action {
        Action::Drop => return !re.is_match(val),
        Action::Keep => return re.is_match(val),
        Action::DropEqual => return lb.get(&rule.target_label).unwrap_or("") != val,
        Action::KeepEqual => return lb.get(&rule.target_label).unwrap_or("") == val,
        Action::Replace => replace(lb, rule, val, s1, s2),
        Action::Lowercase => {
            s1.clear();
            go_to_lower(val, s1);
            lb.set(&rule.target_label, s1);
        }
        Action::Uppercase => {
            s1.clear();
            go_to_upper(val, s1);
            lb.set(&rule.target_label, s1);
        }
        Action::HashMod => {
            // A zero modulus is rejected by config validation; Go would panic, we skip.
            if rule.modulus != 0 {
                s1.clear();
                // Writing into a String cannot fail.
                let _ = write!(s1, "{}", hashmod(val, rule.modulus));
                lb.set(&rule.target_label, s1);
            }
        }
        Action::LabelMap => {
            // Iterate a snapshot: labels set by this rule are not matched again, and a label
            // overwritten earlier in the loop still contributes its original value (Prometheus
            // ranges over the label set as it was before the rule).
            let mut snap = std::mem::take(&mut lb.snapshot);
            snap.clear();
            snap.extend_from_slice(lb.entries());
            for e in &snap {
                let name = lb.text(e.name);
                if !re.is_match(name) {
                    continue;
                }
                let Some(caps) = re.regex().captures(name) else {
                    continue;
                };
                s1.clear();
                expand(s1, &rule.replacement, &CapturesGroups(&caps));
                lb.set_from_arena(s1, e.value);
            }
            lb.snapshot = snap;
        }
        Action::LabelDrop => lb.retain_names(|name| !re.is_match(name)),
        Action::LabelKeep => lb.retain_names(|name| re.is_match(name)),
    }
    true
}

fn replace(
    lb: &mut LabelsBuilder,
    rule: &RelabelConfig,
    val: &str,
    s1: &mut String,
    s2: &mut String,
) {
    let re: &PromRegex = &rule.regex;
    // The default `(.*)` matches any value without a newline with group 1 = the whole value;
    // skip the regex engine for it (the common `source_labels: [x]; target_label: y` rule).
    if re.as_str() == DEFAULT_REGEX {
        if val.contains('\n') {
            return;
        }
        replace_expanded(lb, rule, &WholeMatch(val), s1, s2);
        return;
    }
    // `is_match` does not allocate; only a matching rule pays for the capture slots.
    if !re.is_match(val) {
        return;
    }
    if let Some(caps) = re.regex().captures(val) {
        replace_expanded(lb, rule, &CapturesGroups(&caps), s1, s2);
    }
}

fn replace_expanded(
    lb: &mut LabelsBuilder,
    rule: &RelabelConfig,
    groups: &dyn Groups,
    s1: &mut String,
    s2: &mut String,
) {
    let target: &str = if rule.target_label.contains('$') {
        s1.clear();
        expand(s1, &rule.target_label, groups);
        s1
    } else {
        &rule.target_label
    };
    if !is_valid_label_name(target) {
        lb.del(&rule.target_label);
        return;
    }
    s2.clear();
    expand(s2, &rule.replacement, groups);
    if s2.is_empty() {
        lb.del(&rule.target_label);
        return;
    }
    lb.set(target, s2);
}

/// `hashmod`: the last 8 bytes of the MD5 digest of `value`, read big-endian, modulo
/// `modulus` (Prometheus's `sum64(md5.Sum(value)) % modulus`, whose shifts discard the first
/// 8 bytes). `modulus` must be non-zero.
pub fn hashmod(value: &str, modulus: u64) -> u64 {
    let digest = md5::Md5::digest(value.as_bytes());
    let mut last = [0u8; 8];
    last.copy_from_slice(&digest[8..16]);
    u64::from_be_bytes(last) % modulus
}

/// Access to a match's groups for [`expand`].
trait Groups {
    fn by_index(&self, i: usize) -> Option<&str>;
    fn by_name(&self, name: &str) -> Option<&str>;
}

struct CapturesGroups<'a, 'h>(&'a regex::Captures<'h>);

impl Groups for CapturesGroups<'_, '_> {
    fn by_index(&self, i: usize) -> Option<&str> {
        self.0.get(i).map(|m| m.as_str())
    }
    fn by_name(&self, name: &str) -> Option<&str> {
        self.0.name(name).map(|m| m.as_str())
    }
}

/// The match of the default regex `^(?:(.*))$`: groups 0 and 1 are the whole value.
struct WholeMatch<'a>(&'a str);

impl Groups for WholeMatch<'_> {
    fn by_index(&self, i: usize) -> Option<&str> {
        (i <= 1).then_some(self.0)
    }
    fn by_name(&self, _: &str) -> Option<&str> {
        None
    }
}

/// Go's `Regexp.ExpandString` (see the module docs for the rules).
fn expand(dst: &mut String, template: &str, groups: &dyn Groups) {
    let mut rest = template;
    while let Some(pos) = rest.find('$') {
        dst.push_str(&rest[..pos]);
        rest = &rest[pos + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            dst.push('$');
            rest = after;
            continue;
        }
        match extract(rest) {
            Some((name, num, after)) => {
                rest = after;
                let group = match num {
                    Some(n) => groups.by_index(n),
                    None => groups.by_name(name),
                };
                if let Some(g) = group {
                    dst.push_str(g);
                }
            }
            // Malformed: the `$` is literal text and scanning continues after it.
            None => dst.push('$'),
        }
    }
    dst.push_str(rest);
}

/// Go's `regexp.extract`: the name after a `$` (`name` or `{name}`), its group number when it
/// is all digits without a leading zero and below 10^8, and the rest of the template.
fn extract(s: &str) -> Option<(&str, Option<usize>, &str)> {
    let (brace, body) = match s.strip_prefix('{') {
        Some(b) => (true, b),
        None => (false, s),
    };
    // Go accepts Unicode letters and decimal digits here; `is_alphanumeric` is the nearest
    // std predicate (it also admits other numerics, which only matter for non-ASCII names).
    let end = body
        .char_indices()
        .find(|&(_, c)| !(c.is_alphanumeric() || c == '_'))
        .map_or(body.len(), |(i, _)| i);
    if end == 0 {
        return None;
    }
    let name = &body[..end];
    let rest = if brace {
        body[end..].strip_prefix('}')?
    } else {
        &body[end..]
    };
    let mut num: Option<usize> = Some(0);
    for b in name.bytes() {
        num = match num {
            Some(n) if b.is_ascii_digit() && n < 100_000_000 => {
                Some(n * 10 + usize::from(b - b'0'))
            }
            _ => None,
        };
    }
    if name.len() > 1 && name.starts_with('0') {
        num = None;
    }
    Some((name, num, rest))
}

/// Go's `strings.ToLower`: each rune through `unicode.ToLower` (simple case mapping, no
/// context). Rust's full mapping differs only for U+0130, whose simple lowercase is `i`.
fn go_to_lower(s: &str, out: &mut String) {
    if s.is_ascii() {
        out.extend(s.bytes().map(|b| char::from(b.to_ascii_lowercase())));
        return;
    }
    for c in s.chars() {
        let mut m = c.to_lowercase();
        match (m.next(), m.next()) {
            (Some(l), None) => out.push(l),
            _ if c == '\u{130}' => out.push('i'),
            _ => out.push(c),
        }
    }
}

/// Go's `strings.ToUpper`: each rune through `unicode.ToUpper` (simple case mapping). Where
/// Rust's full mapping yields several characters, the simple mapping is the rune itself
/// (`ß`, ligatures, ...), except for the Greek letters with ypogegrammeni, whose simple
/// uppercase is the matching prosgegrammeni letter.
fn go_to_upper(s: &str, out: &mut String) {
    if s.is_ascii() {
        out.extend(s.bytes().map(|b| char::from(b.to_ascii_uppercase())));
        return;
    }
    for c in s.chars() {
        let mut m = c.to_uppercase();
        match (m.next(), m.next()) {
            (Some(u), None) => out.push(u),
            _ => out.push(simple_upper_of_multi(c)),
        }
    }
}

fn simple_upper_of_multi(c: char) -> char {
    let cp = c as u32;
    let mapped = match cp {
        0x1F80..=0x1F87 | 0x1F90..=0x1F97 | 0x1FA0..=0x1FA7 => cp + 8,
        0x1FB3 => 0x1FBC,
        0x1FC3 => 0x1FCC,
        0x1FF3 => 0x1FFC,
        _ => cp,
    };
    char::from_u32(mapped).unwrap_or(c)
}

#[cfg(test)]
mod tests;
