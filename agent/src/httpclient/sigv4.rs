//! AWS Signature Version 4 for remote_write's `sigv4` (Amazon Managed Service for Prometheus:
//! service `aps`), as Prometheus's sigv4 round tripper signs.
//!
//! Each request is signed when it is sent: `Host`, `X-Amz-Date`, `X-Amz-Security-Token` (with
//! temporary credentials) and every header the request carries except `Authorization`,
//! `User-Agent` and `Expect` are signed, with the SHA-256 of the body. The path is
//! URI-encoded twice (every service but S3), the query sorted.
//!
//! Credentials and region, first found wins (the AWS SDK's default chain, without what needs
//! AWS's network services):
//! 1. `access_key` / `secret_key` of the block;
//! 2. without a `profile` in the block: `AWS_ACCESS_KEY_ID` (or `AWS_ACCESS_KEY`),
//!    `AWS_SECRET_ACCESS_KEY` (or `AWS_SECRET_KEY`) and `AWS_SESSION_TOKEN`;
//! 3. the profile (`profile`, else `AWS_PROFILE`, else `default`) of the shared credentials
//!    file (`AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`), then of the config file
//!    (`AWS_CONFIG_FILE`, else `~/.aws/config`).
//!
//! The region: `region`, else `AWS_REGION`, else `AWS_DEFAULT_REGION`, else the profile's
//! `region` in the config file. The environment and the files are read at each request, so
//! rotated credentials are used without a restart. Not supported (an error says so): `role_arn`
//! (STS AssumeRole), the EC2 and ECS metadata services, SSO and `credential_process`.

use std::path::PathBuf;

use crate::config::http::SigV4Settings;
use crate::config::secret::Secret;

/// The service remote_write signs for.
pub const SERVICE: &str = "aps";

/// Why a request could not be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigV4Error {
    #[error("sigv4: region not configured in sigv4 or in default credentials chain (AWS_REGION, AWS_DEFAULT_REGION, the profile's region in {config_file})")]
    NoRegion { config_file: String },
    #[error("sigv4: no AWS credentials: none in the sigv4 block, {env}profile {profile:?} is not in {credentials_file} or {config_file} (the EC2/ECS metadata services, SSO and credential_process are not supported by agentctl)")]
    NoCredentials {
        env: &'static str,
        profile: String,
        credentials_file: String,
        config_file: String,
    },
    #[error("sigv4: the request body is a stream and cannot be signed")]
    StreamingBody,
}

/// One set of AWS credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key: String,
    pub secret_key: Secret,
    pub session_token: Option<Secret>,
}

/// Signs requests for one `sigv4` block.
#[derive(Debug, Clone)]
pub struct Signer {
    settings: SigV4Settings,
    env: fn(&str) -> Option<String>,
}

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Signer {
    pub fn new(settings: &SigV4Settings) -> Signer {
        Signer {
            settings: settings.clone(),
            env: process_env,
        }
    }

    #[cfg(test)]
    fn with_env(settings: &SigV4Settings, env: fn(&str) -> Option<String>) -> Signer {
        Signer {
            settings: settings.clone(),
            env,
        }
    }

    fn files(&self) -> (PathBuf, PathBuf) {
        let home = (self.env)("HOME").unwrap_or_default();
        let aws = PathBuf::from(home).join(".aws");
        (
            (self.env)("AWS_SHARED_CREDENTIALS_FILE")
                .map(PathBuf::from)
                .unwrap_or_else(|| aws.join("credentials")),
            (self.env)("AWS_CONFIG_FILE")
                .map(PathBuf::from)
                .unwrap_or_else(|| aws.join("config")),
        )
    }

    /// The credentials and region to sign with now.
    pub async fn resolve(&self) -> Result<(Credentials, String), SigV4Error> {
        let s = &self.settings;
        let env = self.env;
        let profile = s
            .profile
            .clone()
            .or_else(|| env("AWS_PROFILE"))
            .unwrap_or_else(|| "default".into());
        let (credentials_file, config_file) = self.files();
        // The files are small; a missing one is no error.
        let read =
            |p: PathBuf| async move { tokio::fs::read_to_string(p).await.unwrap_or_default() };
        let credentials_ini = read(credentials_file.clone()).await;
        let config_ini = read(config_file.clone()).await;
        let config_section = if profile == "default" {
            "default".to_owned()
        } else {
            format!("profile {profile}")
        };
        let region = s
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .or_else(|| ini_value(&config_ini, &config_section, "region"))
            .ok_or_else(|| SigV4Error::NoRegion {
                config_file: config_file.display().to_string(),
            })?;
        if let Some((access_key, secret_key)) = &s.keys {
            return Ok((
                Credentials {
                    access_key: access_key.clone(),
                    secret_key: secret_key.clone(),
                    session_token: None,
                },
                region,
            ));
        }
        if s.profile.is_none() {
            let ak = env("AWS_ACCESS_KEY_ID").or_else(|| env("AWS_ACCESS_KEY"));
            let sk = env("AWS_SECRET_ACCESS_KEY").or_else(|| env("AWS_SECRET_KEY"));
            if let (Some(access_key), Some(sk)) = (ak, sk) {
                return Ok((
                    Credentials {
                        access_key,
                        secret_key: Secret::new(sk),
                        session_token: env("AWS_SESSION_TOKEN").map(Secret::new),
                    },
                    region,
                ));
            }
        }
        for (ini, section) in [
            (&credentials_ini, profile.as_str()),
            (&config_ini, &config_section),
        ] {
            let get = |k| ini_value(ini, section, k);
            if let (Some(access_key), Some(sk)) =
                (get("aws_access_key_id"), get("aws_secret_access_key"))
            {
                return Ok((
                    Credentials {
                        access_key,
                        secret_key: Secret::new(sk),
                        session_token: get("aws_session_token").map(Secret::new),
                    },
                    region,
                ));
            }
        }
        Err(SigV4Error::NoCredentials {
            env: if s.profile.is_none() {
                "none in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), "
            } else {
                ""
            },
            profile,
            credentials_file: credentials_file.display().to_string(),
            config_file: config_file.display().to_string(),
        })
    }

    /// Signs `req` for [`SERVICE`] now.
    pub async fn sign(&self, req: &mut reqwest::Request) -> Result<(), SigV4Error> {
        let (creds, region) = self.resolve().await?;
        let now = crate::clock::Clock::system().unix_secs().max(0) as u64;
        sign(req, &creds, &region, SERVICE, now)
    }
}

/// The value of `key` in `[section]` of an INI file (the AWS shared files' format).
fn ini_value(ini: &str, section: &str, key: &str) -> Option<String> {
    let mut current = None;
    for line in ini.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.trim().to_owned());
            continue;
        }
        if current.as_deref() != Some(section) {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            if k.trim() == key {
                return Some(v.trim().to_owned()).filter(|v| !v.is_empty());
            }
        }
    }
    None
}

/// URI-encodes every byte but the unreserved ones (and `/` when `keep_slash`), upper-case hex.
fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, data))
}

fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::sign(&key, msg).as_ref().to_vec()
}

/// `YYYYMMDDTHHMMSSZ` of a Unix time.
fn amz_date(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    let (y, m, d) = crate::clock::civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Headers never signed (they may change on the way).
const UNSIGNED: [&str; 4] = ["authorization", "user-agent", "expect", "x-amzn-trace-id"];

/// Signs `req` at `unix_secs`: adds `X-Amz-Date`, `X-Amz-Security-Token` (temporary
/// credentials) and `Authorization`.
pub fn sign(
    req: &mut reqwest::Request,
    creds: &Credentials,
    region: &str,
    service: &str,
    unix_secs: u64,
) -> Result<(), SigV4Error> {
    use reqwest::header::{HeaderName, HeaderValue};
    let date_time = amz_date(unix_secs);
    let date = &date_time[..8];
    let body: &[u8] = match req.body() {
        None => b"",
        Some(b) => b.as_bytes().ok_or(SigV4Error::StreamingBody)?,
    };
    let payload_hash = sha256_hex(body);
    let headers = req.headers_mut();
    headers.remove("authorization");
    headers.insert(
        HeaderName::from_static("x-amz-date"),
        HeaderValue::from_str(&date_time).expect("ASCII"),
    );
    if let Some(token) = &creds.session_token {
        if let Ok(v) = HeaderValue::from_str(token.expose()) {
            headers.insert(HeaderName::from_static("x-amz-security-token"), v);
        }
    }
    let url = req.url();
    let host = match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        (None, _) => String::new(),
    };
    // Name -> values, sorted by name.
    let mut canonical: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    canonical.insert("host".into(), vec![host]);
    for (name, value) in req.headers() {
        let name = name.as_str().to_ascii_lowercase();
        if UNSIGNED.contains(&name.as_str()) || name == "host" {
            continue;
        }
        let value = String::from_utf8_lossy(value.as_bytes());
        let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
        canonical.entry(name).or_default().push(value);
    }
    let signed_headers = canonical.keys().cloned().collect::<Vec<_>>().join(";");
    let canonical_headers: String = canonical
        .iter()
        .map(|(k, v)| format!("{k}:{}\n", v.join(",")))
        .collect();
    let path = match url.path() {
        "" => "/".to_owned(),
        p => uri_encode(p, true),
    };
    let mut query: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| (uri_encode(&k, false), uri_encode(&v, false)))
        .collect();
    query.sort();
    let query = query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let canonical_request = format!(
        "{}\n{path}\n{query}\n{canonical_headers}\n{signed_headers}\n{payload_hash}",
        req.method().as_str()
    );
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{date_time}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    );
    let key = [date, region, service, "aws4_request"].iter().fold(
        format!("AWS4{}", creds.secret_key.expose()).into_bytes(),
        |key, part| hmac(&key, part.as_bytes()),
    );
    let signature = hex::encode(hmac(&key, string_to_sign.as_bytes()));
    let authorization = format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
        creds.access_key
    );
    let v = HeaderValue::from_str(&authorization).map_err(|_| SigV4Error::NoCredentials {
        env: "",
        profile: String::new(),
        credentials_file: "the access key is not a valid header value".into(),
        config_file: String::new(),
    })?;
    req.headers_mut().insert(reqwest::header::AUTHORIZATION, v);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Credentials {
        Credentials {
            access_key: "AKIDEXAMPLE".into(),
            secret_key: Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            session_token: None,
        }
    }

    /// 2015-08-30T12:36:00Z, the time of the AWS SigV4 test suite.
    const SUITE_TIME: u64 = 1_440_938_160;

    fn signed(
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        service: &str,
    ) -> (String, String) {
        let mut req = reqwest::Request::new(method.parse().unwrap(), url.parse().unwrap());
        for (k, v) in headers {
            req.headers_mut().insert(
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        sign(&mut req, &example(), "us-east-1", service, SUITE_TIME).unwrap();
        let auth = req.headers()["authorization"].to_str().unwrap().to_owned();
        let date = req.headers()["x-amz-date"].to_str().unwrap().to_owned();
        (auth, date)
    }

    /// Known answers of the AWS Signature Version 4 test suite (`get-vanilla`, `post-vanilla`,
    /// `get-vanilla-query-order-key-case`) and of AWS's documentation example (IAM
    /// `ListUsers`); botocore computes the same signatures (tests/sigv4.rs checks live requests
    /// with it).
    #[test]
    fn aws_test_suite_vectors() {
        let cases = [
            (
                "GET",
                "https://example.amazonaws.com/",
                &[][..],
                "service",
                "host;x-amz-date",
                "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            ),
            (
                "POST",
                "https://example.amazonaws.com/",
                &[],
                "service",
                "host;x-amz-date",
                "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
            ),
            (
                "GET",
                "https://example.amazonaws.com/?Param2=value2&Param1=value1",
                &[],
                "service",
                "host;x-amz-date",
                "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
            ),
            (
                "GET",
                "https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08",
                &[(
                    "Content-Type",
                    "application/x-www-form-urlencoded; charset=utf-8",
                )],
                "iam",
                "content-type;host;x-amz-date",
                "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7",
            ),
        ];
        for (method, url, headers, service, signed_headers, signature) in cases {
            let (auth, date) = signed(method, url, headers, service);
            assert_eq!(date, "20150830T123600Z");
            assert_eq!(
                auth,
                format!(
                    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/{service}/aws4_request, SignedHeaders={signed_headers}, Signature={signature}"
                ),
                "{method} {url}"
            );
        }
    }

    #[test]
    fn a_session_token_is_sent_and_signed() {
        let mut req = reqwest::Request::new(
            reqwest::Method::POST,
            "http://127.0.0.1:9/api/v1/remote_write".parse().unwrap(),
        );
        let creds = Credentials {
            session_token: Some(Secret::new("token")),
            ..example()
        };
        sign(&mut req, &creds, "eu-west-1", SERVICE, SUITE_TIME).unwrap();
        assert_eq!(req.headers()["x-amz-security-token"], "token");
        let auth = req.headers()["authorization"].to_str().unwrap();
        assert!(
            auth.contains(
                "/eu-west-1/aps/aws4_request, SignedHeaders=host;x-amz-date;x-amz-security-token, "
            ),
            "{auth}"
        );
    }

    #[test]
    fn credentials_and_region_come_from_the_block_the_environment_or_the_files() {
        let dir = std::env::temp_dir().join(format!("agentctl-sigv4-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("credentials"),
            "[default]\naws_access_key_id = FILEDEFAULT\naws_secret_access_key = s1\n\n[team]\naws_access_key_id=FILETEAM\naws_secret_access_key=s2\naws_session_token=t2\n",
        )
        .unwrap();
        std::fs::write(dir.join("config"), "[profile team]\nregion = ap-south-1\n").unwrap();
        fn env(name: &str) -> Option<String> {
            let dir = std::env::temp_dir().join(format!("agentctl-sigv4-{}", std::process::id()));
            match name {
                "AWS_SHARED_CREDENTIALS_FILE" => {
                    Some(dir.join("credentials").display().to_string())
                }
                "AWS_CONFIG_FILE" => Some(dir.join("config").display().to_string()),
                "AWS_ACCESS_KEY_ID" => Some("ENVKEY".into()),
                "AWS_SECRET_ACCESS_KEY" => Some("envsecret".into()),
                "AWS_REGION" => Some("us-west-2".into()),
                _ => None,
            }
        }
        fn no_env(name: &str) -> Option<String> {
            match name {
                "AWS_SHARED_CREDENTIALS_FILE" => Some("/nonexistent/credentials".into()),
                "AWS_CONFIG_FILE" => Some("/nonexistent/config".into()),
                _ => None,
            }
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let resolve = |s: SigV4Settings, env: fn(&str) -> Option<String>| {
            rt.block_on(Signer::with_env(&s, env).resolve())
        };
        let none = SigV4Settings {
            region: None,
            keys: None,
            profile: None,
        };
        let (c, r) = resolve(none.clone(), env).unwrap();
        assert_eq!((c.access_key.as_str(), r.as_str()), ("ENVKEY", "us-west-2"));
        let block = SigV4Settings {
            region: Some("eu-central-1".into()),
            keys: Some(("BLOCKKEY".into(), Secret::new("x"))),
            ..none.clone()
        };
        let (c, r) = resolve(block, env).unwrap();
        assert_eq!(
            (c.access_key.as_str(), r.as_str()),
            ("BLOCKKEY", "eu-central-1")
        );
        let team = SigV4Settings {
            profile: Some("team".into()),
            ..none.clone()
        };
        let (c, _) = resolve(team.clone(), env).unwrap();
        assert_eq!(c.access_key, "FILETEAM");
        assert_eq!(c.session_token, Some(Secret::new("t2")));
        // The profile's region from the config file when nothing else gives one.
        fn files_only(name: &str) -> Option<String> {
            match name {
                "AWS_ACCESS_KEY_ID" | "AWS_SECRET_ACCESS_KEY" | "AWS_REGION" => None,
                other => env(other),
            }
        }
        let (c, r) = resolve(team, files_only).unwrap();
        assert_eq!(
            (c.access_key.as_str(), r.as_str()),
            ("FILETEAM", "ap-south-1")
        );
        assert!(matches!(
            resolve(none.clone(), files_only),
            Err(SigV4Error::NoRegion { .. })
        ));
        let err = resolve(
            SigV4Settings {
                region: Some("r".into()),
                ..none
            },
            no_env,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("profile \"default\" is not in /nonexistent/credentials"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
