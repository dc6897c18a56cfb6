//! `ROOT/.ferry/config.toml`: what `ferry init` was told, in a file operators edit by
//! hand. Keys are flat and named as in docs/AGENT.md, which documents every one; an
//! unknown key is an error naming it, so a typo never silently does nothing. Nothing
//! here is checked against the server; a wrong key or URL surfaces at the first
//! `ferry update`.
//!
//! Roots made before this file existed have `config.json` instead; [`migrate`] turns
//! it into `config.toml` on first use (see there for why that is crash-safe).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::layout::Layout;
use super::{StoreError, lock, read_json};
use crate::fetch::http::HttpOptions;
use crate::fetch::mirrors::DEFAULT_GIVE_UP_AFTER;
use crate::fetch::retry::Policy;
use crate::fetch::speed::LowSpeed;
use crate::fsutil;

/// Where `ferry init --ca-file` copies the CA certificates, relative to `ROOT/.ferry`:
/// the root keeps working if the operator's file moves.
pub const CA_FILE: &str = "ca.pem";

const DEFAULT_KEEP: usize = 3;

/// The root's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub channel: String,
    /// Base URLs of the repository (`http://`, `https://` or `file://`), maybe with a
    /// path: mirrors of one repository, tried in order (fetch/mirrors.rs).
    pub servers: Vec<String>,
    /// The text of the trusted public key file; empty when the root trusts the key
    /// list it was initialised with (kept in `.ferry/keys/`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub public_key: String,
    /// How many releases to keep installed.
    #[serde(default = "default_keep")]
    pub keep: usize,
    /// Seconds of clock skew tolerated when checking a head's expiry. 0 unless the
    /// operator configures it: a tolerance is also extra life for a frozen repository.
    #[serde(
        default,
        rename = "max_clock_skew",
        with = "secs",
        skip_serializing_if = "is_zero"
    )]
    pub max_clock_skew_secs: u64,
    /// Seconds a command waits for another one holding the root's lock (0: fail at
    /// once); unset means [`lock::DEFAULT_TIMEOUT`].
    #[serde(
        default,
        rename = "lock_timeout",
        with = "opt_secs",
        skip_serializing_if = "Option::is_none"
    )]
    pub lock_timeout_secs: Option<u64>,
    /// Most bytes one update may download; a plan that needs more is refused before
    /// its download (`ferry update --max-download` overrides it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_download: Option<u64>,
    /// PEM file of the CA certificates trusted for `https://` (instead of the
    /// platform's roots); a relative path is relative to `ROOT/.ferry`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The text of `ca_file`, read by [`Config::load`].
    #[serde(skip)]
    pub ca_certs: Option<String>,
    /// Proxy URL for every request, replacing `HTTPS_PROXY` and friends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
    /// Low-speed limit in bytes per second (0 switches the check off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_speed_limit: Option<u64>,
    /// Low-speed window in seconds.
    #[serde(
        default,
        rename = "low_speed_time",
        with = "opt_secs",
        skip_serializing_if = "Option::is_none"
    )]
    pub low_speed_time_secs: Option<u64>,
    /// The ceiling of the first random retry delay, doubled for each further one
    /// (exponential backoff with full jitter, fetch/retry.rs) [default: 250ms].
    #[serde(
        default,
        rename = "retry_base",
        with = "opt_millis",
        skip_serializing_if = "Option::is_none"
    )]
    pub retry_base_ms: Option<u64>,
    /// The largest single retry delay [default: 20s].
    #[serde(
        default,
        rename = "retry_max_delay",
        with = "opt_millis",
        skip_serializing_if = "Option::is_none"
    )]
    pub retry_max_delay_ms: Option<u64>,
    /// How long `ferry update` and `rollback --to` keep trying when no server is
    /// reachable before failing with exit code 3 [default: 30s].
    #[serde(
        default,
        rename = "give_up_after",
        with = "opt_secs",
        skip_serializing_if = "Option::is_none"
    )]
    pub give_up_after_secs: Option<u64>,
    /// How long an update waits for a server that makes diffs on request (FORMAT.md
    /// §3.8) to make one no listed diff covers, before it takes the archive instead
    /// [default: 30s; at most 50s count].
    #[serde(
        default,
        rename = "diff_wait",
        with = "opt_secs",
        skip_serializing_if = "Option::is_none"
    )]
    pub diff_wait_secs: Option<u64>,
    /// Patterns of the application's own files (`logs/`, `*.db`) copied from the
    /// active release into each new one before the switch (apply/pattern.rs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub carry: Vec<String>,
    /// `ferry agent`: time between checks of the channel head [default: 15m].
    #[serde(
        default,
        rename = "interval",
        with = "opt_secs",
        skip_serializing_if = "Option::is_none"
    )]
    pub interval_secs: Option<u64>,
    /// `ferry agent`: each wait is the interval plus or minus up to this percentage of
    /// it, at random, so a fleet started together does not check together [default: 20].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<u8>,
    /// `ferry agent`: when a switch may happen, e.g. `"Mon-Fri 02:00-04:00"`
    /// (agent/window.rs); empty means any time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<String>,
    /// The time zone of `windows`: `local` (the system's) or `UTC` [default: local].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// `ferry agent`: outside a window, download and build the next release so the
    /// switch inside it is quick [default: true].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prestage: Option<bool>,
    /// Command (`/bin/sh -c`) run before `current` switches; failing cancels the switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_switch: Option<String>,
    /// Command run after `current` switched (e.g. `systemctl restart myapp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_switch: Option<String>,
    /// Command that exits 0 when the new release works; failing switches back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<String>,
    /// How long one run of `health_check` may take [default: 60s].
    #[serde(
        default,
        rename = "health_timeout",
        with = "opt_secs",
        skip_serializing_if = "Option::is_none"
    )]
    pub health_timeout_secs: Option<u64>,
    /// Runs of `health_check` before the release counts as failed [default: 3].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_retries: Option<u32>,
    /// Wait before each run of `health_check` [default: 5s].
    #[serde(
        default,
        rename = "health_delay",
        with = "opt_secs",
        skip_serializing_if = "Option::is_none"
    )]
    pub health_delay_secs: Option<u64>,
    /// This agent's labels as `key=value`, matched against a release's free-form
    /// requirements (`ferry-server publish --requires role=edge`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// `ferry agent`: time between heartbeat reports to the fleet server, also when
    /// nothing changed [default: 5m]; only with `token_file`.
    #[serde(
        default,
        rename = "heartbeat",
        with = "opt_secs",
        skip_serializing_if = "Option::is_none"
    )]
    pub heartbeat_secs: Option<u64>,
    /// File holding the fleet token that enrolls this agent with the fleet server
    /// (`<first server>/v1/reports`); unset, the agent sends no reports. A relative
    /// path is relative to `ROOT/.ferry`. Read at every enrollment, so a renewed
    /// token takes effect without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

/// Defaults of the agent's keys.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(15 * 60);
pub const DEFAULT_JITTER: u8 = 20;
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_HEALTH_RETRIES: u32 = 3;
pub const DEFAULT_HEALTH_DELAY: Duration = Duration::from_secs(5);
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5 * 60);
/// `diff_wait`: long enough for the server to make the diff of a release of tens of
/// megabytes, short enough that an update never hangs on it (docs/AGENT.md).
pub const DEFAULT_DIFF_WAIT: Duration = Duration::from_secs(30);

fn default_keep() -> usize {
    DEFAULT_KEEP
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A span in seconds written as the largest whole unit: `5m`, `30s`, `2h`.
pub fn format_secs(secs: u64) -> String {
    match secs {
        0 => "0s".into(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Durations as strings like `"5m"` (format/src/duration.rs), stored as seconds.
mod secs {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(secs: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_secs(*secs))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text = String::deserialize(d)?;
        ferry_format::duration::parse_duration(&text)
            .map(|d| d.as_secs())
            .map_err(serde::de::Error::custom)
    }
}

/// A span in milliseconds: `250ms`, or the largest whole unit (`20s`, `2m`).
pub fn format_millis(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format_secs(ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Durations finer than a second (`"250ms"`, `"20s"`), stored as milliseconds.
mod opt_millis {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ms: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match ms {
            Some(n) => s.serialize_str(&super::format_millis(*n)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        let text = String::deserialize(d)?;
        let d =
            ferry_format::duration::parse_duration_ms(&text).map_err(serde::de::Error::custom)?;
        u64::try_from(d.as_millis())
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("duration {text:?} is too long")))
    }
}

mod opt_secs {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(secs: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match secs {
            Some(n) => super::secs::serialize(n, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        super::secs::deserialize(d).map(Some)
    }
}

impl Config {
    pub fn new(servers: Vec<String>, channel: String, public_key: String, keep: usize) -> Self {
        Config {
            channel,
            servers,
            public_key,
            keep,
            max_clock_skew_secs: 0,
            lock_timeout_secs: None,
            ca_file: None,
            ca_certs: None,
            proxy: None,
            low_speed_limit: None,
            low_speed_time_secs: None,
            retry_base_ms: None,
            retry_max_delay_ms: None,
            give_up_after_secs: None,
            diff_wait_secs: None,
            carry: Vec::new(),
            max_download: None,
            interval_secs: None,
            jitter: None,
            windows: Vec::new(),
            timezone: None,
            prestage: None,
            pre_switch: None,
            post_switch: None,
            health_check: None,
            health_timeout_secs: None,
            health_retries: None,
            health_delay_secs: None,
            labels: Vec::new(),
            heartbeat_secs: None,
            token_file: None,
        }
    }

    /// `labels` as a map (checked by [`Config::load`]).
    pub fn label_map(&self) -> BTreeMap<String, String> {
        self.labels
            .iter()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect()
    }

    pub fn interval(&self) -> Duration {
        self.interval_secs
            .map_or(DEFAULT_INTERVAL, Duration::from_secs)
    }

    pub fn jitter(&self) -> u8 {
        self.jitter.unwrap_or(DEFAULT_JITTER)
    }

    pub fn heartbeat(&self) -> Duration {
        self.heartbeat_secs
            .map_or(DEFAULT_HEARTBEAT, Duration::from_secs)
    }

    /// `token_file` resolved against `ferry_dir` (`ROOT/.ferry`), when reports are on.
    pub fn token_path(&self, ferry_dir: &Path) -> Option<PathBuf> {
        self.token_file.as_ref().map(|t| ferry_dir.join(t))
    }

    pub fn prestage(&self) -> bool {
        self.prestage.unwrap_or(true)
    }

    pub fn health_timeout(&self) -> Duration {
        self.health_timeout_secs
            .map_or(DEFAULT_HEALTH_TIMEOUT, Duration::from_secs)
    }

    pub fn health_retries(&self) -> u32 {
        self.health_retries.unwrap_or(DEFAULT_HEALTH_RETRIES)
    }

    pub fn health_delay(&self) -> Duration {
        self.health_delay_secs
            .map_or(DEFAULT_HEALTH_DELAY, Duration::from_secs)
    }

    /// The first of `servers` ([`Config::load`] refuses an empty list), where requests
    /// start.
    pub fn server(&self) -> &str {
        self.servers.first().map_or("", String::as_str)
    }

    /// The backoff of retries: `retry_base` and `retry_max_delay` over the defaults.
    pub fn retry_policy(&self) -> Policy {
        Policy {
            base: self
                .retry_base_ms
                .map_or(Policy::DEFAULT.base, Duration::from_millis),
            max_delay: self
                .retry_max_delay_ms
                .map_or(Policy::DEFAULT.max_delay, Duration::from_millis),
            ..Policy::DEFAULT
        }
    }

    /// How long one-shot commands keep trying when no server is reachable.
    pub fn give_up_after(&self) -> Duration {
        self.give_up_after_secs
            .map_or(DEFAULT_GIVE_UP_AFTER, Duration::from_secs)
    }

    /// How long an update waits for a diff the server makes on request.
    pub fn diff_wait(&self) -> Duration {
        self.diff_wait_secs
            .map_or(DEFAULT_DIFF_WAIT, Duration::from_secs)
    }

    /// How long commands on this root wait for its lock unless told otherwise.
    pub fn lock_timeout(&self) -> Duration {
        self.lock_timeout_secs
            .map_or(lock::DEFAULT_TIMEOUT, Duration::from_secs)
    }

    /// The HTTP transport's options; unset ones take the transport's defaults.
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

    /// Reads `config.toml` and the CA file it names.
    pub fn load(path: &Path) -> Result<Config, StoreError> {
        let text = fsutil::ctx("reading", path, std::fs::read_to_string(path))?;
        let mut config = Config::parse(&text).map_err(|reason| StoreError::Config {
            path: path.to_path_buf(),
            reason,
        })?;
        if let Some(ca) = &config.ca_file {
            let ca = fsutil::parent_of(path).join(ca);
            config.ca_certs = Some(fsutil::ctx("reading", &ca, std::fs::read_to_string(&ca))?);
        }
        Ok(config)
    }

    fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        if config.servers.is_empty() {
            return Err("`servers` is empty: name at least one repository URL".into());
        }
        if config.keep == 0 {
            return Err("`keep` must be at least 1".into());
        }
        if config.low_speed_time_secs == Some(0) {
            return Err("`low_speed_time` must be at least 1s".into());
        }
        if config.retry_base_ms == Some(0) {
            return Err("`retry_base` must be at least 1ms".into());
        }
        let retry = config.retry_policy();
        if retry.max_delay < retry.base {
            return Err(format!(
                "`retry_max_delay` ({}) is shorter than `retry_base` ({})",
                format_millis(retry.max_delay.as_millis() as u64),
                format_millis(retry.base.as_millis() as u64)
            ));
        }
        if config.interval_secs == Some(0) {
            return Err("`interval` must be at least 1s".into());
        }
        if config.jitter.is_some_and(|j| j > 100) {
            return Err("`jitter` is a percentage of `interval`: at most 100".into());
        }
        if config.health_retries == Some(0) {
            return Err("`health_retries` must be at least 1".into());
        }
        if config.health_timeout_secs == Some(0) {
            return Err("`health_timeout` must be at least 1s".into());
        }
        if config.heartbeat_secs == Some(0) {
            return Err("`heartbeat` must be at least 1s".into());
        }
        if config
            .token_file
            .as_ref()
            .is_some_and(|t| t.as_os_str().is_empty())
        {
            return Err("`token_file` is empty: name the file holding the fleet token".into());
        }
        let mut seen = std::collections::HashSet::new();
        for label in &config.labels {
            match label.split_once('=') {
                Some((k, _)) if !k.trim().is_empty() && seen.insert(k.trim()) => {}
                Some((k, _)) if !k.trim().is_empty() => {
                    return Err(format!("`labels` sets {:?} twice", k.trim()));
                }
                _ => return Err(format!("`labels`: {label:?} is not key=value")),
            }
        }
        crate::agent::window::Schedule::parse(&config.windows, config.timezone.as_deref())
            .map_err(|e| e.to_string())?;
        Ok(config)
    }

    /// The file's text: the keys that are set, then every other key as a comment
    /// showing its default, so an operator sees everything there is to set.
    /// Fails only for a number TOML cannot hold (above 2^63 - 1), which the
    /// serialiser may write but no reader accepts: reading the text back checks it.
    pub fn to_toml(&self) -> Result<String, String> {
        let set = toml::to_string(self).map_err(|e| e.to_string())?;
        let table: toml::Table = toml::from_str(&set).map_err(|e| e.to_string())?;
        let mut text = String::from(
            "# ferry: the configuration of this install root. Every key is described in\n\
             # docs/AGENT.md; command-line flags override it.\n\n",
        );
        text.push_str(&set);
        let lock = format_secs(lock::DEFAULT_TIMEOUT.as_secs());
        let speed_time = format_secs(LowSpeed::DEFAULT.time.as_secs());
        let speed_limit = LowSpeed::DEFAULT.limit.to_string();
        let others = [
            ("public_key", "\"ferry-public-key:v1:...\"".to_string()),
            ("keep", DEFAULT_KEEP.to_string()),
            ("max_clock_skew", "\"0s\"".into()),
            ("lock_timeout", format!("\"{lock}\"")),
            (
                "ca_file",
                format!("\"{CA_FILE}\"   # default: the system's roots"),
            ),
            (
                "proxy",
                "\"http://proxy:3128\"   # default: HTTPS_PROXY / NO_PROXY".into(),
            ),
            ("low_speed_limit", speed_limit),
            ("low_speed_time", format!("\"{speed_time}\"")),
            (
                "retry_base",
                format!(
                    "\"{}\"",
                    format_millis(Policy::DEFAULT.base.as_millis() as u64)
                ),
            ),
            (
                "retry_max_delay",
                format!(
                    "\"{}\"",
                    format_millis(Policy::DEFAULT.max_delay.as_millis() as u64)
                ),
            ),
            (
                "give_up_after",
                format!("\"{}\"", format_secs(DEFAULT_GIVE_UP_AFTER.as_secs())),
            ),
            (
                "diff_wait",
                format!("\"{}\"", format_secs(DEFAULT_DIFF_WAIT.as_secs())),
            ),
            ("carry", "[]".into()),
            (
                "max_download",
                "5242880   # bytes; default: no limit".into(),
            ),
            (
                "interval",
                format!("\"{}\"", format_secs(DEFAULT_INTERVAL.as_secs())),
            ),
            (
                "jitter",
                format!("{DEFAULT_JITTER}   # percent of interval"),
            ),
            (
                "windows",
                "[\"Mon-Fri 02:00-04:00\", \"Sat,Sun 00:00-06:00\"]   # default: any time".into(),
            ),
            ("timezone", "\"local\"   # or \"UTC\"".into()),
            ("prestage", "true".into()),
            (
                "pre_switch",
                "\"systemctl stop myapp\"   # default: none".into(),
            ),
            (
                "post_switch",
                "\"systemctl restart myapp\"   # default: none".into(),
            ),
            (
                "health_check",
                "\"curl -fsS http://127.0.0.1:8000/health\"   # default: none".into(),
            ),
            (
                "health_timeout",
                format!("\"{}\"", format_secs(DEFAULT_HEALTH_TIMEOUT.as_secs())),
            ),
            ("health_retries", DEFAULT_HEALTH_RETRIES.to_string()),
            (
                "health_delay",
                format!("\"{}\"", format_secs(DEFAULT_HEALTH_DELAY.as_secs())),
            ),
            ("labels", "[\"role=edge\", \"region=eu\"]".into()),
            (
                "heartbeat",
                format!("\"{}\"", format_secs(DEFAULT_HEARTBEAT.as_secs())),
            ),
            (
                "token_file",
                "\"fleet-token\"   # default: none (no reports)".into(),
            ),
        ];
        let unset: Vec<_> = others
            .iter()
            .filter(|(key, _)| !table.contains_key(*key))
            .collect();
        if !unset.is_empty() {
            text.push_str("\n# Not set here, shown with their defaults:\n");
            for (key, default) in unset {
                text.push_str(&format!("# {key} = {default}\n"));
            }
        }
        Ok(text)
    }

    pub fn save(&self, path: &Path) -> Result<(), StoreError> {
        let text = self.to_toml().map_err(|reason| StoreError::Config {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(fsutil::write_atomic(path, text.as_bytes())?)
    }
}

/// `config.json` as ferry wrote it before `config.toml`.
#[derive(Deserialize)]
struct LegacyConfig {
    schema: u32,
    server: String,
    channel: String,
    public_key: String,
    keep: usize,
    #[serde(default)]
    ca_certs: Option<String>,
    #[serde(default)]
    proxy: Option<String>,
    #[serde(default)]
    low_speed_limit: Option<u64>,
    #[serde(default)]
    low_speed_time_secs: Option<u64>,
    #[serde(default)]
    max_clock_skew_secs: u64,
    #[serde(default)]
    carry: Vec<String>,
    #[serde(default)]
    lock_timeout_secs: Option<u64>,
}

/// Turns a root's `config.json` (written by an older ferry) into `config.toml`, if
/// there is one; says so once on stderr. Returns whether it converted a file.
///
/// The order makes every crash harmless: the CA text and then `config.toml` are
/// written atomically before `config.json` is removed, and a `config.toml` that
/// exists is the configuration — a `config.json` beside it is a leftover of a
/// migration that stopped before removing it, and is removed. Two commands migrating
/// at once write the same file.
pub fn migrate(layout: &Layout) -> Result<bool, StoreError> {
    let json = layout.legacy_config();
    if !json.exists() {
        return Ok(false);
    }
    let toml_path = layout.config();
    let converted = !toml_path.exists();
    if converted {
        let old: LegacyConfig = read_json(&json, |c: &LegacyConfig| c.schema)?;
        let mut config = Config::new(vec![old.server], old.channel, old.public_key, old.keep);
        config.max_clock_skew_secs = old.max_clock_skew_secs;
        config.lock_timeout_secs = old.lock_timeout_secs;
        config.proxy = old.proxy;
        config.low_speed_limit = old.low_speed_limit;
        config.low_speed_time_secs = old.low_speed_time_secs;
        config.carry = old.carry;
        if let Some(pem) = old.ca_certs {
            fsutil::write_atomic(&layout.ferry_dir().join(CA_FILE), pem.as_bytes())?;
            config.ca_file = Some(CA_FILE.into());
        }
        config.save(&toml_path)?;
    }
    match std::fs::remove_file(&json) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        r => fsutil::ctx("removing", &json, r)?,
    }
    if converted {
        eprintln!(
            "converted {} to {} (this ferry's configuration format; see docs/AGENT.md)",
            json.display(),
            toml_path.display()
        );
    }
    Ok(converted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::new(vec!["https://h/r".into()], "stable".into(), "k".into(), 3)
    }

    #[test]
    fn init_writes_the_given_keys_and_lists_the_others_with_defaults() {
        let text = config().to_toml().unwrap();
        assert!(text.contains("channel = \"stable\"\n"), "{text}");
        assert!(text.contains("servers = [\"https://h/r\"]\n"), "{text}");
        assert!(text.contains("keep = 3\n"), "{text}");
        for key in [
            "max_clock_skew",
            "lock_timeout",
            "ca_file",
            "proxy",
            "carry",
        ] {
            assert!(text.contains(&format!("\n# {key} = ")), "{key}: {text}");
        }
        assert!(text.contains("# lock_timeout = \"10m\"\n"), "{text}");
        assert!(text.contains("# low_speed_time = \"30s\"\n"), "{text}");
        assert_eq!(Config::parse(&text).unwrap(), config());
        // A key that is set is not listed again as a comment.
        assert!(!text.contains("# keep"), "{text}");
    }

    #[test]
    fn durations_are_written_and_read_with_units() {
        let mut c = config();
        c.max_clock_skew_secs = 300;
        c.lock_timeout_secs = Some(0);
        c.low_speed_time_secs = Some(90);
        c.low_speed_limit = Some(0);
        c.proxy = Some("http://proxy:3128".into());
        c.carry = vec!["logs/".into(), "*.db".into()];
        c.servers.push("https://mirror/r".into());
        let text = c.to_toml().unwrap();
        assert!(text.contains("max_clock_skew = \"5m\"\n"), "{text}");
        assert!(text.contains("lock_timeout = \"0s\"\n"), "{text}");
        assert!(text.contains("low_speed_time = \"90s\"\n"), "{text}");
        assert!(text.contains("carry = [\"logs/\", \"*.db\"]\n"), "{text}");
        assert!(!text.contains("# proxy"), "{text}");
        let back = Config::parse(&text).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.server(), "https://h/r");
        let o = back.http_options();
        assert_eq!(o.proxy.as_deref(), Some("http://proxy:3128"));
        assert_eq!((o.low_speed.limit, o.low_speed.time.as_secs()), (0, 90));

        let hand = "channel = \"stable\"\nservers = [\"https://h/r\"]\nmax_clock_skew = \"2h\"\n";
        let c = Config::parse(hand).unwrap();
        assert_eq!((c.max_clock_skew_secs, c.keep), (7200, 3));
        assert_eq!(c.http_options(), HttpOptions::default());
    }

    #[test]
    fn an_unknown_key_or_a_bad_value_is_an_error_naming_it() {
        let base = "channel = \"stable\"\nservers = [\"https://h/r\"]\n";
        let err = Config::parse(&format!("{base}kep = 5\n")).unwrap_err();
        assert!(err.contains("unknown field `kep`"), "{err}");
        // The old `*_secs` numbers are accepted only when migrating config.json.
        let err = Config::parse(&format!("{base}max_clock_skew_secs = 300\n")).unwrap_err();
        assert!(err.contains("max_clock_skew_secs"), "{err}");
        let err = Config::parse(&format!("{base}lock_timeout = 30\n")).unwrap_err();
        assert!(err.contains("lock_timeout"), "{err}");
        let err = Config::parse(&format!("{base}low_speed_time = \"30\"\n")).unwrap_err();
        assert!(err.contains("invalid duration \"30\""), "{err}");
        let err = Config::parse(&format!("{base}low_speed_time = \"0s\"\n")).unwrap_err();
        assert!(
            err.contains("`low_speed_time` must be at least 1s"),
            "{err}"
        );
        let err = Config::parse("channel = \"stable\"\nservers = []\n").unwrap_err();
        assert!(err.contains("`servers` is empty"), "{err}");
        let err = Config::parse("channel = \"stable\"\n").unwrap_err();
        assert!(err.contains("servers"), "{err}");
    }

    #[test]
    fn the_retry_keys_take_milliseconds_and_are_checked() {
        let base = "channel = \"stable\"\nservers = [\"https://h/r\", \"https://m/r\"]\n";
        let c = Config::parse(base).unwrap();
        assert_eq!(c.retry_policy(), Policy::DEFAULT);
        assert_eq!(c.give_up_after(), DEFAULT_GIVE_UP_AFTER);
        let text = c.to_toml().unwrap();
        assert!(text.contains("# retry_base = \"250ms\"\n"), "{text}");
        assert!(text.contains("# retry_max_delay = \"20s\"\n"), "{text}");
        assert!(text.contains("# give_up_after = \"30s\"\n"), "{text}");

        let c = Config::parse(&format!(
            "{base}retry_base = \"100ms\"\nretry_max_delay = \"1500ms\"\ngive_up_after = \"3s\"\n"
        ))
        .unwrap();
        let p = c.retry_policy();
        assert_eq!(p.base, Duration::from_millis(100));
        assert_eq!(p.max_delay, Duration::from_millis(1500));
        assert_eq!(p.attempts, Policy::DEFAULT.attempts);
        assert_eq!(c.give_up_after(), Duration::from_secs(3));
        let text = c.to_toml().unwrap();
        assert!(text.contains("retry_base = \"100ms\"\n"), "{text}");
        assert!(text.contains("retry_max_delay = \"1500ms\"\n"), "{text}");
        assert!(text.contains("give_up_after = \"3s\"\n"), "{text}");
        assert_eq!(Config::parse(&text).unwrap(), c);

        for (bad, says) in [
            ("retry_base = \"0ms\"", "at least 1ms"),
            ("retry_base = \"30s\"", "shorter than `retry_base`"),
            ("retry_max_delay = \"10ms\"", "shorter than `retry_base`"),
            ("retry_base = \"250\"", "invalid duration"),
            // Only the retry keys are finer than a second.
            ("give_up_after = \"500ms\"", "invalid duration"),
        ] {
            let err = Config::parse(&format!("{base}{bad}\n")).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn heartbeat_and_token_file_have_defaults_and_are_checked() {
        let base = "channel = \"stable\"\nservers = [\"https://h/r\"]\n";
        let c = Config::parse(base).unwrap();
        assert_eq!(c.heartbeat(), DEFAULT_HEARTBEAT);
        assert_eq!(c.token_path(Path::new("/r/.ferry")), None);
        let text = c.to_toml().unwrap();
        assert!(text.contains("# heartbeat = \"5m\"\n"), "{text}");
        assert!(text.contains("# token_file = "), "{text}");

        let c = Config::parse(&format!(
            "{base}heartbeat = \"1s\"\ntoken_file = \"fleet-token\"\n"
        ))
        .unwrap();
        assert_eq!(c.heartbeat(), Duration::from_secs(1));
        assert_eq!(
            c.token_path(Path::new("/r/.ferry")),
            Some(PathBuf::from("/r/.ferry/fleet-token"))
        );
        assert_eq!(Config::parse(&c.to_toml().unwrap()).unwrap(), c);
        let abs = Config::parse(&format!("{base}token_file = \"/etc/ferry/token\"\n")).unwrap();
        assert_eq!(
            abs.token_path(Path::new("/r/.ferry")),
            Some(PathBuf::from("/etc/ferry/token"))
        );
        for (bad, says) in [
            ("heartbeat = \"0s\"", "`heartbeat` must be at least 1s"),
            ("heartbeat = \"5\"", "invalid duration"),
            ("token_file = \"\"", "`token_file` is empty"),
        ] {
            let err = Config::parse(&format!("{base}{bad}\n")).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn a_number_toml_cannot_hold_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let mut c = config();
        c.low_speed_limit = Some(u64::MAX);
        let err = c.save(&path).unwrap_err().to_string();
        assert!(err.contains("config.toml"), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn the_example_in_contrib_sets_every_key() {
        let c = Config::parse(include_str!("../../../contrib/config.toml")).unwrap();
        assert_eq!(c.servers.len(), 2);
        assert_eq!(c.max_clock_skew_secs, 300);
        assert_eq!(c.lock_timeout_secs, Some(600));
        // Every key is set, so none is left to list as a comment.
        assert!(!c.to_toml().unwrap().contains("shown with their defaults"));
    }

    const OLD: &str = r#"{"schema":1,"server":"https://h/r","channel":"stable","public_key":"k","keep":4,
        "ca_certs":"-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n","proxy":"http://p:1",
        "low_speed_limit":10,"low_speed_time_secs":60,"max_clock_skew_secs":300,
        "carry":["logs/"],"lock_timeout_secs":0}"#;

    #[test]
    fn a_json_root_is_migrated_once_and_every_crash_point_is_harmless() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        fsutil::create_dir_all(&layout.ferry_dir()).unwrap();
        std::fs::write(layout.legacy_config(), OLD).unwrap();

        assert!(migrate(&layout).unwrap());
        assert!(!layout.legacy_config().exists());
        let c = Config::load(&layout.config()).unwrap();
        let mut want = config();
        want.keep = 4;
        want.ca_file = Some(CA_FILE.into());
        want.ca_certs =
            Some("-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n".into());
        want.proxy = Some("http://p:1".into());
        want.low_speed_limit = Some(10);
        want.low_speed_time_secs = Some(60);
        want.max_clock_skew_secs = 300;
        want.carry = vec!["logs/".into()];
        want.lock_timeout_secs = Some(0);
        assert_eq!(c, want);
        let text = std::fs::read_to_string(layout.config()).unwrap();
        assert!(text.contains("low_speed_time = \"1m\"\n"), "{text}");
        assert!(text.contains("ca_file = \"ca.pem\"\n"), "{text}");
        // Nothing left to do the second time.
        assert!(!migrate(&layout).unwrap());

        // A crash after writing config.toml, before removing config.json: the toml
        // wins (even if edited since) and the json is removed.
        let mut edited = want.clone();
        edited.keep = 7;
        edited.save(&layout.config()).unwrap();
        std::fs::write(layout.legacy_config(), OLD).unwrap();
        assert!(!migrate(&layout).unwrap());
        assert!(!layout.legacy_config().exists());
        assert_eq!(Config::load(&layout.config()).unwrap().keep, 7);

        // A crash before config.toml was renamed into place leaves only config.json
        // (and maybe a temporary file, or ca.pem): the migration runs again.
        std::fs::remove_file(layout.config()).unwrap();
        std::fs::write(layout.legacy_config(), OLD).unwrap();
        assert!(migrate(&layout).unwrap());
        assert_eq!(Config::load(&layout.config()).unwrap(), want);

        // A damaged config.json is reported and left in place.
        std::fs::remove_file(layout.config()).unwrap();
        std::fs::write(layout.legacy_config(), "{").unwrap();
        let err = migrate(&layout).unwrap_err().to_string();
        assert!(err.contains("config.json is damaged"), "{err}");
        assert!(layout.legacy_config().exists() && !layout.config().exists());
    }
}
