//! What people read about the ring: the `/debug/ring` page (HTML and JSON) and the
//! `agentctl ring status` terminal table. Pure functions of a `Desc` and a fixed `now`, so the
//! HTTP handler and the CLI share them and tests can snapshot them.
//!
//! Health shown here is the old ring page's: a member is `UNHEALTHY` when its last heartbeat
//! is older than `heartbeat_timeout` (dskit's `Reporting` operation accepts every state). An
//! agent's page passes its [`HeartbeatGrace`] during and just after a KV store outage: members
//! are then judged as the agent judges them when it decides who owns what, and the page says
//! so; the heartbeat shown is still the store's.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::lifecycler::HeartbeatGrace;
use super::lookup::{heartbeat_age_nanos, Operation, Ring};
use super::model::{Desc, InstanceDesc, InstanceState};
use crate::clock::{parse_rfc3339, rfc3339, unix_nanos, Fraction};
use crate::config::duration::GoDuration;

/// Target sharding's figures (`scraping_service.sharding: targets`), computed by the cluster
/// from the sharding keys and shown next to the ring: who scrapes how many targets and series,
/// and how balanced that is.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetsSummary {
    /// The assignment epoch.
    pub epoch: u64,
    /// The member that wrote it.
    pub leader: String,
    /// The most targets a member may hold.
    pub cap: usize,
    /// Targets discovered and published.
    pub targets: usize,
    /// Published targets the assignment gives to nobody.
    pub unassigned: usize,
    /// Busiest member's targets over the average, over the members holding targets in the
    /// assignment (1.0 when there are none).
    pub balance: f64,
    /// By member ID.
    pub members: BTreeMap<String, MemberTargets>,
}

/// One member's share under target sharding.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MemberTargets {
    /// Targets assigned to it.
    pub targets: usize,
    /// Active series in its WAL storage, as it last published.
    pub active_series: u64,
}

impl TargetsSummary {
    /// One line for the page and the terminal.
    pub fn headline(&self) -> String {
        format!(
            "target sharding: epoch {} (leader {}), {} targets, {} unassigned, cap {} per member, balance max/mean {:.3}",
            self.epoch,
            if self.leader.is_empty() { "none yet" } else { &self.leader },
            self.targets,
            self.unassigned,
            self.cap,
            self.balance
        )
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC) for unix seconds; never overflows, whatever the KV holds.
pub fn rfc3339_seconds(secs: i64) -> String {
    rfc3339(i128::from(secs) * 1_000_000_000, Fraction::None)
}

/// A heartbeat age such as `3s ago`, `2m5s ago`, `1h4m ago`, `3d2h ago`; `in 5s` for a
/// timestamp ahead of `now` (clock skew); `never` for timestamp 0.
pub fn heartbeat_age(timestamp: i64, now: SystemTime) -> String {
    if timestamp == 0 {
        return "never".to_owned();
    }
    let age = heartbeat_age_nanos(timestamp, now);
    let secs = (age.abs() / 1_000_000_000).min(u64::MAX as i128) as u64;
    let span = if secs < 60 {
        format!("{secs}s")
    } else if secs < 3600 {
        format!("{}m{}s", secs / 60, secs % 60)
    } else if secs < 86_400 {
        format!("{}h{}m", secs / 3600, (secs % 3600) / 60)
    } else {
        format!("{}d{}h", secs / 86_400, (secs % 86_400) / 3600)
    };
    if age < 0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

fn go_duration(d: Duration) -> GoDuration {
    GoDuration::from_millis(d.as_millis().min(u128::from(u64::MAX / 1_000_000)) as u64)
}

/// State as the ring page shows it: the protobuf name, or `UNHEALTHY` for a stale heartbeat.
fn page_state(inst: &InstanceDesc, heartbeat_timeout: Duration, now: SystemTime) -> String {
    if inst.is_healthy(Operation::Reporting, heartbeat_timeout, now) {
        inst.state_name()
    } else {
        "UNHEALTHY".to_owned()
    }
}

/// `desc` as an agent with `grace` judges it (heartbeats older than the grace raised to it).
fn judged(desc: &Desc, grace: Option<HeartbeatGrace>) -> Desc {
    let mut d = desc.clone();
    if let Some(g) = grace {
        g.apply(&mut d);
    }
    d
}

/// The heartbeat in the store of `inst` (a member of the judged copy of `desc`).
fn stored_timestamp(desc: &Desc, inst: &InstanceDesc) -> i64 {
    desc.ingesters
        .get(&inst.id)
        .map_or(inst.timestamp, |m| m.timestamp)
}

/// Whether a member is healthy only because of the grace: stale by its stored heartbeat.
fn only_by_grace(
    grace: Option<HeartbeatGrace>,
    stored: i64,
    heartbeat_timeout: Duration,
    now: SystemTime,
) -> bool {
    grace.is_some_and(|g| g.covers(stored))
        && !heartbeat_timeout.is_zero()
        && heartbeat_age_nanos(stored, now) > heartbeat_timeout.as_nanos() as i128
}

/// One sentence on the grace, for the page and the terminal.
pub fn grace_text(grace: &HeartbeatGrace) -> String {
    match grace.until {
        Some(until) => format!(
            "The KV store was unreachable and took this agent's heartbeats again at {}: until {} \
             (one heartbeat timeout later) a member whose last heartbeat is older counts as having \
             heartbeated at {}, because no member could heartbeat during the outage. Health \
             shown is this agent's judgement, the one it assigns configs by; heartbeats are the \
             store's.",
            rfc3339_seconds(grace.from),
            rfc3339_seconds(until),
            rfc3339_seconds(grace.from),
        ),
        None => "This agent cannot write its heartbeat to the KV store: until the store is back, \
                 no member is judged by heartbeat age (none can heartbeat) and configs stay where \
                 they run. Health shown is this agent's judgement, the one it assigns configs by; \
                 heartbeats are the store's."
            .to_owned(),
    }
}

fn registered_at(inst: &InstanceDesc) -> String {
    if inst.registered_timestamp == 0 {
        String::new()
    } else {
        rfc3339_seconds(inst.registered_timestamp)
    }
}

fn now_rfc3339(now: SystemTime) -> String {
    rfc3339(unix_nanos(now), Fraction::Millis)
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const PAGE_CSS: &str = "\
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.state-ACTIVE { color: #1a7f37; }
.state-LEAVING, .state-JOINING, .state-PENDING { color: #9a6700; }
.state-LEFT, .state-UNHEALTHY { color: #cf222e; font-weight: bold; }
form { margin: 0; }
p.tokens { font-family: monospace; word-break: break-all; }
";

/// The `/debug/ring` HTML page: a complete document, no JavaScript, no external assets.
///
/// `configs_owned` maps instance ID to the number of configs it owns (missing = 0). Each row's
/// Forget button posts the form field `forget=<instance id>` to the page itself. With
/// `unreachable`, `desc` is the ring as last read, and a banner above the table says so.
#[allow(clippy::too_many_arguments)]
pub fn render_html(
    desc: &Desc,
    now: SystemTime,
    heartbeat_timeout: Duration,
    grace: Option<HeartbeatGrace>,
    show_tokens: bool,
    configs_owned: &HashMap<String, usize>,
    targets: Option<&TargetsSummary>,
    unreachable: Option<&KvUnreachable>,
) -> String {
    let ring = Ring::new(judged(desc, grace), heartbeat_timeout);
    let ownership = ring.ownership();
    let mut h = String::new();
    // `write!` to a String cannot fail; the results are ignored for that reason.
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>Ring status</title>\n<style>\n{PAGE_CSS}</style>\n</head>\n<body>\n\
         <h1>Ring status</h1>\n\
         <p>Current time: {}. Heartbeat timeout: {}. Members: {}.</p>\n",
        now_rfc3339(now),
        go_duration(heartbeat_timeout),
        ring.instances().len(),
    );
    if let Some(u) = unreachable {
        let _ = writeln!(
            h,
            "<p class=\"kv-unreachable\" style=\"border: 2px solid #cf222e; padding: 0.5em; \
             color: #cf222e; font-weight: bold;\">{}</p>",
            html_escape(&u.text())
        );
    }
    if let Some(g) = &grace {
        let _ = writeln!(h, "<p class=\"grace\">{}</p>", html_escape(&grace_text(g)));
    }
    if let Some(t) = targets {
        let _ = writeln!(
            h,
            "<p>{}. Configs owned: configs whose service discovery runs on the member.</p>",
            html_escape(&t.headline())
        );
    }
    h.push_str(
        "<table>\n<thead>\n<tr><th>Instance ID</th><th>Availability Zone</th><th>State</th>\
         <th>Address</th><th>Registered At</th><th>Last Heartbeat</th><th>Tokens</th>\
         <th>Ownership</th><th>Configs owned</th>",
    );
    if targets.is_some() {
        h.push_str("<th>Targets</th><th>Active series</th>");
    }
    h.push_str("<th>Actions</th></tr>\n</thead>\n<tbody>\n");
    for inst in ring.instances() {
        let state = page_state(inst, heartbeat_timeout, now);
        let stored = stored_timestamp(desc, inst);
        let graced = if only_by_grace(grace, stored, heartbeat_timeout, now) {
            " &mdash; healthy by the KV outage grace"
        } else {
            ""
        };
        let id = html_escape(&inst.id);
        let _ = writeln!(
            h,
            "<tr><td>{id}</td><td>{zone}</td><td class=\"state-{state_class}\">{state}</td>\
             <td>{addr}</td><td>{registered}</td><td>{heartbeat} ({age}){graced}</td>\
             <td class=\"num\">{tokens}</td><td class=\"num\">{own:.2}%</td>\
             <td class=\"num\">{configs}</td>{sharding}\
             <td><form method=\"post\"><input type=\"hidden\" name=\"forget\" value=\"{id}\">\
             <button type=\"submit\">Forget</button></form></td></tr>",
            zone = html_escape(&inst.zone),
            state_class = html_escape(&state),
            state = html_escape(&state),
            addr = html_escape(&inst.addr),
            registered = registered_at(inst),
            heartbeat = rfc3339_seconds(stored),
            age = heartbeat_age(stored, now),
            tokens = inst.tokens.len(),
            own = ownership.get(&inst.id).copied().unwrap_or(0.0),
            configs = configs_owned.get(&inst.id).copied().unwrap_or(0),
            sharding = targets.map_or(String::new(), |t| {
                let m = t.members.get(&inst.id).cloned().unwrap_or_default();
                format!(
                    "<td class=\"num\">{}</td><td class=\"num\">{}</td>",
                    m.targets, m.active_series
                )
            }),
        );
    }
    h.push_str("</tbody>\n</table>\n");
    if show_tokens {
        h.push_str("<p><a href=\"?tokens=false\">Hide tokens</a></p>\n");
        for inst in ring.instances() {
            let list: Vec<String> = inst.tokens.iter().map(u32::to_string).collect();
            let _ = write!(
                h,
                "<h2>Instance: {}</h2>\n<p class=\"tokens\">Tokens: {}</p>\n",
                html_escape(&inst.id),
                list.join(" ")
            );
        }
    } else {
        h.push_str("<p><a href=\"?tokens=true\">Show tokens</a></p>\n");
    }
    h.push_str("</body>\n</html>\n");
    h
}

/// One member in the JSON ring status (the old page's fields plus `ownership` and
/// `member_state`). Deserializable so `agentctl ring status --addr` can read it back, from this
/// agent or the old one (whose extra fields are ignored and missing ones defaulted).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardJson {
    pub id: String,
    /// Protobuf state name, or `UNHEALTHY` for a stale heartbeat.
    pub state: String,
    pub address: String,
    /// Last heartbeat, RFC 3339.
    pub timestamp: String,
    /// RFC 3339, or empty when unknown.
    #[serde(default)]
    pub registered_timestamp: String,
    #[serde(default)]
    pub zone: String,
    #[serde(default)]
    pub tokens: Vec<u32>,
    /// Percent of the hash space.
    #[serde(default)]
    pub ownership: f64,
    /// The protobuf state even when `state` says `UNHEALTHY` (the old page hides it). Absent
    /// in the old agent's JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_state: Option<String>,
}

/// The JSON ring status: `{"shards":[...],"now":"..."}`, plus `"targets":{...}` under target
/// sharding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusJson {
    pub shards: Vec<ShardJson>,
    pub now: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<TargetsSummary>,
    /// The agent's heartbeat grace during or after a KV store outage, when one applies:
    /// `state` is then judged with it. Absent in the old agent's JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_grace: Option<GraceJson>,
    /// The agent cannot read the ring from the KV store: `shards` is the ring as it last read
    /// it. Absent when the ring was read for this answer, and in the old agent's JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_store_unreachable: Option<KvUnreachable>,
}

/// The ring page while the agent cannot read the ring from the KV store: it shows the ring as
/// it last read it (its ring view's), and says so.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvUnreachable {
    /// RFC 3339: the first failure the agent knows of in this outage (its ring writes', or the
    /// page's own reads').
    pub since: String,
    /// The error of the page's read.
    pub error: String,
    /// RFC 3339: when the agent last received the ring from the store (the ring shown).
    pub ring_read_at: String,
}

impl KvUnreachable {
    /// The banner above the page's table and the terminal's.
    pub fn text(&self) -> String {
        format!(
            "KV store unreachable since {} ({}); showing the ring as read at {}.",
            self.since, self.error, self.ring_read_at
        )
    }
}

/// [`HeartbeatGrace`] in the JSON ring status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraceJson {
    /// RFC 3339: a member whose last heartbeat is older counts as having heartbeated then.
    pub from: String,
    /// RFC 3339: when the grace ends; absent while the agent's own heartbeats still fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

/// Why a JSON ring status could not be turned back into a ring.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusJsonError {
    #[error("member {id:?}: {field} {value:?} is not an RFC 3339 time")]
    Time {
        id: String,
        field: &'static str,
        value: String,
    },
    #[error("\"now\" {0:?} is not an RFC 3339 time")]
    Now(String),
    #[error("heartbeat_grace: {0:?} is not an RFC 3339 time")]
    Grace(String),
}

impl StatusJson {
    /// The ring and the agent's `now` this status describes, so it can be shown with the same
    /// functions as a ring read from the KV store. The old agent's JSON hides the state of a
    /// member with a stale heartbeat (`UNHEALTHY`); without `member_state` such a member is
    /// taken as ACTIVE, the state a crashed agent leaves behind.
    pub fn to_desc(&self) -> Result<(Desc, SystemTime), StatusJsonError> {
        let now = parse_rfc3339(&self.now).ok_or_else(|| StatusJsonError::Now(self.now.clone()))?;
        let now =
            SystemTime::UNIX_EPOCH + Duration::from_nanos(u64::try_from(now).unwrap_or_default());
        let mut desc = Desc::default();
        for shard in &self.shards {
            let time = |field: &'static str, value: &str| -> Result<i64, StatusJsonError> {
                // Go's zero time is what the old agent prints for "unknown".
                if value.is_empty() || value.starts_with("0001-01-01T00:00:00") {
                    return Ok(0);
                }
                parse_rfc3339(value)
                    .map(|ns| ns.div_euclid(1_000_000_000) as i64)
                    .ok_or_else(|| StatusJsonError::Time {
                        id: shard.id.clone(),
                        field,
                        value: value.to_owned(),
                    })
            };
            let name = shard.member_state.as_deref().unwrap_or(&shard.state);
            let state = match name {
                "ACTIVE" | "UNHEALTHY" => InstanceState::Active as i32,
                "LEAVING" => InstanceState::Leaving as i32,
                "PENDING" => InstanceState::Pending as i32,
                "JOINING" => InstanceState::Joining as i32,
                "LEFT" => InstanceState::Left as i32,
                // Unknown states are shown as numbers, which is how they arrive.
                other => other.parse().unwrap_or(-1),
            };
            let mut tokens = shard.tokens.clone();
            tokens.sort_unstable();
            desc.ingesters.insert(
                shard.id.clone(),
                InstanceDesc {
                    addr: shard.address.clone(),
                    timestamp: time("timestamp", &shard.timestamp)?,
                    state,
                    tokens,
                    zone: shard.zone.clone(),
                    registered_timestamp: time(
                        "registered_timestamp",
                        &shard.registered_timestamp,
                    )?,
                    id: shard.id.clone(),
                },
            );
        }
        Ok((desc, now))
    }

    /// The agent's heartbeat grace, when it reported one.
    pub fn grace(&self) -> Result<Option<HeartbeatGrace>, StatusJsonError> {
        let Some(g) = &self.heartbeat_grace else {
            return Ok(None);
        };
        let secs = |v: &str| {
            parse_rfc3339(v)
                .map(|ns| ns.div_euclid(1_000_000_000) as i64)
                .ok_or_else(|| StatusJsonError::Grace(v.to_owned()))
        };
        Ok(Some(HeartbeatGrace {
            from: secs(&g.from)?,
            until: g.until.as_deref().map(secs).transpose()?,
        }))
    }
}

/// The JSON ring status as a value, members sorted by ID.
pub fn status_json(
    desc: &Desc,
    now: SystemTime,
    heartbeat_timeout: Duration,
    grace: Option<HeartbeatGrace>,
    targets: Option<&TargetsSummary>,
) -> StatusJson {
    let ring = Ring::new(judged(desc, grace), heartbeat_timeout);
    let ownership = ring.ownership();
    let shards = ring
        .instances()
        .iter()
        .map(|inst| ShardJson {
            id: inst.id.clone(),
            state: page_state(inst, heartbeat_timeout, now),
            address: inst.addr.clone(),
            timestamp: rfc3339_seconds(stored_timestamp(desc, inst)),
            registered_timestamp: registered_at(inst),
            zone: inst.zone.clone(),
            tokens: inst.tokens.clone(),
            ownership: ownership.get(&inst.id).copied().unwrap_or(0.0),
            member_state: Some(inst.state_name()),
        })
        .collect();
    StatusJson {
        shards,
        now: now_rfc3339(now),
        targets: targets.cloned(),
        heartbeat_grace: grace.map(|g| GraceJson {
            from: rfc3339_seconds(g.from),
            until: g.until.map(rfc3339_seconds),
        }),
        kv_store_unreachable: None,
    }
}

/// `/debug/ring` with `Accept: application/json`.
pub fn render_json(
    desc: &Desc,
    now: SystemTime,
    heartbeat_timeout: Duration,
    grace: Option<HeartbeatGrace>,
    targets: Option<&TargetsSummary>,
) -> String {
    // Serializing plain strings, integers and finite floats cannot fail.
    serde_json::to_string(&status_json(desc, now, heartbeat_timeout, grace, targets))
        .unwrap_or_default()
}

/// Terminal output must not carry control characters (an ID could hold an escape sequence).
fn terminal_safe(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

fn state_color(state: Option<InstanceState>) -> &'static str {
    match state {
        Some(InstanceState::Active) => "\x1b[32m",
        Some(InstanceState::Leaving | InstanceState::Joining | InstanceState::Pending) => {
            "\x1b[33m"
        }
        Some(InstanceState::Left) | None => "\x1b[31m",
    }
}

/// The `agentctl ring status` table: ID, STATE, ADDRESS, ZONE, HEARTBEAT, TOKENS, OWNERSHIP,
/// HEALTH (`healthy` or `unhealthy` by heartbeat age; `healthy (grace)` when only an agent's
/// [`HeartbeatGrace`] makes it so, explained under the table); under target sharding also
/// TARGETS and SERIES per member and the headline under the table. ANSI colours only when
/// `color`.
pub fn render_status_table(
    desc: &Desc,
    now: SystemTime,
    heartbeat_timeout: Duration,
    grace: Option<HeartbeatGrace>,
    color: bool,
    targets: Option<&TargetsSummary>,
) -> String {
    let ring = Ring::new(judged(desc, grace), heartbeat_timeout);
    let ownership = ring.ownership();
    let mut header = vec![
        "ID",
        "STATE",
        "ADDRESS",
        "ZONE",
        "HEARTBEAT",
        "TOKENS",
        "OWNERSHIP",
    ];
    if targets.is_some() {
        header.extend(["TARGETS", "SERIES"]);
    }
    header.push("HEALTH");
    let last = header.len() - 1;
    struct Row {
        cells: Vec<String>,
        state_color: &'static str,
        healthy: bool,
    }
    let rows: Vec<Row> = ring
        .instances()
        .iter()
        .map(|inst| {
            let healthy = inst.heartbeat_fresh(heartbeat_timeout, now);
            let stored = stored_timestamp(desc, inst);
            let zone = if inst.zone.is_empty() {
                "-".to_owned()
            } else {
                terminal_safe(&inst.zone)
            };
            let mut cells = vec![
                terminal_safe(&inst.id),
                inst.state_name(),
                terminal_safe(&inst.addr),
                zone,
                heartbeat_age(stored, now),
                inst.tokens.len().to_string(),
                format!("{:.2}%", ownership.get(&inst.id).copied().unwrap_or(0.0)),
            ];
            if let Some(t) = targets {
                let m = t.members.get(&inst.id).cloned().unwrap_or_default();
                cells.push(m.targets.to_string());
                cells.push(m.active_series.to_string());
            }
            cells.push(
                if !healthy {
                    "unhealthy"
                } else if only_by_grace(grace, stored, heartbeat_timeout, now) {
                    "healthy (grace)"
                } else {
                    "healthy"
                }
                .to_owned(),
            );
            Row {
                cells,
                state_color: state_color(inst.instance_state()),
                healthy,
            }
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(&row.cells) {
            *w = (*w).max(cell.chars().count());
        }
    }
    // The numbers (TOKENS, OWNERSHIP, TARGETS, SERIES) are right-aligned so they line up.
    let right = |col: usize| (5..last).contains(&col);
    let pad = |col: usize, text: &str| {
        if col == last {
            // No trailing blanks (nor blanks inside a colour code at the line's end).
            return text.to_owned();
        }
        let fill = " ".repeat(widths[col] - text.chars().count());
        if right(col) {
            format!("{fill}{text}")
        } else {
            format!("{text}{fill}")
        }
    };
    let mut out = String::new();
    let head: Vec<String> = header.iter().enumerate().map(|(i, h)| pad(i, h)).collect();
    out.push_str(&head.join("  "));
    out.push('\n');
    for row in &rows {
        let cells: Vec<String> = row
            .cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let padded = pad(i, c);
                // Colour wraps the padded text so the escape codes do not upset alignment.
                if color && i == 1 {
                    format!("{}{padded}\x1b[0m", row.state_color)
                } else if color && i == last {
                    let code = if row.healthy { "\x1b[32m" } else { "\x1b[31m" };
                    format!("{code}{padded}\x1b[0m")
                } else {
                    padded
                }
            })
            .collect();
        out.push_str(&cells.join("  "));
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("(the ring has no members)\n");
    }
    if let Some(t) = targets {
        out.push_str(&t.headline());
        out.push('\n');
    }
    if let Some(g) = &grace {
        out.push_str(&grace_text(g));
        out.push('\n');
    }
    out
}

/// Exit code for `agentctl ring status`: 0 when the ring has members and every one is ACTIVE
/// with a fresh heartbeat (as judged with the agent's `grace`, when it reported one), 1
/// otherwise (including an empty ring, which can own nothing).
pub fn status_exit_code(
    desc: &Desc,
    now: SystemTime,
    heartbeat_timeout: Duration,
    grace: Option<HeartbeatGrace>,
) -> i32 {
    let desc = judged(desc, grace);
    let all_good = !desc.ingesters.is_empty()
        && desc
            .ingesters
            .values()
            .all(|i| i.is_healthy(Operation::Write, heartbeat_timeout, now));
    if all_good {
        0
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_SECS: i64 = 1_764_000_000; // 2025-11-24T16:00:00Z
    const TIMEOUT: Duration = Duration::from_secs(60);

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(NOW_SECS as u64)
    }

    fn sample() -> Desc {
        let mut d = Desc::default();
        let members = [
            (
                "agent-2",
                "10.0.0.2:12345",
                InstanceState::Active,
                vec![1u32 << 30, 3 << 30],
                "eu-west-1b",
                3,
                1_763_990_000,
            ),
            (
                "agent-1",
                "10.0.0.1:12345",
                InstanceState::Active,
                vec![1000, 2 << 30],
                "eu-west-1a",
                125,
                1_763_980_000,
            ),
            (
                "agent-3",
                "10.0.0.3:12345",
                InstanceState::Leaving,
                vec![5 << 28],
                "",
                0,
                0,
            ),
            (
                "<script>",
                "evil\"&'",
                InstanceState::Joining,
                vec![],
                "z<1>",
                4000,
                1_700_000_000,
            ),
        ];
        for (id, addr, state, tokens, zone, age, reg) in members {
            d.ingesters.insert(
                id.to_owned(),
                InstanceDesc {
                    addr: addr.to_owned(),
                    timestamp: NOW_SECS - age,
                    state: state as i32,
                    tokens,
                    zone: zone.to_owned(),
                    registered_timestamp: reg,
                    id: id.to_owned(),
                },
            );
        }
        d
    }

    #[test]
    fn formats_times() {
        assert_eq!(rfc3339_seconds(NOW_SECS), "2025-11-24T16:00:00Z");
        assert_eq!(rfc3339_seconds(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_seconds(-1), "1969-12-31T23:59:59Z");
        // Extreme values from a hostile KV do not panic.
        let _ = rfc3339_seconds(i64::MAX);
        let _ = rfc3339_seconds(i64::MIN);
        assert_eq!(heartbeat_age(NOW_SECS - 3, now()), "3s ago");
        assert_eq!(heartbeat_age(NOW_SECS - 125, now()), "2m5s ago");
        assert_eq!(heartbeat_age(NOW_SECS - 3840, now()), "1h4m ago");
        assert_eq!(
            heartbeat_age(NOW_SECS - 2 * 86_400 - 7200, now()),
            "2d2h ago"
        );
        assert_eq!(heartbeat_age(NOW_SECS + 5, now()), "in 5s");
        assert_eq!(heartbeat_age(0, now()), "never");
        let _ = heartbeat_age(i64::MIN, now());
        let _ = heartbeat_age(i64::MAX, now());
    }

    #[test]
    fn html_page() {
        let configs: HashMap<String, usize> =
            [("agent-1".to_owned(), 4), ("agent-2".to_owned(), 7)].into();
        let page = render_html(&sample(), now(), TIMEOUT, None, false, &configs, None, None);
        assert!(!page.contains("<script>"), "IDs are escaped");
        assert!(!page.contains("<script"), "no JavaScript at all");
        assert!(
            !page.contains("src=") && !page.contains("<link"),
            "no external assets"
        );
        insta::assert_snapshot!("ring_page_html", page);
    }

    #[test]
    fn html_page_with_tokens() {
        let page = render_html(
            &sample(),
            now(),
            TIMEOUT,
            None,
            true,
            &HashMap::new(),
            None,
            None,
        );
        assert!(page.contains("Tokens: 1000 2147483648"));
        insta::assert_snapshot!("ring_page_html_tokens", page);
    }

    #[test]
    fn json_status() {
        let json = render_json(&sample(), now(), TIMEOUT, None, None);
        let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        let total: f64 = v["shards"]
            .as_array()
            .expect("shards")
            .iter()
            .map(|s| s["ownership"].as_f64().expect("ownership"))
            .sum();
        assert!((total - 100.0).abs() < 1e-9);
        insta::assert_snapshot!("ring_status_json", json);
    }

    #[test]
    fn times_it_writes_parse_back() {
        for s in [now_rfc3339(now()), rfc3339_seconds(NOW_SECS - 12345)] {
            assert!(parse_rfc3339(&s).is_some(), "{s}");
        }
    }

    #[test]
    fn json_status_round_trips_to_the_same_table() {
        let json = render_json(&sample(), now(), TIMEOUT, None, None);
        let status: StatusJson = serde_json::from_str(&json).expect("parse");
        let (desc, agent_now) = status.to_desc().expect("to_desc");
        assert_eq!(agent_now, now());
        assert_eq!(
            render_status_table(&desc, agent_now, TIMEOUT, None, false, None),
            render_status_table(&sample(), now(), TIMEOUT, None, false, None)
        );
        // The old agent's JSON: no ownership, no member_state, UNHEALTHY hides the state.
        let old = r#"{"shards":[{"id":"a","state":"UNHEALTHY","address":"1.2.3.4:80","timestamp":"2025-11-24T15:00:00.123456789+00:00","registered_timestamp":"0001-01-01T00:00:00Z","zone":"","tokens":[5,1]}],"now":"2025-11-24T16:00:00Z"}"#;
        let status: StatusJson = serde_json::from_str(old).expect("old JSON");
        let (desc, _) = status.to_desc().expect("to_desc");
        assert_eq!(desc.ingesters["a"].tokens, vec![1, 5]);
        assert_eq!(desc.ingesters["a"].timestamp, NOW_SECS - 3600);
        assert_eq!(status_exit_code(&desc, now(), TIMEOUT, None), 1);
    }

    #[test]
    fn terminal_table() {
        insta::assert_snapshot!(
            "ring_status_table",
            render_status_table(&sample(), now(), TIMEOUT, None, false, None)
        );
        let colored = render_status_table(&sample(), now(), TIMEOUT, None, true, None);
        assert!(colored.contains("\x1b[32mACTIVE"));
        assert!(colored.contains("\x1b[33mLEAVING"));
        assert!(colored.contains("\x1b[31munhealthy"));
        insta::assert_snapshot!("ring_status_table_color", colored.replace('\x1b', "<ESC>"));
        assert_eq!(
            render_status_table(&Desc::default(), now(), TIMEOUT, None, false, None),
            "ID  STATE  ADDRESS  ZONE  HEARTBEAT  TOKENS  OWNERSHIP  HEALTH\n\
             (the ring has no members)\n"
        );
    }

    #[test]
    fn table_escapes_control_characters() {
        let mut d = Desc::default();
        d.ingesters.insert(
            "a\x1b[2Jb".to_owned(),
            InstanceDesc {
                timestamp: NOW_SECS,
                ..Default::default()
            },
        );
        let t = render_status_table(&d, now(), TIMEOUT, None, false, None);
        assert!(!t.contains('\x1b'), "{t:?}");
        assert!(t.contains("a\\u{1b}[2Jb"), "{t}");
    }

    #[test]
    fn exit_code() {
        assert_eq!(status_exit_code(&sample(), now(), TIMEOUT, None), 1);
        let mut d = sample();
        d.ingesters
            .retain(|id, _| id == "agent-1" || id == "agent-2");
        assert_eq!(
            status_exit_code(&d, now(), TIMEOUT, None),
            1,
            "agent-1 is stale"
        );
        assert_eq!(status_exit_code(&d, now(), Duration::ZERO, None), 0);
        d.ingesters.remove("agent-1");
        assert_eq!(status_exit_code(&d, now(), TIMEOUT, None), 0);
        assert_eq!(status_exit_code(&Desc::default(), now(), TIMEOUT, None), 1);
    }

    #[test]
    fn an_agents_grace_after_a_kv_outage_is_shown_and_counts() {
        let mut d = sample();
        d.ingesters
            .retain(|id, _| id == "agent-1" || id == "agent-2");
        let stale = d.ingesters["agent-1"].timestamp;
        // The store came back 10 s ago: agent-1's older heartbeat counts as made then.
        let grace = HeartbeatGrace {
            from: NOW_SECS - 10,
            until: Some(NOW_SECS + 50),
        };
        assert!(grace.covers(stale));
        assert_eq!(status_exit_code(&d, now(), TIMEOUT, Some(grace)), 0);
        let t = render_status_table(&d, now(), TIMEOUT, Some(grace), false, None);
        let row = |id: &str| t.lines().find(|l| l.starts_with(id)).unwrap_or_default();
        assert!(row("agent-1").ends_with("healthy (grace)"), "{t}");
        assert!(row("agent-2").ends_with("  healthy"), "{t}");
        assert!(
            row("agent-1").contains(&heartbeat_age(stale, now())),
            "the stored heartbeat is shown: {t}"
        );
        assert!(
            t.contains("heartbeats again at 2025-11-24T15:59:50Z"),
            "{t}"
        );
        // The JSON says the same, and reads back.
        let json: StatusJson =
            serde_json::from_str(&render_json(&d, now(), TIMEOUT, Some(grace), None)).unwrap();
        assert_eq!(json.shards[0].state, "ACTIVE");
        assert_eq!(json.shards[0].timestamp, rfc3339_seconds(stale));
        assert_eq!(json.grace(), Ok(Some(grace)));
        // Without the grace (a page or CLI judging by age alone) agent-1 is unhealthy.
        let t = render_status_table(&d, now(), TIMEOUT, None, false, None);
        assert!(t
            .lines()
            .any(|l| l.starts_with("agent-1") && l.ends_with("unhealthy")));
        // While the agent's own writes fail, nobody is judged by age.
        let failing = HeartbeatGrace {
            from: NOW_SECS,
            until: None,
        };
        assert_eq!(status_exit_code(&d, now(), TIMEOUT, Some(failing)), 0);
        let page = render_html(
            &d,
            now(),
            TIMEOUT,
            Some(failing),
            false,
            &HashMap::new(),
            None,
            None,
        );
        assert!(page.contains("cannot write its heartbeat"), "{page}");
    }

    fn targets_summary() -> TargetsSummary {
        TargetsSummary {
            epoch: 42,
            leader: "agent-1".into(),
            cap: 1000,
            targets: 2990,
            unassigned: 0,
            balance: 1.003,
            members: [
                (
                    "agent-1".to_owned(),
                    MemberTargets {
                        targets: 1000,
                        active_series: 52_000,
                    },
                ),
                (
                    "agent-2".to_owned(),
                    MemberTargets {
                        targets: 995,
                        active_series: 51_200,
                    },
                ),
                (
                    "agent-3".to_owned(),
                    MemberTargets {
                        targets: 995,
                        active_series: 49_900,
                    },
                ),
            ]
            .into(),
        }
    }

    #[test]
    fn targets_on_the_page_the_json_and_the_table() {
        let t = targets_summary();
        let page = render_html(
            &sample(),
            now(),
            TIMEOUT,
            None,
            false,
            &HashMap::new(),
            Some(&t),
            None,
        );
        assert!(page.contains("<th>Targets</th><th>Active series</th>"));
        assert!(page.contains(
            "target sharding: epoch 42 (leader agent-1), 2990 targets, 0 unassigned, cap 1000 per member, balance max/mean 1.003"
        ));
        assert!(page.contains("<td class=\"num\">995</td><td class=\"num\">51200</td>"));

        let json: StatusJson =
            serde_json::from_str(&render_json(&sample(), now(), TIMEOUT, None, Some(&t))).unwrap();
        assert_eq!(json.targets, Some(t.clone()));
        let plain: StatusJson =
            serde_json::from_str(&render_json(&sample(), now(), TIMEOUT, None, None)).unwrap();
        assert_eq!(plain.targets, None);

        insta::assert_snapshot!(
            "ring_status_table_targets",
            render_status_table(&sample(), now(), TIMEOUT, None, false, Some(&t))
        );
    }
}
