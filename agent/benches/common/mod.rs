//! What several benchmarks share: a realistic 1,000-series exposition body (300 counter
//! series, 220 gauge series, a histogram family of 40 label sets x (10 buckets + sum + count),
//! five labels per series, HELP and TYPE lines, about 160 KB), the same bytes at every run.

/// The body; with `replica`, a `replica` label makes every counter series distinct.
pub fn exposition_body(replica: bool) -> String {
    let mut rng = agent::rng::Rng::with_seed(0x9e37_79b9_7f4a_7c15);
    let mut out = String::new();
    let instances = [
        "10.0.3.17:9100",
        "10.0.3.18:9100",
        "10.0.4.2:9100",
        "10.0.4.9:9100",
    ];
    let handlers = [
        "/api/v1/query",
        "/api/v1/query_range",
        "/api/v1/series",
        "/metrics",
        "/-/ready",
    ];
    let methods = ["GET", "POST"];
    let codes = ["200", "204", "400", "404", "500", "503"];

    out.push_str("# HELP http_requests_total Total number of HTTP requests by handler, method and status code.\n");
    out.push_str("# TYPE http_requests_total counter\n");
    for i in 0..300 {
        // The replica label makes every counter series distinct (the combinations of the
        // other labels repeat after 240 series).
        let replica = if replica {
            format!(",replica=\"{}\"", i / 240)
        } else {
            String::new()
        };
        out.push_str(&format!(
            "http_requests_total{{job=\"api-server\",instance=\"{}\",handler=\"{}\",method=\"{}\",code=\"{}\"{replica}}} {}\n",
            instances[i % 4],
            handlers[(i / 4) % 5],
            methods[(i / 20) % 2],
            codes[(i / 40) % 6],
            rng.below(10_000_000),
        ));
    }

    out.push_str("# HELP node_filesystem_avail_bytes Filesystem space available to non-root users in bytes.\n");
    out.push_str("# TYPE node_filesystem_avail_bytes gauge\n");
    let mounts = ["/", "/boot", "/var/lib/docker", "/home", "/srv/data"];
    let fstypes = ["ext4", "xfs", "overlay", "tmpfs"];
    for i in 0..220 {
        let avail = (rng.below(1 << 40) as f64) * 1.000_123;
        out.push_str(&format!(
            "node_filesystem_avail_bytes{{job=\"node\",instance=\"{}\",device=\"/dev/nvme{}n1p{}\",fstype=\"{}\",mountpoint=\"{}\"}} {:e}\n",
            instances[i % 4],
            i % 3,
            i % 11,
            fstypes[i % 4],
            mounts[(i / 4) % 5],
            avail,
        ));
    }

    out.push_str("# HELP http_request_duration_seconds Latency of HTTP requests in seconds.\n");
    out.push_str("# TYPE http_request_duration_seconds histogram\n");
    let bounds = [
        "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "+Inf",
    ];
    for i in 0..40 {
        let labels = format!(
            "job=\"api-server\",instance=\"{}\",handler=\"{}\",method=\"{}\"",
            instances[i % 4],
            handlers[(i / 4) % 5],
            methods[(i / 20) % 2],
        );
        let mut count = 0;
        for le in bounds {
            count += rng.below(5000);
            out.push_str(&format!(
                "http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {count}\n"
            ));
        }
        out.push_str(&format!(
            "http_request_duration_seconds_sum{{{labels},code=\"200\"}} {}.{:03}\n",
            count / 7,
            rng.below(1000)
        ));
        out.push_str(&format!(
            "http_request_duration_seconds_count{{{labels},code=\"200\"}} {count}\n"
        ));
    }
    out
}
