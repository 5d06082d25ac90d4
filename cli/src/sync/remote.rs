//! Where configs are stored: an agent's API, or the KV store itself (`--kv`). Both are seen
//! through the same content hashes: the MD5 of the stored YAML.

use std::collections::BTreeMap;

use agent::config::load::parse_strict;
use agent::config::InstanceConfigRaw;
use agent::kv::configstore::{content_hash, ConfigStore, ConfigStoreError, PutOutcome};
use agent::kv::KvSpec;

use super::local::LocalConfig;
use super::SyncError;
use crate::args::TargetArgs;
use crate::client::{ApiClient, ClientError};

/// What a command does to the store: an embedded store (`--kv embedded:PATH`) that does not
/// exist yet is created only to be written to; a read finds nothing there (a mistyped path
/// would otherwise create a new, empty store and report it as such).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// The config store the tools talk to.
#[derive(Debug)]
pub enum Remote {
    Api(ApiClient),
    /// `--kv`: the store itself. Writes skip the agent's API (and its metrics and token), so
    /// the local validation is all the validation there is.
    Kv {
        store: ConfigStore,
        spec: String,
    },
}

impl Remote {
    /// The target the flags name: `--kv` when given, else `--addr` (with `--token-file`).
    /// `err` hears that a new embedded store was created (see [`Access`]).
    pub async fn connect(
        target: &TargetArgs,
        access: Access,
        err: &mut dyn std::io::Write,
    ) -> Result<Remote, SyncError> {
        if let Some(spec) = &target.kv {
            let parsed: KvSpec = crate::client::kv_spec(spec, &target.tls, &target.kv_auth)
                .map_err(SyncError::Usage)?;
            if let KvSpec::Embedded(dir) = &parsed {
                let store_err = |message| SyncError::Store {
                    target: parsed.to_string(),
                    message,
                };
                if crate::client::embedded_store_missing(dir).map_err(store_err)? {
                    if access == Access::Read {
                        return Err(store_err(crate::client::no_embedded_store_message()));
                    }
                    let _ = writeln!(
                        err,
                        "note: {} holds no embedded KV store; creating a new one",
                        dir.display()
                    );
                }
            }
            let kv = agent::kv::connect(&parsed)
                .await
                .map_err(|e| SyncError::Store {
                    target: parsed.to_string(),
                    message: e.to_string(),
                })?;
            return Ok(Remote::Kv {
                store: ConfigStore::new(kv),
                spec: parsed.to_string(),
            });
        }
        let token = match &target.token_file {
            Some(path) => {
                let t = std::fs::read_to_string(path).map_err(|e| {
                    SyncError::Usage(format!("cannot read --token-file {}: {e}", path.display()))
                })?;
                let t = t.trim().to_owned();
                if t.is_empty() {
                    return Err(SyncError::Usage(format!(
                        "--token-file {} is empty",
                        path.display()
                    )));
                }
                Some(t)
            }
            None => None,
        };
        Ok(Remote::Api(ApiClient::new(
            &target.addr,
            token,
            &target.tls,
        )?))
    }

    /// The agent's URL or the store's spec, for messages.
    pub fn describe(&self) -> String {
        match self {
            Remote::Api(c) => c.base().to_owned(),
            Remote::Kv { spec, .. } => spec.clone(),
        }
    }

    fn store_err(&self, e: ConfigStoreError) -> SyncError {
        SyncError::Store {
            target: self.describe(),
            message: e.to_string(),
        }
    }

    /// Every stored config's content hash.
    pub async fn hashes(&self) -> Result<BTreeMap<String, String>, SyncError> {
        match self {
            Remote::Api(c) => Ok(c.hashes().await?),
            Remote::Kv { store, .. } => Ok(store
                .all()
                .await
                .map_err(|e| self.store_err(e))?
                .into_iter()
                .map(|(n, y)| {
                    let h = content_hash(&y);
                    (n, h)
                })
                .collect()),
        }
    }

    /// Config `name` with secrets shown as `<secret>`; `None` when it does not exist.
    pub async fn get_redacted(&self, name: &str) -> Result<Option<String>, SyncError> {
        match self {
            Remote::Api(c) => match c.get(name).await {
                Ok((y, _)) => Ok(Some(y)),
                Err(ClientError::NotFound { .. }) => Ok(None),
                Err(e) => Err(e.into()),
            },
            Remote::Kv { store, .. } => {
                let Some(yaml) = store.get(name).await.map_err(|e| self.store_err(e))? else {
                    return Ok(None);
                };
                // Never show the stored text itself: it holds the secrets in clear.
                let raw: InstanceConfigRaw =
                    parse_strict(&yaml, "an instance config").map_err(|e| SyncError::Store {
                        target: self.describe(),
                        message: format!(
                            "config {name} in the store does not parse: {}",
                            e.message
                        ),
                    })?;
                raw.to_yaml(false).map(Some).map_err(|e| SyncError::Store {
                    target: self.describe(),
                    message: format!("cannot render config {name}: {e}"),
                })
            }
        }
    }

    /// Writes `cfg` (`if_match` as in [`ApiClient::put`]). Through the API the file's own text
    /// is sent; into the KV goes the form the API would have stored.
    pub async fn put(
        &self,
        cfg: &LocalConfig,
        if_match: Option<&str>,
    ) -> Result<PutOutcome, SyncError> {
        match self {
            Remote::Api(c) => Ok(c.put(&cfg.name, &cfg.text, if_match).await?),
            Remote::Kv { store, .. } => store
                .put_if(&cfg.name, &cfg.stored, if_match)
                .await
                .map_err(|e| self.kv_write_err(e)),
        }
    }

    pub async fn delete(&self, name: &str, if_match: Option<&str>) -> Result<(), SyncError> {
        match self {
            Remote::Api(c) => Ok(c.delete(name, if_match).await?),
            Remote::Kv { store, .. } => store
                .delete_if(name, if_match)
                .await
                .map_err(|e| self.kv_write_err(e)),
        }
    }

    fn kv_write_err(&self, e: ConfigStoreError) -> SyncError {
        match e {
            ConfigStoreError::PreconditionFailed { name, .. } => {
                SyncError::Client(ClientError::Conflict {
                    message: format!("configuration {name} changed in {}", self.describe()),
                    name,
                    after_retry: false,
                })
            }
            ConfigStoreError::NotExist { name } => {
                SyncError::Client(ClientError::NotFound { name })
            }
            e @ ConfigStoreError::NotUnique { .. } => SyncError::Rejected(e.to_string()),
            e => self.store_err(e),
        }
    }
}
