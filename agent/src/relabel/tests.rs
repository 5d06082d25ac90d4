//! Cases re-derived from Prometheus 2.42's documented relabelling behaviour and the scenarios
//! of its `relabel_test.go`, plus the edge cases of Go's `Regexp.Expand`.

use md5::Digest;
use proptest::prelude::*;

use super::*;
use crate::config::relabel::RelabelConfigRaw;

fn l(pairs: &[(&str, &str)]) -> Labels {
    Labels::from_pairs(pairs.iter().copied())
}

/// Rules written as YAML, validated like a config file.
fn rules(yaml: &str) -> Vec<RelabelConfig> {
    let raw: Vec<RelabelConfigRaw> = serde_yaml::from_str(yaml).expect("test yaml");
    raw.iter()
        .map(|r| r.validate().expect("valid rule"))
        .collect()
}

/// A replace rule built directly, bypassing validation (for targets validation rejects).
fn raw_replace(source: &[&str], regex: &str, target: &str, replacement: &str) -> RelabelConfig {
    RelabelConfig {
        source_labels: source.iter().map(|s| s.to_string()).collect(),
        separator: ";".into(),
        regex: PromRegex::new(regex).expect("regex"),
        modulus: 0,
        target_label: target.into(),
        replacement: replacement.into(),
        action: Action::Replace,
    }
}

fn run(input: &Labels, rules: &[RelabelConfig]) -> Option<Labels> {
    process_labels(input, rules)
}

fn md5_mod(v: &str, m: u64) -> u64 {
    let d = md5::Md5::digest(v.as_bytes());
    // Independent of the implementation: fold the low 8 bytes by hand.
    let mut x: u64 = 0;
    for b in &d[8..] {
        x = (x << 8) | u64::from(*b);
    }
    x % m
}

#[test]
fn replace_with_numbered_groups() {
    let input = l(&[("a", "foo"), ("b", "bar"), ("c", "baz")]);
    let r = rules(
        r#"
- source_labels: [a]
  regex: f(.*)
  target_label: d
  replacement: ch${1}-ch${1}
"#,
    );
    assert_eq!(
        run(&input, &r),
        Some(l(&[
            ("a", "foo"),
            ("b", "bar"),
            ("c", "baz"),
            ("d", "choo-choo")
        ]))
    );
}

#[test]
fn rules_see_the_previous_rules_output() {
    let input = l(&[("a", "foo"), ("b", "bar"), ("c", "baz")]);
    let r = rules(
        r#"
- source_labels: [a, b]
  regex: f(.*);(.*)r
  target_label: a
  replacement: b${1}${2}m
- source_labels: [c, a]
  regex: (b).*b(.*)ba(.*)
  target_label: d
  replacement: $1$2$2$3
"#,
    );
    // a becomes "boobam"; the second rule reads "baz;boobam".
    assert_eq!(
        run(&input, &r),
        Some(l(&[
            ("a", "boobam"),
            ("b", "bar"),
            ("c", "baz"),
            ("d", "boooom")
        ]))
    );
}

#[test]
fn drop_stops_processing() {
    let input = l(&[("a", "foo"), ("b", "bar")]);
    let r = rules(
        r#"
- source_labels: [a]
  regex: .*o.*
  action: drop
- source_labels: [a]
  regex: f(.*)
  target_label: d
  replacement: ch$1-ch$1
"#,
    );
    assert_eq!(run(&input, &r), None);
}

#[test]
fn regexes_are_anchored() {
    let input = l(&[("a", "foo")]);
    // "f|o" matches neither the whole of "foo" nor is it searched inside it.
    assert_eq!(
        run(
            &input,
            &rules("- {source_labels: [a], regex: 'f|o', action: drop}")
        ),
        Some(input.clone())
    );
    assert_eq!(
        run(
            &input,
            &rules("- {source_labels: [a], regex: no-match, action: drop}")
        ),
        Some(input.clone())
    );
    assert_eq!(
        run(
            &input,
            &rules("- {source_labels: [a], regex: no-match, action: keep}")
        ),
        None
    );
    assert_eq!(
        run(
            &input,
            &rules("- {source_labels: [a], regex: 'f.*', action: keep}")
        ),
        Some(input.clone())
    );
    // A captured inner group.
    let abc = l(&[("a", "abc")]);
    assert_eq!(
        run(
            &abc,
            &rules("- {source_labels: [a], regex: '.*(b).*', target_label: d}")
        ),
        Some(l(&[("a", "abc"), ("d", "b")]))
    );
}

#[test]
fn no_match_means_no_replacement() {
    let input = l(&[("a", "boo")]);
    let r = rules("- {source_labels: [a], regex: f, target_label: b, replacement: bar}");
    assert_eq!(run(&input, &r), Some(input.clone()));
}

#[test]
fn missing_source_labels_join_as_empty_strings() {
    let input = l(&[("b", "x")]);
    let r =
        rules("- {source_labels: [a, b, c], regex: '(.*)', target_label: j, replacement: '[$1]'}");
    assert_eq!(run(&input, &r), Some(l(&[("b", "x"), ("j", "[;x;]")])));
    // No source labels at all: the value is "" and the default regex matches it, so a static
    // replacement is set.
    let r = rules("- {target_label: env, replacement: prod}");
    assert_eq!(run(&input, &r), Some(l(&[("b", "x"), ("env", "prod")])));
    // ...and the default replacement `$1` of "" deletes the target.
    let input = l(&[("b", "x"), ("t", "old")]);
    let r = rules("- {source_labels: [missing], target_label: t}");
    assert_eq!(run(&input, &r), Some(l(&[("b", "x")])));
}

#[test]
fn separator_is_used_between_values() {
    let input = l(&[("a", "1"), ("b", "2")]);
    let r = rules("- {source_labels: [a, b], separator: '--', target_label: c}");
    assert_eq!(
        run(&input, &r).and_then(|o| o.get("c").map(str::to_owned)),
        Some("1--2".into())
    );
}

#[test]
fn default_regex_does_not_match_newlines() {
    // `.` does not match `\n` in RE2, so `(.*)` fails on a multi-line value.
    let input = l(&[("a", "foo\nbar")]);
    let r = rules("- {source_labels: [a], target_label: b}");
    assert_eq!(run(&input, &r), Some(input.clone()));
}

#[test]
fn templated_target_labels() {
    let input = l(&[("a", "some-name-value")]);
    let valid = rules("- {source_labels: [a], regex: 'some-([^-]+)-([^,]+)', replacement: '${2}', target_label: '${1}'}");
    assert_eq!(
        run(&input, &valid),
        Some(l(&[("a", "some-name-value"), ("name", "value")]))
    );
    // Group 3 does not exist: the replacement is empty, so the (templated, absent) target is
    // deleted, i.e. nothing happens.
    let empty = rules("- {source_labels: [a], regex: 'some-([^-]+)-([^,]+)', replacement: '${3}', target_label: '${1}'}");
    assert_eq!(run(&input, &empty), Some(input.clone()));
    // Targets that expand to invalid names ("", "0", "-") skip the rule.
    let invalid = vec![
        raw_replace(&["a"], "some-([^-]+)-([^,]+)", "${3}", "${1}"),
        raw_replace(&["a"], "some-([^-]+)-([^,]+)", "0${3}", "${1}"),
        raw_replace(&["a"], "some-([^-]+)-([^,]+)", "-${3}", "${1}"),
    ];
    assert_eq!(run(&input, &invalid), Some(input.clone()));
}

#[test]
fn empty_replacement_deletes_the_literal_target_label() {
    // 2.42: an empty expansion deletes `target_label` as written.
    let input = l(&[("a", "x"), ("t", "old")]);
    let r = rules("- {source_labels: [a], regex: '(.*)', target_label: t, replacement: ''}");
    assert_eq!(run(&input, &r), Some(l(&[("a", "x")])));
    // An invalid expanded target also deletes the literal target_label (here present).
    let input = l(&[("a", "1"), ("x$1", "kept?")]);
    let r = vec![raw_replace(&["a"], "(.*)", "x$1", "v")];
    // "x1" is valid, so it is set; nothing is deleted.
    assert_eq!(
        run(&input, &r),
        Some(l(&[("a", "1"), ("x$1", "kept?"), ("x1", "v")]))
    );
    let r = vec![raw_replace(&["a"], "(.*)", "$1", "v")];
    // "1" is invalid: the label literally named "$1" is deleted (absent here: no change).
    assert_eq!(run(&input, &r), Some(input.clone()));
    let with_literal = l(&[("a", "1"), ("$1", "z")]);
    assert_eq!(run(&with_literal, &r), Some(l(&[("a", "1")])));
}

#[test]
fn real_life_tag_parsing() {
    let input = l(&[("__meta_sd_tags", "path:/secret,job:some-job,label:foo=bar")]);
    let r = rules(
        r#"
- source_labels: [__meta_sd_tags]
  regex: '(?:.+,|^)path:(/[^,]+).*'
  replacement: '${1}'
  target_label: __metrics_path__
- source_labels: [__meta_sd_tags]
  regex: '(?:.+,|^)job:([^,]+).*'
  replacement: '${1}'
  target_label: job
- source_labels: [__meta_sd_tags]
  regex: '(?:.+,|^)label:([^=]+)=([^,]+).*'
  replacement: '${2}'
  target_label: '${1}'
"#,
    );
    assert_eq!(
        run(&input, &r),
        Some(l(&[
            ("__meta_sd_tags", "path:/secret,job:some-job,label:foo=bar"),
            ("__metrics_path__", "/secret"),
            ("foo", "bar"),
            ("job", "some-job"),
        ]))
    );
}

#[test]
fn expand_follows_go_regexp_expand() {
    let re = regex::Regex::new(r"^(?:(?P<host>[a-z]+)-(\d+))$").expect("regex");
    let caps = re.captures("web-42").expect("match");
    let g = CapturesGroups(&caps);
    let ex = |t: &str| {
        let mut s = String::new();
        expand(&mut s, t, &g);
        s
    };
    assert_eq!(ex("$1"), "web");
    assert_eq!(ex("${1}"), "web");
    assert_eq!(ex("$2"), "42");
    assert_eq!(ex("${host}:$2"), "web:42");
    assert_eq!(ex("$host"), "web");
    // `$1x` names the group "1x", which does not exist.
    assert_eq!(ex("$1x"), "");
    assert_eq!(ex("${1}x"), "webx");
    // `$$` is a literal dollar; a `$` without a valid name stays literal.
    assert_eq!(ex("$$1"), "$1");
    assert_eq!(ex("a$"), "a$");
    assert_eq!(ex("$-1"), "$-1");
    assert_eq!(ex("${1"), "${1");
    assert_eq!(ex("${}"), "${}");
    // Leading zeros make a name, not a number; out-of-range numbers expand to nothing.
    assert_eq!(ex("$01"), "");
    assert_eq!(ex("$0"), "web-42");
    assert_eq!(ex("$9"), "");
    assert_eq!(ex("$999999999999"), "");
    assert_eq!(ex("${nope}z"), "z");

    // A group that did not participate expands to nothing.
    let re = regex::Regex::new(r"^(?:(a)|(b))$").expect("regex");
    let caps = re.captures("b").expect("match");
    let mut s = String::new();
    expand(&mut s, "[$1|$2]", &CapturesGroups(&caps));
    assert_eq!(s, "[|b]");
}

#[test]
fn named_groups_in_rules() {
    let input = l(&[("__address__", "10.0.0.1:9100")]);
    let r = rules(
        r#"
- source_labels: [__address__]
  regex: '(?P<ip>[^:]+):(?P<port>\d+)'
  target_label: host_port
  replacement: '${ip}/${port}'
"#,
    );
    assert_eq!(
        run(&input, &r).and_then(|o| o.get("host_port").map(str::to_owned)),
        Some("10.0.0.1/9100".into())
    );
}

#[test]
fn hashmod_uses_the_low_eight_md5_bytes() {
    // Prometheus's own test vectors.
    assert_eq!(hashmod("baz", 1000), 976);
    assert_eq!(hashmod("foo\nbar", 1000), 734);
    for (v, m) in [
        ("baz", 1000),
        ("foo\nbar", 1000),
        ("", 7),
        ("10.0.0.1:9100", 3),
        ("x", u64::MAX),
    ] {
        assert_eq!(hashmod(v, m), md5_mod(v, m), "{v:?} % {m}");
    }
    let input = l(&[("a", "foo"), ("b", "bar"), ("c", "baz")]);
    let r = rules("- {source_labels: [c], target_label: d, action: hashmod, modulus: 1000}");
    assert_eq!(
        run(&input, &r).and_then(|o| o.get("d").map(str::to_owned)),
        Some("976".into())
    );
    // Sharding: keep one of 3 shards.
    let shard = md5_mod("10.0.0.1:9100", 3).to_string();
    let r = rules(&format!(
        "- {{source_labels: [__address__], target_label: __tmp_hash, action: hashmod, modulus: 3}}\n- {{source_labels: [__tmp_hash], regex: '{shard}', action: keep}}"
    ));
    assert!(run(&l(&[("__address__", "10.0.0.1:9100")]), &r).is_some());
}

#[test]
fn labelmap() {
    let input = l(&[("a", "foo"), ("b1", "bar"), ("b2", "baz")]);
    let r = rules("- {regex: '(b.*)', replacement: 'bar_${1}', action: labelmap}");
    assert_eq!(
        run(&input, &r),
        Some(l(&[
            ("a", "foo"),
            ("b1", "bar"),
            ("b2", "baz"),
            ("bar_b1", "bar"),
            ("bar_b2", "baz")
        ]))
    );
    let input = l(&[
        ("a", "foo"),
        ("__meta_my_bar", "aaa"),
        ("__meta_my_baz", "bbb"),
        ("__meta_other", "ccc"),
    ]);
    let r = rules("- {regex: '__meta_(my.*)', replacement: '${1}', action: labelmap}");
    assert_eq!(
        run(&input, &r),
        Some(l(&[
            ("__meta_my_bar", "aaa"),
            ("__meta_my_baz", "bbb"),
            ("__meta_other", "ccc"),
            ("a", "foo"),
            ("my_bar", "aaa"),
            ("my_baz", "bbb"),
        ]))
    );
    // The default replacement `$1` with a kubernetes-style prefix.
    let input = l(&[("__meta_kubernetes_pod_label_app", "api")]);
    let r = rules("- {regex: '__meta_kubernetes_pod_label_(.+)', action: labelmap}");
    assert_eq!(
        run(&input, &r).and_then(|o| o.get("app").map(str::to_owned)),
        Some("api".into())
    );
}

#[test]
fn labelmap_iterates_the_labels_as_they_were_before_the_rule() {
    // a -> b first (b = "1"), then the original b ("2") maps onto itself: b ends as "2".
    let input = l(&[("a", "1"), ("b", "2")]);
    let r = rules("- {regex: '(a|b)', replacement: 'b', action: labelmap}");
    assert_eq!(run(&input, &r), Some(l(&[("a", "1"), ("b", "2")])));
    // Labels created by the rule are not mapped again.
    let input = l(&[("x", "1")]);
    let r = rules("- {regex: '(x+)', replacement: '${1}x', action: labelmap}");
    assert_eq!(run(&input, &r), Some(l(&[("x", "1"), ("xx", "1")])));
}

#[test]
fn labelkeep_and_labeldrop() {
    let input = l(&[("a", "foo"), ("b1", "bar"), ("b2", "baz")]);
    assert_eq!(
        run(&input, &rules("- {regex: '(b.*)', action: labelkeep}")),
        Some(l(&[("b1", "bar"), ("b2", "baz")]))
    );
    assert_eq!(
        run(&input, &rules("- {regex: '(b.*)', action: labeldrop}")),
        Some(l(&[("a", "foo")]))
    );
}

#[test]
fn lowercase_and_uppercase() {
    let input = l(&[("foo", "bAr123Foo")]);
    let r = rules(
        r#"
- {source_labels: [foo], action: uppercase, target_label: foo_uppercase}
- {source_labels: [foo], action: lowercase, target_label: foo_lowercase}
"#,
    );
    assert_eq!(
        run(&input, &r),
        Some(l(&[
            ("foo", "bAr123Foo"),
            ("foo_lowercase", "bar123foo"),
            ("foo_uppercase", "BAR123FOO")
        ]))
    );
    // Go maps rune by rune with simple case mappings.
    let mut s = String::new();
    go_to_upper("straße ﬀ ᾳ é", &mut s);
    assert_eq!(s, "STRAßE ﬀ ᾼ É");
    s.clear();
    go_to_lower("İSTANBUL ΟΔΟΣ", &mut s);
    assert_eq!(s, "istanbul οδοσ");
    // An empty result deletes the target.
    let input = l(&[("t", "x")]);
    let r = rules("- {source_labels: [missing], action: lowercase, target_label: t}");
    assert_eq!(run(&input, &r), Some(Labels::empty()));
}

#[test]
fn keepequal_and_dropequal() {
    let input = l(&[
        ("__tmp_port", "1234"),
        ("__port1", "1234"),
        ("__port2", "5678"),
    ]);
    let keep1 = rules("- {source_labels: [__tmp_port], action: keepequal, target_label: __port1}");
    assert_eq!(run(&input, &keep1), Some(input.clone()));
    let drop1 = rules("- {source_labels: [__tmp_port], action: dropequal, target_label: __port1}");
    assert_eq!(run(&input, &drop1), None);
    let drop2 = rules("- {source_labels: [__tmp_port], action: dropequal, target_label: __port2}");
    assert_eq!(run(&input, &drop2), Some(input.clone()));
    let keep2 = rules("- {source_labels: [__tmp_port], action: keepequal, target_label: __port2}");
    assert_eq!(run(&input, &keep2), None);
    // A missing target compares as "".
    let keep_missing = rules("- {source_labels: [nope], action: keepequal, target_label: nada}");
    assert_eq!(run(&input, &keep_missing), Some(input.clone()));
}

#[test]
fn tmp_labels_carry_state_between_rules() {
    let input = l(&[("__address__", "host:9100"), ("env", "Prod")]);
    let r = rules(
        r#"
- {source_labels: [env], action: lowercase, target_label: __tmp_env}
- {source_labels: [__tmp_env], regex: prod, action: keep}
- {source_labels: [__tmp_env, __address__], separator: '/', target_label: id}
"#,
    );
    let out = run(&input, &r).expect("kept");
    assert_eq!(out.get("id"), Some("prod/host:9100"));
    assert_eq!(out.get("__tmp_env"), Some("prod"));
}

#[test]
fn a_reused_builder_gives_the_same_result() {
    let r = rules(
        r#"
- {source_labels: [a], regex: '(.)(.*)', target_label: b, replacement: '$2$1'}
- {regex: 'b', replacement: 'c', action: labelmap}
"#,
    );
    let mut lb = LabelsBuilder::new();
    for v in ["xyz", "hello", "q"] {
        let input = l(&[("a", v)]);
        lb.reset(&input);
        assert!(process(&mut lb, &r));
        assert_eq!(lb.labels(), run(&input, &r).expect("kept"));
    }
}

fn arb_rule() -> impl Strategy<Value = RelabelConfig> {
    let names = prop::sample::select(vec!["a", "b", "c", "__x", "job", "1bad", "a$1"]);
    let regexes = prop::sample::select(vec![
        "(.*)",
        "a(.*)",
        "(?P<n>.)(.*)",
        "",
        "x|y",
        ".+",
        "(b)?c",
    ]);
    let templates = prop::sample::select(vec![
        "$1", "${1}", "$n", "${n}x", "$$", "$", "${", "$2$1", "", "lit", "$01",
    ]);
    let actions = prop::sample::select(vec![
        Action::Replace,
        Action::Keep,
        Action::Drop,
        Action::KeepEqual,
        Action::DropEqual,
        Action::HashMod,
        Action::LabelMap,
        Action::LabelDrop,
        Action::LabelKeep,
        Action::Lowercase,
        Action::Uppercase,
    ]);
    (
        prop::collection::vec(names.clone(), 0..3),
        regexes,
        names,
        templates,
        actions,
        0u64..5,
    )
        .prop_map(|(src, re, target, repl, action, modulus)| RelabelConfig {
            source_labels: src.into_iter().map(str::to_owned).collect(),
            separator: ";".into(),
            regex: PromRegex::new(re).expect("listed regexes compile"),
            modulus,
            target_label: target.to_owned(),
            replacement: repl.to_owned(),
            action,
        })
}

proptest! {
    #[test]
    fn process_never_panics_and_keeps_the_invariants(
        pairs in prop::collection::vec(("[a-c_x]{1,3}", "[a-cxyé\n]{0,4}"), 0..6),
        rs in prop::collection::vec(arb_rule(), 0..6),
    ) {
        let input = Labels::from_pairs(pairs);
        if let Some(out) = process_labels(&input, &rs) {
            let names: Vec<&str> = out.iter().map(|(n, _)| n).collect();
            let mut sorted = names.clone();
            sorted.sort_unstable();
            sorted.dedup();
            prop_assert_eq!(names, sorted);
            prop_assert!(out.iter().all(|(_, v)| !v.is_empty()));
            prop_assert_eq!(Labels::from_pairs(out.iter()), out);
        }
    }
}

proptest! {
    #[test]
    fn expand_never_panics(template in "[$0-9a-z{}_é]{0,12}", hay in "[a-z0-9]{0,6}") {
        let re = regex::Regex::new(r"^(?:(?P<n>[a-z]*)(\d*))$").expect("regex");
        if let Some(caps) = re.captures(&hay) {
            let mut s = String::new();
            expand(&mut s, &template, &CapturesGroups(&caps));
            // Without a `$` the template is copied as is.
            if !template.contains('$') {
                prop_assert_eq!(s, template);
            }
        }
    }
}
