//! `dns_sd_configs`: every `refresh_interval` (default 30s) each name is looked up with the
//! configured record type and becomes one target group whose `source` is the name, as
//! Prometheus 2.42's `discovery/dns`:
//!
//! | type          | `__address__`                                   | set meta label                                     |
//! |---------------|-------------------------------------------------|----------------------------------------------------|
//! | `SRV` default | SRV target without its final dot `:` SRV port   | `__meta_dns_srv_record_target` (with the dot), `__meta_dns_srv_record_port` |
//! | `A`, `AAAA`   | address `:` `port` (IPv6 in brackets)           | —                                                  |
//! | `MX`          | exchange without the final dot `:` `port`       | `__meta_dns_mx_record_target` (with the dot)       |
//! | `NS`          | name server without the final dot `:` `port`    | `__meta_dns_ns_record_target` (with the dot)       |
//!
//! Every target carries `__meta_dns_name` (the name as configured) and all the other meta
//! labels, empty where they do not apply, as Prometheus does. (2.42 rejects `NS` and has no
//! `__meta_dns_ns_record_target`; both came later and are accepted here. An empty meta label
//! is the same as an absent one to relabelling, so the extra label changes nothing for
//! other types.) CNAME records in the answer are skipped; other record types are logged and
//! skipped.
//!
//! The lookup follows `/etc/resolv.conf` (name servers, `search`, `ndots`), re-read at every
//! refresh as Prometheus does, and does not consult `/etc/hosts`. NXDOMAIN and an empty
//! NOERROR answer are authoritative: the group becomes empty. Any other failure (timeout,
//! SERVFAIL, REFUSED, unreadable resolv.conf) is logged with the name and keeps that name's
//! previous group.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfigGroup, ResolveHosts, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::{ResolveError, TokioResolver};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{LabelSet, TargetGroup};
use crate::config::sd::DnsSdConfig;

const NAME_LABEL: &str = "__meta_dns_name";
const SRV_TARGET_LABEL: &str = "__meta_dns_srv_record_target";
const SRV_PORT_LABEL: &str = "__meta_dns_srv_record_port";
const MX_TARGET_LABEL: &str = "__meta_dns_mx_record_target";
const NS_TARGET_LABEL: &str = "__meta_dns_ns_record_target";

/// Where queries go.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Nameserver {
    /// `/etc/resolv.conf`, re-read at every refresh.
    System,
    /// One server over UDP (then TCP on truncation), no search list: tests point this at a
    /// local server.
    #[cfg_attr(not(test), allow(dead_code))]
    At(SocketAddr),
}

pub(crate) struct Provider {
    names: Vec<String>,
    record_type: RecordType,
    /// Used for every record type but SRV, whose records carry their own port.
    port: u16,
    refresh: Duration,
    nameserver: Nameserver,
}

/// Why one name's lookup gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LookupError {
    /// The message of the `ResolveError`, which every name of the refresh shares.
    #[error("could not load the resolver configuration (/etc/resolv.conf): {0}")]
    Config(String),
    #[error("could not resolve {name:?}: {source}")]
    Resolve {
        name: String,
        #[source]
        source: ResolveError,
    },
}

impl Provider {
    pub(crate) fn new(cfg: &DnsSdConfig, nameserver: Nameserver) -> Self {
        // The config was validated: the type is one of these, compared case-insensitively
        // as Prometheus does.
        let record_type = match cfg.record_type().to_ascii_uppercase().as_str() {
            "A" => RecordType::A,
            "AAAA" => RecordType::AAAA,
            "MX" => RecordType::MX,
            "NS" => RecordType::NS,
            _ => RecordType::SRV,
        };
        Provider {
            names: cfg.names.clone(),
            record_type,
            port: cfg.port.unwrap_or(0),
            refresh: cfg
                .refresh_interval
                .unwrap_or(DnsSdConfig::DEFAULT_REFRESH)
                .as_std(),
            nameserver,
        }
    }

    pub(crate) async fn run(
        self,
        slot: usize,
        tx: mpsc::Sender<(usize, Vec<TargetGroup>)>,
        shutdown: CancellationToken,
    ) {
        // One entry per configured name; `None` until its first successful lookup, so a name
        // that never resolved contributes no group (as in Prometheus, where the failed name
        // sends nothing and the group of that source stays as it was).
        let mut groups: Vec<Option<TargetGroup>> = vec![None; self.names.len()];
        loop {
            let results = self.refresh().await;
            for (slot_group, (name, result)) in groups.iter_mut().zip(results) {
                match result {
                    Ok(g) => *slot_group = Some(g),
                    Err(e) => {
                        tracing::error!(name = %name, error = %e, "dns_sd: lookup failed; keeping the previous targets of this name")
                    }
                }
            }
            let current: Vec<TargetGroup> = groups.iter().flatten().cloned().collect();
            if tx.send((slot, current)).await.is_err() {
                return;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.refresh) => {}
            }
        }
    }

    /// Every name's result when no resolver could be made.
    fn all_failed(&self, msg: &str) -> Vec<(&str, Result<TargetGroup, LookupError>)> {
        self.names
            .iter()
            .map(|n| (n.as_str(), Err(LookupError::Config(msg.to_owned()))))
            .collect()
    }

    /// Looks every name up once, concurrently, in configuration order.
    async fn refresh(&self) -> Vec<(&str, Result<TargetGroup, LookupError>)> {
        // Building the system resolver reads /etc/resolv.conf: off the async workers.
        let nameserver = self.nameserver;
        let built = tokio::task::spawn_blocking(move || resolver(nameserver)).await;
        let resolver = match built {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return self.all_failed(&e.to_string()),
            Err(e) => return self.all_failed(&format!("resolver setup failed: {e}")),
        };
        let lookups = self.names.iter().map(|name| {
            let resolver = &resolver;
            async move { (name.as_str(), self.lookup_one(resolver, name).await) }
        });
        join_all(lookups).await
    }

    async fn lookup_one(
        &self,
        resolver: &TokioResolver,
        name: &str,
    ) -> Result<TargetGroup, LookupError> {
        let records = match resolver.lookup(name, self.record_type).await {
            Ok(lookup) => lookup.records().to_vec(),
            Err(e) if is_authoritative_empty(&e) => Vec::new(),
            Err(source) => {
                return Err(LookupError::Resolve {
                    name: name.to_owned(),
                    source,
                })
            }
        };
        let mut targets = Vec::with_capacity(records.len());
        for record in &records {
            let (address, srv_target, srv_port, mx_target, ns_target) = match record.data() {
                RData::SRV(srv) => {
                    let target = srv.target().to_string();
                    (
                        join_host_port(target.trim_end_matches('.'), srv.port()),
                        target,
                        srv.port().to_string(),
                        String::new(),
                        String::new(),
                    )
                }
                RData::A(a) => (
                    join_host_port(&a.0.to_string(), self.port),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                ),
                RData::AAAA(a) => (
                    join_host_port(&a.0.to_string(), self.port),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                ),
                RData::MX(mx) => {
                    let target = mx.exchange().to_string();
                    (
                        join_host_port(target.trim_end_matches('.'), self.port),
                        String::new(),
                        String::new(),
                        target,
                        String::new(),
                    )
                }
                RData::NS(ns) => {
                    let target = ns.0.to_string();
                    (
                        join_host_port(target.trim_end_matches('.'), self.port),
                        String::new(),
                        String::new(),
                        String::new(),
                        target,
                    )
                }
                // Asking for A (or others) through an alias brings the CNAME along.
                RData::CNAME(_) => continue,
                other => {
                    tracing::warn!(name = %name, record = %other, "dns_sd: skipping a record of an unexpected type");
                    continue;
                }
            };
            targets.push(LabelSet::from([
                ("__address__".to_owned(), address),
                (NAME_LABEL.to_owned(), name.to_owned()),
                (SRV_TARGET_LABEL.to_owned(), srv_target),
                (SRV_PORT_LABEL.to_owned(), srv_port),
                (MX_TARGET_LABEL.to_owned(), mx_target),
                (NS_TARGET_LABEL.to_owned(), ns_target),
            ]));
        }
        Ok(TargetGroup {
            source: name.to_owned(),
            targets,
            labels: LabelSet::new(),
        })
    }
}

/// NXDOMAIN, or NOERROR with no records of the type: the name has no targets (Prometheus's
/// "valid response, possibly empty"). Any other response code says nothing about the name.
fn is_authoritative_empty(e: &ResolveError) -> bool {
    e.proto().is_some_and(|p| {
        matches!(
            p.kind(),
            ProtoErrorKind::NoRecordsFound {
                response_code: ResponseCode::NXDomain | ResponseCode::NoError,
                ..
            }
        )
    })
}

/// Go's `net.JoinHostPort`: brackets around hosts containing a colon (IPv6).
fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Runs the futures concurrently and returns their outputs in order (a few names per
/// config, so a `JoinSet` and its `'static` bounds are not worth it).
async fn join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pending: Vec<std::pin::Pin<Box<F>>> = futures.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (fut, slot) in pending.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// A fresh resolver per refresh: resolv.conf changes are picked up, and nothing is
/// cached between refreshes (Prometheus asks the servers every time).
fn resolver(nameserver: Nameserver) -> Result<TokioResolver, ResolveError> {
    let mut builder = match nameserver {
        Nameserver::System => TokioResolver::builder_tokio()?,
        Nameserver::At(addr) => TokioResolver::builder_with_config(
            ResolverConfig::from_parts(
                None,
                Vec::new(),
                NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true),
            ),
            TokioConnectionProvider::default(),
        ),
    };
    let opts = builder.options_mut();
    opts.use_hosts_file = ResolveHosts::Never;
    // Answers from the servers as they are; CNAMEs in them are skipped below.
    opts.preserve_intermediates = true;
    Ok(builder.build())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::str::FromStr;
    use std::sync::{Arc, Mutex};

    use hickory_resolver::proto::op::{Message, MessageType, OpCode, ResponseCode};
    use hickory_resolver::proto::rr::rdata::{A, AAAA, MX, NS, SRV};
    use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
    use tokio::net::UdpSocket;
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    use super::{Nameserver, Provider};
    use crate::config::duration::PromDuration;
    use crate::config::sd::DnsSdConfig;
    use crate::discovery::{LabelSet, TargetGroup};

    /// What the test server answers for a (lower-case FQDN, type); a name listed with
    /// `Err(code)` gets that response code and no answer; an unknown name gets NXDOMAIN.
    type Zone = Arc<Mutex<HashMap<(String, RecordType), Result<Vec<RData>, ResponseCode>>>>;

    /// A one-socket authoritative DNS server on 127.0.0.1 answering from `zone`.
    async fn dns_server(zone: Zone, shutdown: CancellationToken) -> std::net::SocketAddr {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let (n, peer) = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = sock.recv_from(&mut buf) => r.unwrap(),
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let Some(q) = query.queries().first().cloned() else {
                    continue;
                };
                let mut resp = Message::new();
                resp.set_id(query.id())
                    .set_message_type(MessageType::Response)
                    .set_op_code(OpCode::Query)
                    .set_recursion_desired(query.recursion_desired())
                    .set_recursion_available(true)
                    .set_authoritative(true)
                    .add_query(q.clone());
                let name = q.name().to_lowercase().to_string();
                let answer = zone.lock().unwrap().get(&(name, q.query_type())).cloned();
                match answer {
                    Some(Ok(rdatas)) => {
                        for rd in rdatas {
                            resp.add_answer(Record::from_rdata(q.name().clone(), 0, rd));
                        }
                    }
                    Some(Err(code)) => {
                        resp.set_response_code(code);
                    }
                    None => {
                        resp.set_response_code(ResponseCode::NXDomain);
                    }
                }
                let bytes = resp.to_vec().unwrap();
                let _ = sock.send_to(&bytes, peer).await;
            }
        });
        addr
    }

    fn name(s: &str) -> Name {
        Name::from_str(s).unwrap()
    }

    fn target(pairs: &[(&str, &str)]) -> LabelSet {
        let mut l: LabelSet = [
            "__meta_dns_srv_record_target",
            "__meta_dns_srv_record_port",
            "__meta_dns_mx_record_target",
            "__meta_dns_ns_record_target",
        ]
        .iter()
        .map(|k| ((*k).to_owned(), String::new()))
        .collect();
        for (k, v) in pairs {
            l.insert((*k).to_owned(), (*v).to_owned());
        }
        l
    }

    fn cfg(names: &[&str], kind: &str, port: Option<u16>) -> DnsSdConfig {
        DnsSdConfig {
            names: names.iter().map(|s| (*s).to_owned()).collect(),
            refresh_interval: Some(PromDuration::from_millis(200)),
            kind: Some(kind.to_owned()),
            port,
        }
    }

    async fn next(rx: &mut mpsc::Receiver<(usize, Vec<TargetGroup>)>) -> Vec<TargetGroup> {
        let (slot, groups) = tokio::time::timeout(std::time::Duration::from_secs(20), rx.recv())
            .await
            .expect("no update within 20s")
            .expect("provider stopped");
        assert_eq!(slot, 3);
        groups
    }

    #[tokio::test]
    async fn srv_targets_meta_labels_and_refresh() {
        let zone: Zone = Arc::default();
        let srv_name = "_metrics._tcp.example.test.";
        zone.lock().unwrap().insert(
            (srv_name.to_owned(), RecordType::SRV),
            Ok(vec![
                RData::SRV(SRV::new(0, 0, 9100, name("node-a.example.test."))),
                RData::SRV(SRV::new(0, 0, 9200, name("node-b.example.test."))),
            ]),
        );
        let stop = CancellationToken::new();
        let server = dns_server(zone.clone(), stop.clone()).await;
        let (tx, mut rx) = mpsc::channel(4);
        let provider = Provider::new(
            &cfg(&[srv_name, "missing.example.test."], "srv", None),
            Nameserver::At(server),
        );
        tokio::spawn(provider.run(3, tx, stop.clone()));

        let groups = next(&mut rx).await;
        assert_eq!(
            groups,
            vec![
                TargetGroup {
                    source: srv_name.to_owned(),
                    targets: vec![
                        target(&[
                            ("__address__", "node-a.example.test:9100"),
                            ("__meta_dns_name", srv_name),
                            ("__meta_dns_srv_record_target", "node-a.example.test."),
                            ("__meta_dns_srv_record_port", "9100"),
                        ]),
                        target(&[
                            ("__address__", "node-b.example.test:9200"),
                            ("__meta_dns_name", srv_name),
                            ("__meta_dns_srv_record_target", "node-b.example.test."),
                            ("__meta_dns_srv_record_port", "9200"),
                        ]),
                    ],
                    labels: LabelSet::new(),
                },
                // NXDOMAIN is an answer: the name's group is there, empty.
                TargetGroup {
                    source: "missing.example.test.".to_owned(),
                    targets: vec![],
                    labels: LabelSet::new(),
                },
            ]
        );

        // A changed answer shows at a following refresh.
        zone.lock().unwrap().insert(
            (srv_name.to_owned(), RecordType::SRV),
            Ok(vec![RData::SRV(SRV::new(
                0,
                0,
                9300,
                name("node-c.example.test."),
            ))]),
        );
        let changed = loop {
            let g = next(&mut rx).await;
            if g[0].targets.len() == 1 {
                break g;
            }
        };
        assert_eq!(
            changed[0].targets,
            vec![target(&[
                ("__address__", "node-c.example.test:9300"),
                ("__meta_dns_name", srv_name),
                ("__meta_dns_srv_record_target", "node-c.example.test."),
                ("__meta_dns_srv_record_port", "9300"),
            ])]
        );

        // A failing server keeps the previous targets of that name.
        zone.lock().unwrap().insert(
            (srv_name.to_owned(), RecordType::SRV),
            Err(ResponseCode::ServFail),
        );
        for _ in 0..3 {
            assert_eq!(next(&mut rx).await, changed);
        }
        stop.cancel();
    }

    #[tokio::test]
    async fn a_aaaa_mx_ns_use_the_configured_port() {
        let zone: Zone = Arc::default();
        {
            let mut z = zone.lock().unwrap();
            z.insert(
                ("hosts.example.test.".to_owned(), RecordType::A),
                Ok(vec![
                    RData::A(A(Ipv4Addr::new(10, 0, 0, 1))),
                    RData::A(A(Ipv4Addr::new(10, 0, 0, 2))),
                ]),
            );
            z.insert(
                ("hosts.example.test.".to_owned(), RecordType::AAAA),
                Ok(vec![RData::AAAA(AAAA(Ipv6Addr::LOCALHOST))]),
            );
            z.insert(
                ("example.test.".to_owned(), RecordType::MX),
                Ok(vec![RData::MX(MX::new(10, name("mail.example.test.")))]),
            );
            z.insert(
                ("example.test.".to_owned(), RecordType::NS),
                Ok(vec![RData::NS(NS(name("ns1.example.test.")))]),
            );
        }
        let stop = CancellationToken::new();
        let server = dns_server(zone.clone(), stop.clone()).await;
        let run = |c: DnsSdConfig| {
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(Provider::new(&c, Nameserver::At(server)).run(3, tx, stop.clone()));
            rx
        };
        let mut a = run(cfg(&["hosts.example.test."], "A", Some(9100)));
        let mut aaaa = run(cfg(&["hosts.example.test."], "AAAA", Some(9100)));
        let mut mx = run(cfg(&["example.test."], "MX", Some(25)));
        let mut ns = run(cfg(&["example.test."], "NS", Some(53)));

        let hosts = "hosts.example.test.";
        assert_eq!(
            next(&mut a).await[0].targets,
            vec![
                target(&[("__address__", "10.0.0.1:9100"), ("__meta_dns_name", hosts)]),
                target(&[("__address__", "10.0.0.2:9100"), ("__meta_dns_name", hosts)]),
            ]
        );
        assert_eq!(
            next(&mut aaaa).await[0].targets,
            vec![target(&[
                ("__address__", "[::1]:9100"),
                ("__meta_dns_name", hosts)
            ])]
        );
        assert_eq!(
            next(&mut mx).await[0].targets,
            vec![target(&[
                ("__address__", "mail.example.test:25"),
                ("__meta_dns_name", "example.test."),
                ("__meta_dns_mx_record_target", "mail.example.test."),
            ])]
        );
        assert_eq!(
            next(&mut ns).await[0].targets,
            vec![target(&[
                ("__address__", "ns1.example.test:53"),
                ("__meta_dns_name", "example.test."),
                ("__meta_dns_ns_record_target", "ns1.example.test."),
            ])]
        );
        stop.cancel();
    }

    /// Through `discovery::start`: a scrape config's dns_sd runs next to its static targets,
    /// and the type is case-insensitive as in Prometheus.
    #[tokio::test]
    async fn scrape_config_dns_sd_is_started_with_the_other_providers() {
        let zone: Zone = Arc::default();
        zone.lock().unwrap().insert(
            ("api.example.test.".to_owned(), RecordType::A),
            Ok(vec![RData::A(A(Ipv4Addr::new(10, 1, 2, 3)))]),
        );
        let stop = CancellationToken::new();
        let server = dns_server(zone, stop.clone()).await;
        let yaml = "scrape_configs:\n  - job_name: j\n    static_configs:\n      - targets: ['s:1']\n    dns_sd_configs:\n      - names: ['api.example.test.']\n        type: a\n        port: 8080\n";
        let (_, instance) =
            crate::config::load::parse_instance(yaml, &crate::config::GlobalConfig::default())
                .unwrap();
        let mut rx = crate::discovery::start_with(
            &instance.scrape_configs[0],
            None,
            stop.clone(),
            Nameserver::At(server),
        )
        .unwrap()
        .targets;
        let groups = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            rx.wait_for(|g| g.len() == 2),
        )
        .await
        .expect("dns group within 20s")
        .unwrap()
        .clone();
        assert_eq!(groups[0].targets[0]["__address__"], "s:1");
        assert_eq!(groups[1].source, "api.example.test.");
        assert_eq!(groups[1].targets[0]["__address__"], "10.1.2.3:8080");
        stop.cancel();
    }

    #[test]
    fn brackets_ipv6_hosts() {
        assert_eq!(super::join_host_port("::1", 80), "[::1]:80");
        assert_eq!(super::join_host_port("10.0.0.1", 80), "10.0.0.1:80");
        assert_eq!(super::join_host_port("a.example", 80), "a.example:80");
    }
}
