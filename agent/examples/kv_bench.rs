//! Times 1,000 config puts into the embedded store (each one a CAS and an fsync'ed redb
//! commit), then a reopen and a full read-back. Not a test: run it and read the numbers.
//!
//! `cargo run -p agentctl-agent --example kv_bench [--release]`

use std::sync::Arc;
use std::time::Instant;

use agent::kv::configstore::ConfigStore;
use agent::kv::{EmbeddedStore, KvStore};

const N: usize = 1000;

fn config(i: usize) -> String {
    format!(
        "scrape_configs:\n- job_name: job-{i}\n  static_configs:\n  - targets: ['host-{i}:9100']\n    labels: {{team: t{}}}\nremote_write:\n- url: http://cortex:9009/api/v1/push\n",
        i % 17
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("kv");

    let kv: Arc<dyn KvStore> = Arc::new(EmbeddedStore::open(path.clone()).await?);
    let store = ConfigStore::new(Arc::clone(&kv));
    let started = Instant::now();
    for i in 0..N {
        store.put(&format!("cfg-{i:04}"), &config(i)).await?;
    }
    let put = started.elapsed();
    drop(store);
    drop(kv);

    let started = Instant::now();
    let kv: Arc<dyn KvStore> = Arc::new(EmbeddedStore::open(path).await?);
    let all = ConfigStore::new(kv).all().await?;
    let reopen = started.elapsed();
    assert_eq!(all.len(), N, "every config survives the reopen");

    println!(
        "embedded store: {N} config puts in {:.3} s ({:.2} ms each); reopen + read all {N} in {:.3} s",
        put.as_secs_f64(),
        put.as_secs_f64() * 1000.0 / N as f64,
        reopen.as_secs_f64()
    );
    Ok(())
}
