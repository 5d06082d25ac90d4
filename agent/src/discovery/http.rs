//! `http_sd_configs`: a JSON list of target groups fetched from a URL every
//! `refresh_interval`, as Prometheus's HTTP SD: `200` with `Content-Type: application/json`
//! required, each group labelled `__meta_url`. On a failed refresh the previous targets stay.

use std::path::Path;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{TargetGroup, TargetGroupDoc};
use crate::config::sd::HttpSd;
use crate::httpclient::{self, HttpClient};

pub(crate) struct Provider {
    url: String,
    shown_url: String,
    refresh: Duration,
    client: HttpClient,
}

impl Provider {
    pub(crate) fn new(cfg: &HttpSd, base_dir: Option<&Path>) -> Result<Self, httpclient::Error> {
        let refresh = cfg.refresh_interval.as_std();
        let client = HttpClient::new(
            &cfg.http_client,
            &httpclient::Options {
                timeout: Some(refresh.max(Duration::from_secs(1))),
                base_dir: base_dir.map(Path::to_path_buf),
                gzip: true,
                user_agent: Some(format!("agentctl/{}", env!("CARGO_PKG_VERSION"))),
                ..Default::default()
            },
        )?;
        let url = cfg.url.as_url().to_string();
        let shown_url = cfg.url.redacted();
        Ok(Provider {
            url,
            shown_url,
            refresh,
            client,
        })
    }

    pub(crate) async fn run(
        self,
        slot: usize,
        tx: mpsc::Sender<(usize, Vec<TargetGroup>)>,
        shutdown: CancellationToken,
    ) {
        loop {
            match self.fetch().await {
                Ok(groups) => {
                    if tx.send((slot, groups)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!(url = %self.shown_url, error = %e, "http_sd: refresh failed; keeping the previous targets")
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.refresh) => {}
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<TargetGroup>, String> {
        let rb = self
            .client
            .get(&self.url)
            .header("Accept", "application/json")
            .header(
                "X-Prometheus-Refresh-Interval-Seconds",
                self.refresh.as_secs().to_string(),
            );
        let resp = self.client.send(rb).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        if status != reqwest::StatusCode::OK {
            return Err(format!("server returned HTTP status {status}"));
        }
        let ct = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let ct_ok = ct.strip_prefix("application/json").is_some_and(|rest| {
            rest.is_empty() || rest.trim_start_matches(';').trim() == "charset=utf-8" || rest == ";"
        });
        if !ct_ok {
            return Err(format!("unsupported content type {ct:?}"));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| httpclient::error_chain(&e.without_url()))?;
        parse(&body, &self.shown_url)
    }
}

/// Parses an http_sd body.
pub fn parse(body: &[u8], url: &str) -> Result<Vec<TargetGroup>, String> {
    let docs: Vec<Option<TargetGroupDoc>> =
        serde_json::from_slice(body).map_err(|e| e.to_string())?;
    docs.into_iter()
        .enumerate()
        .map(|(i, d)| {
            let d = d.ok_or_else(|| format!("nil target group item found (index {i})"))?;
            d.into_group(format!("{url}:{i}"), ("__meta_url", url))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_groups_with_url_label() {
        let g = super::parse(
            br#"[{"targets":["a:1"],"labels":{"x":"y"}},{"targets":[]}]"#,
            "http://sd/",
        )
        .unwrap();
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].labels["__meta_url"], "http://sd/");
        assert_eq!(g[1].source, "http://sd/:1");
        assert!(super::parse(b"{}", "u").is_err());
        assert!(super::parse(b"[null]", "u")
            .unwrap_err()
            .contains("nil target group"));
    }
}
