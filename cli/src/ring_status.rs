//! `agentctl ring status` and `agentctl ring forget`.
//!
//! The ring comes from an agent's `/debug/ring` (JSON, `--addr`) or straight from the KV store
//! (`--kv`, key `<ring.prefix>agent`). Both end up as a `Desc` and the agent's notion of "now",
//! shown by the same functions the ring page uses.
//!
//! Health after a KV store outage: the agents do not judge a member by a heartbeat that the
//! outage made old (for one heartbeat timeout after the store returns, see
//! `agent::cluster::heartbeat_grace`), and an agent's ring page says when it does that. With
//! `--addr` the table shows that agent's judgement (and the exit code follows it). With `--kv`
//! the CLI sees only the heartbeats in the store, not when each agent's writes failed or landed
//! again, so it judges by heartbeat age alone; a guess from the heartbeats (e.g. "everyone is
//! stale, so the store was down") would also hide members that really died. It says so under the
//! table when a member is stale, and points to `--addr`.
//!
//! During a KV store outage an agent's page shows the ring it last read, with
//! `kv_store_unreachable` (since when, why, when the ring shown was read): `--addr` prints that
//! banner above the table (and keeps it in `--output json`), and exits 1 whatever the members'
//! health (the ring shown may be out of date, and the store needs attention). An agent that has
//! never read the ring answers 503 with the reason: exit 2, as for any ring that cannot be read.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agent::cluster::report::{owners, summary, OwnerAnswer};
use agent::cluster::store::Layout;
use agent::cluster::view::load as load_sharding;
use agent::kv::{KvSpec, KvStore};
use agent::ring::lifecycler::HeartbeatGrace;
use agent::ring::render::{
    render_status_table, status_exit_code, status_json, KvUnreachable, StatusJson, TargetsSummary,
};
use agent::ring::{read_ring, ring_key, Desc};

use crate::args::{OutputFormat, RingForgetArgs, RingOwnerArgs, RingSourceArgs, RingStatusArgs};
use crate::{io, Error};

/// Where `--addr` points when neither `--addr` nor `--kv` is given.
const DEFAULT_ADDR: &str = "http://localhost:12345";

/// Time allowed for one request to an agent.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

enum Source {
    Agent(String),
    Kv(KvSpec),
}

fn source(args: &RingSourceArgs) -> Result<Source, Error> {
    match (&args.kv, &args.addr) {
        (Some(kv), _) => crate::client::kv_spec(kv, &args.tls, &args.kv_auth)
            .map(Source::Kv)
            .map_err(Error::Usage),
        (None, addr) => Ok(Source::Agent(
            addr.as_deref()
                .unwrap_or(DEFAULT_ADDR)
                .trim_end_matches('/')
                .to_owned(),
        )),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| io("starting the async runtime", e))
}

/// The client for `url`, with the TLS flags; redirects are not followed (Forget answers 302).
fn http_client(
    url: &str,
    tls: &crate::args::TlsArgs,
) -> Result<agent::httpclient::HttpClient, Error> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| Error::Usage(format!("invalid --addr {url:?}: {e}")))?;
    crate::client::http_client(&parsed, tls, false, HTTP_TIMEOUT).map_err(Error::Usage)
}

async fn connect(spec: &KvSpec) -> Result<Arc<dyn KvStore>, Error> {
    // Opening an embedded store creates it: a mistyped path would show an empty ring.
    if let KvSpec::Embedded(dir) = spec {
        let missing = crate::client::embedded_store_missing(dir).map_err(Error::Unavailable)?;
        if missing {
            return Err(Error::Unavailable(format!(
                "cannot open the KV store {spec}: {}",
                crate::client::no_embedded_store_message()
            )));
        }
    }
    agent::kv::connect(spec)
        .await
        .map_err(|e| Error::Unavailable(format!("cannot open the KV store {spec}: {e}")))
}

/// What `ring status` shows: the ring, the "now" to judge heartbeats against (the agent's
/// clock for `--addr`), target sharding's figures when the cluster shards targets, the
/// agent's heartbeat grace after a KV store outage and, while it cannot read the store, that
/// (`--addr` only).
struct Loaded {
    desc: Desc,
    now: SystemTime,
    targets: Option<TargetsSummary>,
    grace: Option<HeartbeatGrace>,
    unreachable: Option<KvUnreachable>,
}

async fn load(src: &Source, args: &RingSourceArgs) -> Result<Loaded, Error> {
    let ring_prefix = &args.ring_prefix;
    let tls = &args.tls;
    match src {
        Source::Kv(spec) => {
            let store = connect(spec).await?;
            let key = ring_key(ring_prefix);
            let desc = read_ring(store.as_ref(), &key)
                .await
                .map_err(|e| Error::Unavailable(format!("cannot read the ring: {e}")))?;
            let layout = Layout::new(args.sharding_prefix());
            let sharding = load_sharding(store.as_ref(), &layout)
                .await
                .map_err(|e| Error::Unavailable(format!("cannot read the sharding keys: {e}")))?;
            let targets = (!sharding.agents.is_empty() || sharding.assignment.epoch > 0)
                .then(|| summary(&sharding));
            Ok(Loaded {
                desc,
                now: agent::clock::Clock::system().now(),
                targets,
                grace: None,
                unreachable: None,
            })
        }
        Source::Agent(base) => {
            let url = format!("{base}/debug/ring");
            let fail = |what: String| {
                Error::Unavailable(format!("cannot read the ring from {url}: {what}"))
            };
            let client = http_client(&url, tls)?;
            let resp = client
                .send(
                    client
                        .get(&url)
                        .header(reqwest::header::ACCEPT, "application/json"),
                )
                .await
                .map_err(|e| fail(e.to_string()))?;
            let status = resp.status();
            let body = resp
                .text()
                .await
                .map_err(|e| fail(agent::httpclient::error_chain(&e.without_url())))?;
            if status == reqwest::StatusCode::NOT_FOUND {
                return Err(fail(format!(
                    "HTTP {status}: {}; the agent serves no ring when it does not run the scraping service (metrics.scraping_service.enabled), and --addr is the agent's base URL, without /debug/ring",
                    body.trim()
                )));
            }
            if !status.is_success() {
                return Err(fail(format!("HTTP {status}: {}", body.trim())));
            }
            let json: StatusJson = serde_json::from_str(&body)
                .map_err(|e| fail(format!("the answer is not the ring's JSON: {e}")))?;
            let (desc, now) = json.to_desc().map_err(|e| fail(e.to_string()))?;
            let grace = json.grace().map_err(|e| fail(e.to_string()))?;
            Ok(Loaded {
                desc,
                now,
                targets: json.targets,
                grace,
                unreachable: json.kv_store_unreachable,
            })
        }
    }
}

/// Under the table read from the store (`--kv`) when a member's heartbeat is stale: what the
/// CLI cannot see (see the module docs).
pub const KV_STALE_NOTE: &str = "note: HEALTH is judged here by heartbeat age in the KV store. \
For one heartbeat timeout after a KV store outage, every member's heartbeat is as old as the \
outage and the agents still count such members healthy (their configs do not move); reading \
the store, this command cannot see that. `agentctl ring status --addr <agent>` shows an \
agent's own judgement.";

/// `agentctl ring status`: exit 0 when every member is ACTIVE and healthy, 1 otherwise or when
/// the agent (`--addr`) cannot read the KV store and shows the ring it last read, 2 when the
/// ring cannot be read. With `--addr`, "healthy" is the agent's judgement (its grace after a KV
/// store outage included).
pub fn status(args: &RingStatusArgs, out: &mut dyn Write) -> Result<ExitCode, Error> {
    let src = source(&args.source)?;
    let Loaded {
        desc,
        now,
        targets,
        grace,
        unreachable,
    } = runtime()?.block_on(load(&src, &args.source))?;
    let timeout = args.heartbeat_timeout;
    let text = match args.output {
        OutputFormat::Json => {
            let json = StatusJson {
                kv_store_unreachable: unreachable.clone(),
                ..status_json(&desc, now, timeout, grace, targets.as_ref())
            };
            let mut s = serde_json::to_string(&json).unwrap_or_default();
            s.push('\n');
            s
        }
        OutputFormat::Table => {
            let color = std::io::stdout().is_terminal();
            let mut s = String::new();
            if let Some(u) = &unreachable {
                // No control characters from the agent's error text on a terminal.
                let text: String = u
                    .text()
                    .chars()
                    .flat_map(|c| {
                        let escaped: Vec<char> = if c.is_control() {
                            c.escape_default().collect()
                        } else {
                            vec![c]
                        };
                        escaped
                    })
                    .collect();
                s.push_str(&text);
                s.push('\n');
            }
            s.push_str(&render_status_table(
                &desc,
                now,
                timeout,
                grace,
                color,
                targets.as_ref(),
            ));
            let stale = desc
                .ingesters
                .values()
                .any(|m| !m.heartbeat_fresh(timeout, now));
            if matches!(src, Source::Kv(_)) && stale {
                s.push_str(KV_STALE_NOTE);
                s.push('\n');
            }
            if args.tokens {
                for inst in desc.ingesters.values() {
                    let list: Vec<String> = inst.tokens.iter().map(u32::to_string).collect();
                    s.push_str(&format!(
                        "\ntokens of {} ({}):\n{}\n",
                        inst.id.escape_default(),
                        inst.tokens.len(),
                        list.join(" ")
                    ));
                }
            }
            s
        }
    };
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| io("writing the ring status", e))?;
    let code = if unreachable.is_some() {
        1
    } else {
        status_exit_code(&desc, now, timeout, grace)
    };
    Ok(ExitCode::from(code as u8))
}

/// `agentctl ring forget ID`: a CAS on the KV store (`--kv`) or the ring page's Forget button
/// (`--addr`, POST `forget=ID`, which answers 302 on success).
pub fn forget(args: &RingForgetArgs, out: &mut dyn Write) -> Result<ExitCode, Error> {
    let src = source(&args.source)?;
    let message = runtime()?.block_on(async {
        match &src {
            Source::Kv(spec) => {
                let store = connect(spec).await?;
                let key = ring_key(&args.source.ring_prefix);
                let removed = agent::ring::forget(&store, &key, &args.id)
                    .await
                    .map_err(|e| Error::Unavailable(format!("cannot forget {:?}: {e}", args.id)))?;
                Ok::<_, Error>(if removed {
                    format!("forgot {} (removed from {key} in {spec})\n", args.id)
                } else {
                    format!(
                        "{} is not in the ring ({key} in {spec}); nothing to do\n",
                        args.id
                    )
                })
            }
            Source::Agent(base) => {
                let url = format!("{base}/debug/ring");
                let body: String = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("forget", &args.id)
                    .finish();
                let client = http_client(&url, &args.source.tls)?;
                let resp = client
                    .send(
                        client
                            .request(reqwest::Method::POST, &url)
                            .header(
                                reqwest::header::CONTENT_TYPE,
                                "application/x-www-form-urlencoded",
                            )
                            .body(body),
                    )
                    .await
                    .map_err(|e| Error::Unavailable(format!("POST {url}: {e}")))?;
                let status = resp.status();
                if status == reqwest::StatusCode::FOUND || status.is_success() {
                    Ok(format!("forgot {} (via {url})\n", args.id))
                } else {
                    let text = resp.text().await.unwrap_or_default();
                    Err(Error::Unavailable(format!(
                        "POST {url}: HTTP {status}: {}",
                        text.trim()
                    )))
                }
            }
        }
    })?;
    out.write_all(message.as_bytes())
        .map_err(|e| io("writing the result", e))?;
    Ok(ExitCode::SUCCESS)
}

/// `agentctl ring owner TARGET`: exit 0 when found, 1 when no published target matches, 2 when
/// the agent or the store cannot be read.
pub fn owner(
    args: &RingOwnerArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<ExitCode, Error> {
    let src = source(&args.source)?;
    let found: Result<Vec<OwnerAnswer>, String> = runtime()?.block_on(async {
        match &src {
            Source::Kv(spec) => {
                let store = connect(spec).await?;
                let layout = Layout::new(args.source.sharding_prefix());
                let state = load_sharding(store.as_ref(), &layout).await.map_err(|e| {
                    Error::Unavailable(format!("cannot read the sharding keys: {e}"))
                })?;
                if state.targets.is_empty() && state.assignment.epoch == 0 {
                    return Ok(Err(format!(
                        "{spec} holds no {} keys: target sharding is off (scraping_service.sharding: configs) or no agent has published yet",
                        layout.prefix()
                    )));
                }
                let found = owners(&state, &args.target);
                Ok(if found.is_empty() {
                    Err(format!(
                        "no published target matches {:?} (by scrape URL, __address__, instance label or key)",
                        args.target
                    ))
                } else {
                    Ok(found)
                })
            }
            Source::Agent(base) => {
                let query: String = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("target", &args.target)
                    .finish();
                let url = format!("{base}/agent/api/v1/ring/owner?{query}");
                let client = http_client(&url, &args.source.tls)?;
                let resp = client
                    .send(client.get(&url))
                    .await
                    .map_err(|e| Error::Unavailable(format!("GET {url}: {e}")))?;
                let status = resp.status();
                let body = resp.text().await.map_err(|e| {
                    Error::Unavailable(format!(
                        "GET {url}: {}",
                        agent::httpclient::error_chain(&e.without_url())
                    ))
                })?;
                #[derive(serde::Deserialize)]
                struct Envelope {
                    #[serde(default)]
                    data: Vec<OwnerAnswer>,
                    #[serde(default)]
                    error: String,
                }
                let env: Envelope = serde_json::from_str(&body).map_err(|e| {
                    Error::Unavailable(format!(
                        "GET {url}: HTTP {status}, not the API's JSON ({e}): {}",
                        body.trim()
                    ))
                })?;
                if status == reqwest::StatusCode::NOT_FOUND {
                    return Ok(Err(env.error));
                }
                if !status.is_success() {
                    return Err(Error::Unavailable(format!(
                        "GET {url}: HTTP {status}: {}",
                        env.error
                    )));
                }
                Ok(Ok(env.data))
            }
        }
    })?;
    let answers = match found {
        Ok(a) => a,
        Err(msg) => {
            err.write_all(format!("{msg}\n").as_bytes())
                .map_err(|e| io("writing the result", e))?;
            return Ok(ExitCode::from(1));
        }
    };
    let text = match args.output {
        OutputFormat::Json => {
            let mut s = serde_json::to_string_pretty(&answers).unwrap_or_default();
            s.push('\n');
            s
        }
        OutputFormat::Table => answers
            .iter()
            .map(owner_text)
            .collect::<Vec<_>>()
            .join("\n"),
    };
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| io("writing the result", e))?;
    Ok(ExitCode::SUCCESS)
}

fn owner_text(a: &OwnerAnswer) -> String {
    let safe = |s: &str| s.escape_default().to_string();
    let labels: Vec<String> = a
        .labels
        .iter()
        .map(|(n, v)| format!("{}={:?}", safe(n), v))
        .collect();
    let owner = match (&a.owner, &a.owner_address) {
        (Some(o), Some(addr)) => format!("{} ({})", safe(o), safe(addr)),
        (Some(o), None) => safe(o),
        (None, _) => "none".to_owned(),
    };
    let mut s = format!(
        "{}\n  config:  {}  job: {}  key: {}\n  labels:  {{{}}}\n  owner:   {owner}, epoch {}\n",
        safe(&a.url),
        safe(&a.config),
        safe(&a.job),
        a.key,
        labels.join(", "),
        a.epoch
    );
    for h in &a.handoff {
        s.push_str(&format!("  handoff: {}\n", safe(h)));
    }
    s.push_str(&format!("  why:     {}\n", safe(&a.why)));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent::ring::model::{InstanceDesc, InstanceState};
    use clap::Parser;
    use std::io::Read;

    /// Serves `answers` (status line and body, in order, one per connection) on loopback.
    fn serve(answers: Vec<(&'static str, String)>) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for (status, body) in answers {
                let Ok((mut conn, _)) = listener.accept() else {
                    return;
                };
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        format!("http://{addr}")
    }

    fn args(addr: &str, output: &str) -> RingStatusArgs {
        let argv = [
            "agentctl", "ring", "status", "--addr", addr, "--output", output,
        ];
        match crate::args::Cli::try_parse_from(argv)
            .expect("args")
            .command
        {
            crate::args::Command::Ring(crate::args::RingCommand::Status(s)) => s,
            other => panic!("{other:?}"),
        }
    }

    /// The page of an agent that cannot read the KV store: its last ring, healthy members,
    /// and `kv_store_unreachable`. `ring status --addr` shows the banner above the table,
    /// keeps it in JSON, and exits 1; an agent that never read the ring (503) is exit 2's
    /// error with the agent's reason.
    #[test]
    fn an_agent_that_cannot_read_the_store_shows_its_last_ring_and_exit_1() {
        let now = agent::clock::Clock::system().now();
        let secs = agent::clock::unix_secs(now);
        let mut desc = Desc::default();
        desc.ingesters.insert(
            "a".into(),
            InstanceDesc {
                addr: "a:80".into(),
                timestamp: secs,
                state: InstanceState::Active as i32,
                tokens: vec![1],
                id: "a".into(),
                ..Default::default()
            },
        );
        let unreachable = KvUnreachable {
            since: "2026-12-05T03:00:00Z".into(),
            error: "etcd at 10.0.0.1:2379: get \"collectors/agent\" got no answer".into(),
            ring_read_at: "2026-12-05T02:59:58Z".into(),
        };
        let page = serde_json::to_string(&StatusJson {
            kv_store_unreachable: Some(unreachable.clone()),
            ..status_json(&desc, now, Duration::from_secs(60), None, None)
        })
        .expect("json");
        let addr = serve(vec![
            ("200 OK", page.clone()),
            ("200 OK", page),
            (
                "503 Service Unavailable",
                "this agent has not read the ring from the KV store since it started".into(),
            ),
        ]);

        let mut out = Vec::new();
        let code = status(&args(&addr, "table"), &mut out).expect("status");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(
            text.lines().next(),
            Some(unreachable.text().as_str()),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("a ") && l.ends_with("healthy")),
            "{text}"
        );
        assert_eq!(code, ExitCode::from(1), "{text}");

        let mut out = Vec::new();
        let code = status(&args(&addr, "json"), &mut out).expect("status");
        let json: StatusJson = serde_json::from_slice(&out).expect("json");
        assert_eq!(json.kv_store_unreachable, Some(unreachable));
        assert_eq!(json.shards[0].id, "a");
        assert_eq!(code, ExitCode::from(1));

        let err = status(&args(&addr, "table"), &mut Vec::new()).expect_err("503");
        let msg = err.to_string();
        assert!(
            msg.contains("HTTP 503") && msg.contains("has not read the ring"),
            "{msg}"
        );
        assert!(matches!(err, Error::Unavailable(_)), "exit 2: {err:?}");
    }
}
