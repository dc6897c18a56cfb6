//! `ROOT/.ferry/config.json`: what `ferry init` was told. Nothing here is checked
//! against the server; a wrong key or URL surfaces at the first `ferry update`.
//!
//! The transport fields (`ca_certs`, `proxy`, `low_speed_*`) were added within schema
//! 1: they are optional, left out when unset, and a file without them reads as the
//! defaults, so older files stay valid and files without them stay readable by older
//! agents. `carry` was added the same way (absent means nothing is carried).

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{SCHEMA, StoreError, lock, read_json, write_json};
use crate::fetch::http::HttpOptions;
use crate::fetch::speed::LowSpeed;

/// The root's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub schema: u32,
    /// Base URL of the repository (`http://`, `https://` or `file://`), maybe with a path.
    pub server: String,
    pub channel: String,
    /// The text of the trusted public key file.
    pub public_key: String,
    /// How many releases to keep installed.
    pub keep: usize,
    /// How to reach an `http://` or `https://` server (stored flat, beside the above).
    #[serde(flatten)]
    pub transport: TransportConfig,
    /// Seconds of clock skew tolerated when checking a head's expiry. 0 unless the
    /// operator configures it: a tolerance is also extra life for a frozen repository.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_clock_skew_secs: u64,
    /// Patterns of the application's own files (`logs/`, `*.db`) copied from the
    /// active release into each new one before the switch (apply/pattern.rs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub carry: Vec<String>,
    /// Seconds a command waits for another one holding the root's lock (0: fail at
    /// once); unset means [`lock::DEFAULT_TIMEOUT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout_secs: Option<u64>,
    /// Most bytes one update may download; a plan that needs more is refused before
    /// its download (`ferry update --max-download` overrides it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_download: Option<u64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The optional transport settings; unset ones take the transport's defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportConfig {
    /// PEM text of the CA certificates trusted for `https://` (instead of the
    /// platform's roots); copied from `ferry init --ca-file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certs: Option<String>,
    /// Proxy URL for every request, replacing `HTTPS_PROXY` and friends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
    /// Low-speed limit in bytes per second (0 switches the check off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_speed_limit: Option<u64>,
    /// Low-speed window in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_speed_time_secs: Option<u64>,
}

impl TransportConfig {
    /// The HTTP transport's options.
    pub fn http_options(&self) -> HttpOptions {
        HttpOptions {
            ca_certs: self.ca_certs.clone(),
            proxy: self.proxy.clone(),
            low_speed: LowSpeed {
                limit: self.low_speed_limit.unwrap_or(LowSpeed::DEFAULT.limit),
                time: self
                    .low_speed_time_secs
                    .map_or(LowSpeed::DEFAULT.time, Duration::from_secs),
            },
        }
    }
}

impl Config {
    pub fn new(server: String, channel: String, public_key: String, keep: usize) -> Self {
        Config {
            schema: SCHEMA,
            server,
            channel,
            public_key,
            keep,
            transport: TransportConfig::default(),
            max_clock_skew_secs: 0,
            carry: Vec::new(),
            lock_timeout_secs: None,
            max_download: None,
        }
    }

    /// How long commands on this root wait for its lock unless told otherwise.
    pub fn lock_timeout(&self) -> Duration {
        self.lock_timeout_secs
            .map_or(lock::DEFAULT_TIMEOUT, Duration::from_secs)
    }

    #[must_use]
    pub fn with_transport(mut self, transport: TransportConfig) -> Config {
        self.transport = transport;
        self
    }

    pub fn load(path: &Path) -> Result<Config, StoreError> {
        read_json(path, |c: &Config| c.schema)
    }

    pub fn save(&self, path: &Path) -> Result<(), StoreError> {
        write_json(path, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_transport_fields_reads_as_defaults_and_round_trips() {
        let old =
            r#"{"schema":1,"server":"https://h/r","channel":"stable","public_key":"k","keep":3}"#;
        let c: Config = serde_json::from_str(old).unwrap();
        assert_eq!(
            c,
            Config::new("https://h/r".into(), "stable".into(), "k".into(), 3)
        );
        assert_eq!(c.transport.http_options(), HttpOptions::default());
        // Unset fields are not written, so the file is what an older ferry wrote.
        let v: serde_json::Value = serde_json::to_value(&c).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 5);

        let c = c.with_transport(TransportConfig {
            proxy: Some("http://proxy:3128".into()),
            low_speed_limit: Some(0),
            low_speed_time_secs: Some(5),
            ..TransportConfig::default()
        });
        let text = serde_json::to_string(&c).unwrap();
        assert!(text.contains(r#""proxy":"http://proxy:3128""#), "{text}");
        let back: Config = serde_json::from_str(&text).unwrap();
        assert_eq!(back, c);
        let o = back.transport.http_options();
        assert_eq!(o.proxy.as_deref(), Some("http://proxy:3128"));
        assert_eq!((o.low_speed.limit, o.low_speed.time.as_secs()), (0, 5));
        assert!(!o.low_speed.enabled());
    }

    #[test]
    fn carry_is_optional_and_round_trips() {
        let old =
            r#"{"schema":1,"server":"https://h/r","channel":"stable","public_key":"k","keep":3}"#;
        let mut c: Config = serde_json::from_str(old).unwrap();
        assert!(c.carry.is_empty());
        c.carry = vec!["logs/".into(), "*.db".into()];
        let text = serde_json::to_string(&c).unwrap();
        assert!(text.contains(r#""carry":["logs/","*.db"]"#), "{text}");
        assert_eq!(serde_json::from_str::<Config>(&text).unwrap(), c);
    }
}
