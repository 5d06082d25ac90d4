//! Scrape targets from discovered label sets, as Prometheus 2.42's `scrape.PopulateLabels`
//! and `Target.URL` build them, and the merge of target labels into scraped series
//! (`mutateSampleLabels`).
//!
//! Population, in order:
//! 1. Discovered labels = the target group's labels overlaid with the target's own labels.
//!    `job`, `__scrape_interval__`, `__scrape_timeout__`, `__metrics_path__` and `__scheme__`
//!    are added from the scrape config when absent; every `params` entry with a value sets
//!    `__param_<name>` to its first value (unconditionally, as 2.42 does). This set is the
//!    target's "discovered labels".
//! 2. `relabel_configs` run; a dropped target yields `None`.
//! 3. `__address__` must be non-empty (`no address`). Unless `no_default_port`, an address
//!    without a port that becomes valid with one (Go's `net.SplitHostPort`) gets `:80` for
//!    scheme `http` or empty, `:443` for `https`, and any other `__scheme__` is an error
//!    naming the *config's* scheme (`invalid scheme: "http"`), as in 2.42. With
//!    `no_default_port`, an explicit `:80` (http) or `:443` (https) is stripped from
//!    `__address__` while `instance` still defaults to the address with the port (2.42).
//! 4. An address containing `/` is rejected (`"<addr>" is not a valid hostname`).
//! 5. `__scrape_interval__` and `__scrape_timeout__` are parsed as Prometheus durations; zero,
//!    unparsable, or timeout > interval are errors with Prometheus's texts.
//! 6. `__meta_*` labels are removed; `instance` defaults to the address.
//! 7. The names of the labels that reach series (all but `__`-prefixed ones) are checked
//!    (`"<name>" is not a valid label name`). Prometheus 2.42 does not check them here and
//!    instead fails every scrape of such a target at append time; we reject the target up
//!    front with the offending name.
//!
//! The series labels of a target ([`Target::labels`]) are the result without any `__`-prefixed
//! label. The scrape URL is `<__scheme__>://<__address__><__metrics_path__>?<query>`, written
//! as Go's `url.URL.String()` does: the query holds the config's `params` with each
//! `__param_<name>` label replacing (or providing) the first value of `<name>`, keys sorted,
//! both sides escaped as `url.QueryEscape` (space as `+`, everything but `A-Za-z0-9-_.~` as
//! `%XX`); the path is escaped as a Go URL path, the host as a Go URL host.

use std::collections::BTreeMap;

use thiserror::Error;

use crate::config::duration::PromDuration;
use crate::config::scrape::ScrapeConfig;
use crate::config::url::is_valid_label_name;
use crate::labels::{go_quote, Labels, LabelsBuilder};
use crate::relabel;

pub const ADDRESS_LABEL: &str = "__address__";
pub const SCHEME_LABEL: &str = "__scheme__";
pub const METRICS_PATH_LABEL: &str = "__metrics_path__";
pub const SCRAPE_INTERVAL_LABEL: &str = "__scrape_interval__";
pub const SCRAPE_TIMEOUT_LABEL: &str = "__scrape_timeout__";
pub const PARAM_LABEL_PREFIX: &str = "__param_";
pub const META_LABEL_PREFIX: &str = "__meta_";
pub const RESERVED_LABEL_PREFIX: &str = "__";
pub const JOB_LABEL: &str = "job";
pub const INSTANCE_LABEL: &str = "instance";
pub const EXPORTED_LABEL_PREFIX: &str = "exported_";

/// Why a discovered target was rejected; the texts are Prometheus's.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TargetError {
    #[error("no address")]
    NoAddress,
    #[error("invalid scheme: {}", go_quote(.0))]
    InvalidScheme(String),
    #[error("{} is not a valid hostname", go_quote(.0))]
    InvalidHostname(String),
    #[error("error parsing scrape interval: {0}")]
    ParseInterval(String),
    #[error("scrape interval cannot be 0")]
    ZeroInterval,
    #[error("error parsing scrape timeout: {0}")]
    ParseTimeout(String),
    #[error("scrape timeout cannot be 0")]
    ZeroTimeout,
    #[error(
        "scrape timeout cannot be greater than scrape interval ({} > {})",
        go_quote(timeout),
        go_quote(interval)
    )]
    TimeoutGreaterThanInterval { timeout: String, interval: String },
    #[error("{} is not a valid label name", go_quote(.0))]
    InvalidLabelName(String),
}

/// A target ready to scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Labels added to every series of this target: the relabelled set without `__` labels.
    pub labels: Labels,
    /// The relabelled set including the reserved `__` labels (but no `__meta_*`); Prometheus
    /// identifies a target by these and its URL.
    pub full_labels: Labels,
    /// The labels before relabelling, for the targets API.
    pub discovered_labels: Labels,
    /// The scrape URL, formatted as Go's `url.URL.String()`.
    pub url: String,
    pub interval: PromDuration,
    pub timeout: PromDuration,
}

impl Target {
    /// The hash that places this target's scrapes within its interval: Prometheus's
    /// `Target.hash()`, computed the same way on every agent and every version, so a target
    /// keeps its scrape phase when its loop restarts or its config moves to another agent:
    ///
    /// ```text
    /// labels_hash = xxHash64(seed 0, name₁ 0xff value₁ 0xff name₂ 0xff value₂ 0xff ...)
    ///               over `full_labels` in name order (Prometheus's `labels.Hash()`)
    /// hash        = FNV-1a 64 over the bytes of format!("{labels_hash:016}") then `url`
    /// ```
    pub fn scrape_hash(&self) -> u64 {
        let mut xx = twox_hash::XxHash64::with_seed(0);
        for (name, value) in &self.full_labels {
            std::hash::Hasher::write(&mut xx, name.as_bytes());
            std::hash::Hasher::write(&mut xx, &[0xff]);
            std::hash::Hasher::write(&mut xx, value.as_bytes());
            std::hash::Hasher::write(&mut xx, &[0xff]);
        }
        let labels_hash = std::hash::Hasher::finish(&xx);
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in format!("{labels_hash:016}")
            .as_bytes()
            .iter()
            .chain(self.url.as_bytes())
        {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    }
}

/// A discovered target's own labels over its group's.
pub(crate) fn group_and_target(group: &Labels, target: &Labels) -> LabelsBuilder {
    let mut lb = group.builder();
    for (n, v) in target {
        lb.set(n, v);
    }
    lb
}

/// The discovered labels of a target (step 1): `group` overlaid with `target`, plus the
/// scrape config's defaults and params.
fn discovered_builder(group: &Labels, target: &Labels, cfg: &ScrapeConfig) -> LabelsBuilder {
    let mut lb = group_and_target(group, target);
    let interval = cfg.scrape_interval.to_string();
    let timeout = cfg.scrape_timeout.to_string();
    for (name, value) in [
        (JOB_LABEL, cfg.job_name.as_str()),
        (SCRAPE_INTERVAL_LABEL, interval.as_str()),
        (SCRAPE_TIMEOUT_LABEL, timeout.as_str()),
        (METRICS_PATH_LABEL, cfg.metrics_path.as_str()),
        (SCHEME_LABEL, cfg.scheme.as_str()),
    ] {
        if lb.get(name).is_none() {
            lb.set(name, value);
        }
    }
    let mut name = String::new();
    for (k, values) in &cfg.params {
        if let Some(first) = values.first() {
            name.clear();
            name.push_str(PARAM_LABEL_PREFIX);
            name.push_str(k);
            lb.set(&name, first);
        }
    }
    lb
}

/// Builds the target for one discovered label set (see the module docs). `Ok(None)` when
/// relabelling dropped it; [`discovered_labels`] then gives what the targets API shows.
/// `no_default_port` is Prometheus's `no-default-scrape-port` feature flag (off by default,
/// and off in the old agent).
pub fn populate_labels(
    group: &Labels,
    target: &Labels,
    cfg: &ScrapeConfig,
    no_default_port: bool,
) -> Result<Option<Target>, TargetError> {
    let mut lb = discovered_builder(group, target, cfg);
    let discovered = lb.labels();
    if !relabel::process(&mut lb, &cfg.relabel_configs) {
        return Ok(None);
    }
    finish(lb, discovered, cfg, no_default_port).map(Some)
}

/// The target whose full labels (relabelled, `__meta_*` removed: [`Target::full_labels`]) are
/// `full`, without discovering or relabelling again: what an agent that scrapes a target
/// another agent discovered builds (target sharding). Steps 3-7 of the module docs leave such
/// a set unchanged, so the result equals the discovering agent's target, except that its
/// discovered labels are the full labels (the `__meta_*` labels stay with the discoverer).
pub fn from_full_labels(full: &Labels, cfg: &ScrapeConfig) -> Result<Target, TargetError> {
    finish(full.builder(), full.clone(), cfg, false)
}

/// Steps 3-7 of the module docs, on relabelled labels.
fn finish(
    mut lb: LabelsBuilder,
    discovered: Labels,
    cfg: &ScrapeConfig,
    no_default_port: bool,
) -> Result<Target, TargetError> {
    let mut addr = lb.get(ADDRESS_LABEL).unwrap_or("").to_owned();
    if addr.is_empty() {
        return Err(TargetError::NoAddress);
    }
    let scheme = lb.get(SCHEME_LABEL).unwrap_or("").to_owned();
    match split_host_port(&addr) {
        Some((host, port)) => {
            if no_default_port
                && ((port == "80" && scheme == "http") || (port == "443" && scheme == "https"))
            {
                // 2.42 strips the label but keeps `addr` (and so `instance`) with the port.
                lb.set(ADDRESS_LABEL, host);
            }
        }
        None => {
            let with_port = format!("{addr}:1234");
            if !no_default_port && split_host_port(&with_port).is_some() {
                match scheme.as_str() {
                    "http" | "" => addr.push_str(":80"),
                    "https" => addr.push_str(":443"),
                    _ => return Err(TargetError::InvalidScheme(cfg.scheme.clone())),
                }
                lb.set(ADDRESS_LABEL, &addr);
            }
        }
    }
    if addr.contains('/') {
        return Err(TargetError::InvalidHostname(addr));
    }

    let interval_s = lb.get(SCRAPE_INTERVAL_LABEL).unwrap_or("").to_owned();
    let interval = PromDuration::parse(&interval_s).map_err(TargetError::ParseInterval)?;
    if interval.is_zero() {
        return Err(TargetError::ZeroInterval);
    }
    let timeout_s = lb.get(SCRAPE_TIMEOUT_LABEL).unwrap_or("").to_owned();
    let timeout = PromDuration::parse(&timeout_s).map_err(TargetError::ParseTimeout)?;
    if timeout.is_zero() {
        return Err(TargetError::ZeroTimeout);
    }
    if timeout > interval {
        return Err(TargetError::TimeoutGreaterThanInterval {
            timeout: timeout_s,
            interval: interval_s,
        });
    }

    lb.retain_names(|n| !n.starts_with(META_LABEL_PREFIX));
    if lb.get(INSTANCE_LABEL).is_none() {
        lb.set(INSTANCE_LABEL, &addr);
    }

    let full = lb.labels();
    let url = scrape_url(&full, &cfg.params);
    lb.retain_names(|n| !n.starts_with(RESERVED_LABEL_PREFIX));
    // Reserved labels never reach a series (`__param_match[]` is fine), so only the rest is
    // checked.
    if let Some((bad, _)) = lb.iter().find(|(n, _)| !is_valid_label_name(n)) {
        return Err(TargetError::InvalidLabelName(bad.to_owned()));
    }
    Ok(Target {
        labels: lb.labels(),
        full_labels: full,
        discovered_labels: discovered,
        url,
        interval,
        timeout,
    })
}

/// Go's `net.SplitHostPort`, returning `None` where Go returns an error.
pub(crate) fn split_host_port(hostport: &str) -> Option<(&str, &str)> {
    let i = hostport.rfind(':')?;
    let (host, j, k) = if hostport.starts_with('[') {
        let end = hostport.find(']')?;
        // The ']' must be immediately followed by the last ':'.
        if end + 1 != i {
            return None;
        }
        (&hostport[1..end], 1, end + 1)
    } else {
        let host = &hostport[..i];
        if host.contains(':') {
            return None;
        }
        (host, 0, 0)
    };
    if hostport[j..].contains('[') || hostport[k..].contains(']') {
        return None;
    }
    Some((host, &hostport[i + 1..]))
}

/// `Target.URL().String()` for these labels and the config's params.
pub(crate) fn scrape_url(labels: &Labels, params: &BTreeMap<String, Vec<String>>) -> String {
    let mut query: BTreeMap<&str, Vec<&str>> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.iter().map(String::as_str).collect()))
        .collect();
    for (n, v) in labels {
        if let Some(k) = n.strip_prefix(PARAM_LABEL_PREFIX) {
            let values = query.entry(k).or_default();
            match values.first_mut() {
                Some(first) => *first = v,
                None => values.push(v),
            }
        }
    }
    let mut raw_query = String::new();
    for (k, values) in &query {
        for v in values {
            if !raw_query.is_empty() {
                raw_query.push('&');
            }
            go_escape(&mut raw_query, k, Escape::QueryComponent);
            raw_query.push('=');
            go_escape(&mut raw_query, v, Escape::QueryComponent);
        }
    }
    go_url_string(
        labels.get(SCHEME_LABEL).unwrap_or(""),
        labels.get(ADDRESS_LABEL).unwrap_or(""),
        labels.get(METRICS_PATH_LABEL).unwrap_or(""),
        &raw_query,
    )
}

/// Go's `url.URL{Scheme, Host, Path, RawQuery}.String()`.
fn go_url_string(scheme: &str, host: &str, path: &str, raw_query: &str) -> String {
    let mut out =
        String::with_capacity(scheme.len() + host.len() + path.len() + raw_query.len() + 8);
    if !scheme.is_empty() {
        out.push_str(scheme);
        out.push(':');
    }
    if (!scheme.is_empty() || !host.is_empty()) && (!host.is_empty() || !path.is_empty()) {
        out.push_str("//");
    }
    go_escape(&mut out, host, Escape::Host);
    let mut escaped_path = String::with_capacity(path.len());
    if path == "*" {
        escaped_path.push('*');
    } else {
        go_escape(&mut escaped_path, path, Escape::Path);
    }
    if !escaped_path.is_empty() && !escaped_path.starts_with('/') && !host.is_empty() {
        out.push('/');
    }
    if out.is_empty() {
        // A relative path whose first segment has a colon would read as a scheme.
        let first_segment = escaped_path.split('/').next().unwrap_or("");
        if first_segment.contains(':') {
            out.push_str("./");
        }
    }
    out.push_str(&escaped_path);
    if !raw_query.is_empty() {
        out.push('?');
        out.push_str(raw_query);
    }
    out
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Escape {
    Host,
    Path,
    QueryComponent,
}

/// Go's `net/url.shouldEscape` for the three modes used here.
fn should_escape(c: u8, mode: Escape) -> bool {
    if c.is_ascii_alphanumeric() {
        return false;
    }
    if mode == Escape::Host
        && matches!(
            c,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'['
                | b']'
                | b'<'
                | b'>'
                | b'"'
        )
    {
        return false;
    }
    match c {
        b'-' | b'_' | b'.' | b'~' => false,
        b'$' | b'&' | b'+' | b',' | b'/' | b':' | b';' | b'=' | b'?' | b'@' => match mode {
            Escape::Path => c == b'?',
            Escape::QueryComponent | Escape::Host => true,
        },
        _ => true,
    }
}

/// Go's `net/url.escape`: `%XX` with uppercase hex, and `+` for a space in a query component.
fn go_escape(out: &mut String, s: &str, mode: Escape) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        if b == b' ' && mode == Escape::QueryComponent {
            out.push('+');
        } else if should_escape(b, mode) {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        } else {
            out.push(char::from(b));
        }
    }
}

/// The labels of a scraped series after adding the target's labels, as Prometheus's
/// `mutateSampleLabels` before `metric_relabel_configs`. `scraped` is the series as exposed
/// (including `__name__`; empty values allowed); `target` is [`Target::labels`].
///
/// * `honor_labels: true`: scraped labels win; a target label is added only when the scraped
///   series has no label of that name at all (an exposed `job=""` suppresses `job`).
/// * `honor_labels: false`: target labels win. Each scraped label with a non-empty value that
///   clashes with a target label is kept as `exported_<name>`, prefixing `exported_` again
///   until the name is used by no scraped label, no target label and no clash renamed before
///   it; clashes are renamed shortest name first (stable in name order).
///
/// Empty values are removed. With repeated scraped names the first non-empty occurrence is used.
pub fn merge_target_labels(
    scraped: &[(&str, &str)],
    target: &Labels,
    honor_labels: bool,
) -> Labels {
    let mut lb = LabelsBuilder::new();
    merge_target_labels_into(&mut lb, scraped, target, honor_labels);
    lb.labels()
}

/// [`merge_target_labels`] into a reusable builder, so that `metric_relabel_configs` can run
/// on it ([`relabel::process`]) before the final [`LabelsBuilder::labels`].
pub fn merge_target_labels_into(
    lb: &mut LabelsBuilder,
    scraped: &[(&str, &str)],
    target: &Labels,
    honor_labels: bool,
) {
    lb.clear();
    for &(n, v) in scraped {
        if lb.get(n).is_none() {
            lb.set(n, v);
        }
    }
    let has = |name: &str| scraped.iter().any(|(n, _)| *n == name);
    let get = |name: &str| {
        scraped
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("", |(_, v)| *v)
    };
    if honor_labels {
        for (n, v) in target {
            if !has(n) {
                lb.set(n, v);
            }
        }
        return;
    }
    let mut clashes: Vec<(String, &str)> = Vec::new();
    for (n, v) in target {
        let exposed = get(n);
        if !exposed.is_empty() {
            clashes.push((n.to_owned(), exposed));
        }
        lb.set(n, v);
    }
    if clashes.is_empty() {
        return;
    }
    clashes.sort_by_key(|(n, _)| n.len());
    for i in 0..clashes.len() {
        let mut name = clashes[i].0.clone();
        loop {
            name.insert_str(0, EXPORTED_LABEL_PREFIX);
            let taken = has(&name)
                || target.contains(&name)
                || clashes[..i].iter().any(|(n, _)| *n == name);
            if !taken {
                break;
            }
        }
        clashes[i].0 = name;
    }
    for (n, v) in &clashes {
        lb.set(n, v);
    }
}

#[cfg(test)]
mod tests;
