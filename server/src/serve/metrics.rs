//! `/metrics`: every counter, gauge and histogram of `serve`, kept with
//! `prometheus-client` (no global registry: one [`Metrics`] per server) and rendered
//! in the Prometheus text format 0.0.4, which every scraper reads and `promtool check
//! metrics` checks. (The crate writes OpenMetrics, whose counter families are named
//! without their `_total`; `to_prometheus_text` converts.)
//!
//! Three kinds of source feed it:
//! - the request path ([`Metrics::record`], [`Metrics::connection`], [`Metrics::shed`]),
//!   with the object kind a request served ([`object_kind`]);
//! - the fleet's report endpoint, as reports arrive: [`Metrics::report_received`] for
//!   every `POST /v1/reports`, [`Metrics::observe_report`] for each newly stored
//!   report (update and rollback outcomes and durations), [`Metrics::rollout_halted`]
//!   when a rollout halts itself;
//! - the fleet's summary, whenever it is recomputed: [`Metrics::set_fleet`] replaces
//!   the gauges (agents by channel, release and state; rollout percentage; halts).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use ferry_format::layout::{RepoPath, object_path, parse_repo_path};
use ferry_format::report::{AgentState, Report, ReportKind};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a request asked for: the `kind` label of requests and bytes.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Kind {
    head,
    manifest,
    archive,
    diff,
    key_list,
    other,
}

/// How the report endpoint answered a `POST /v1/reports`: the `result` label of
/// `ferry_reports_received_total`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ReportResult {
    /// Stored (200 `stored: true`).
    stored,
    /// A report id already stored (200 `stored: false`).
    duplicate,
    /// A first report with the fleet token (201).
    enrolled,
    /// No valid token or credential (401).
    unauthorized,
    /// A credential reporting for another agent id (403).
    forbidden,
    /// Over 64 KiB (413).
    too_large,
    /// Not a report (400).
    invalid,
    /// The database failed (5xx).
    error,
}

/// What happened to a request for, or a job of, an on-demand diff (`serve
/// --diffs-on-demand`): the `result` label of `ferry_diffs_on_demand_total`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum OnDemandResult {
    /// A job started for a pair not made yet (requests for a pair whose job is
    /// pending wait for that one).
    started,
    /// A job made a diff and stored it (counted once per diff, not per request).
    produced,
    /// A request answered with a diff (made by its job or an earlier one).
    served,
    /// A request refused: no such retained pair, too large, no diff worth having, or
    /// every job slot taken (503).
    refused,
    /// A request that stopped waiting while its job goes on (503).
    pending,
    /// A job or a check that failed (500).
    failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OnDemandLabels {
    result: OnDemandResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    kind: Kind,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: Kind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: ReportResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelLabels {
    channel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    channel: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabels {
    channel: String,
    release: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReleaseOutcomeLabels {
    channel: String,
    release: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReleaseLabels {
    channel: String,
    release: String,
}

/// Duration buckets, in seconds: 0.25 s to about 70 minutes, doubling.
#[derive(Clone, Copy)]
struct DurationBuckets;

impl MetricConstructor<Histogram> for DurationBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.25, 2.0, 15))
    }
}

/// The fleet as the metrics show it: what the fleet code hands to
/// [`Metrics::set_fleet`] each time it recomputes its summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetGauges {
    pub channels: Vec<ChannelGauges>,
}

/// One channel of [`FleetGauges`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChannelGauges {
    pub channel: String,
    /// The rollout of the channel's newest release, from its head; `None` without one.
    pub rollout: Option<RolloutGauge>,
    /// Agents by active release and latest state (offline ones included).
    pub agents: Vec<AgentCount>,
    /// Agents without a report for 3 heartbeat intervals.
    pub offline: u64,
    /// Bytes the deltas saved against full downloads.
    pub bytes_saved: u64,
    /// Per release, the agents of each outcome of `GET /v1/fleet`'s `releases`.
    pub releases: Vec<ReleaseOutcome>,
}

/// The outcomes `GET /v1/fleet` counts per release: agents updating to it, staged
/// for it, and whose newest attempt at it failed, rolled back or was refused.
pub const RELEASE_OUTCOMES: [&str; 5] = ["updating", "staged", "failed", "rolled_back", "refused"];

/// `agents` agents of `release` in `outcome` (one of [`RELEASE_OUTCOMES`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseOutcome {
    pub release: String,
    pub outcome: &'static str,
    pub agents: u64,
}

/// The rollout part of [`ChannelGauges`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RolloutGauge {
    pub release: String,
    /// The effective percentage, 0..=100.
    pub percent: u8,
    pub paused: bool,
    pub halted: bool,
}

/// Agents on `release` (their active one; "" for none yet) in `state`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentCount {
    pub release: String,
    pub state: AgentState,
    pub agents: u64,
}

impl FleetGauges {
    /// The gauges from the two operator views of the fleet API (FLEET-API contract):
    /// `GET /v1/fleet` gives each channel's rollout, offline count and bytes saved,
    /// `GET /v1/agents` each agent's channel, active release and state. Fields that
    /// are missing or of another type count as absent, never as an error: metrics
    /// must not fail a request.
    pub fn from_views(fleet: &serde_json::Value, agents: &serde_json::Value) -> FleetGauges {
        use std::collections::BTreeMap;
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        let mut counts: BTreeMap<(String, String, AgentState), u64> = BTreeMap::new();
        for a in agents["agents"].as_array().into_iter().flatten() {
            let state = serde_json::from_value::<AgentState>(a["state"].clone());
            if let Ok(state) = state {
                let key = (text(&a["channel"]), text(&a["active"]), state);
                *counts.entry(key).or_default() += 1;
            }
        }
        let mut channels: Vec<ChannelGauges> = Vec::new();
        for c in fleet["channels"].as_array().into_iter().flatten() {
            let r = &c["rollout"];
            let rollout = r["release"].as_str().map(|release| RolloutGauge {
                release: release.to_string(),
                percent: r["percent"].as_u64().map_or(0, |p| p.min(100) as u8),
                paused: r["paused"].as_bool().unwrap_or(false),
                halted: r["halted"].as_bool().unwrap_or(false),
            });
            let releases = c["releases"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|r| {
                    RELEASE_OUTCOMES.map(|outcome| ReleaseOutcome {
                        release: text(&r["version"]),
                        outcome,
                        agents: r[outcome].as_u64().unwrap_or(0),
                    })
                })
                .collect();
            channels.push(ChannelGauges {
                channel: text(&c["channel"]),
                rollout,
                agents: Vec::new(),
                offline: c["offline"].as_array().map_or(0, |o| o.len() as u64),
                bytes_saved: c["bytes_saved"].as_u64().unwrap_or(0),
                releases,
            });
        }
        for ((channel, release, state), n) in counts {
            let i = match channels.iter().position(|c| c.channel == channel) {
                Some(i) => i,
                None => {
                    channels.push(ChannelGauges {
                        channel,
                        ..ChannelGauges::default()
                    });
                    channels.len() - 1
                }
            };
            channels[i].agents.push(AgentCount {
                release,
                state,
                agents: n,
            });
        }
        FleetGauges { channels }
    }
}

/// Upload counters (`--upload-token-file`), read at scrape time.
#[derive(Clone, Debug, Default)]
pub struct UploadCounts {
    pub objects: u64,
    pub heads: u64,
    /// Refusals by reason.
    pub refused: Vec<(&'static str, u64)>,
}

/// Every metric of one server.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    bytes: Family<KindLabels, Counter>,
    connections: Counter,
    shed: Counter,
    on_demand: Family<OnDemandLabels, Counter>,
    reports: Family<ResultLabels, Counter>,
    outcomes: Family<OutcomeLabels, Counter>,
    update_duration: Family<OutcomeLabels, Histogram, DurationBuckets>,
    rollback_duration: Family<ChannelLabels, Histogram, DurationBuckets>,
    halts: Family<ChannelLabels, Counter>,
    agents: Family<AgentLabels, Gauge>,
    release_agents: Family<ReleaseOutcomeLabels, Gauge>,
    offline: Family<ChannelLabels, Gauge>,
    bytes_saved: Family<ChannelLabels, Gauge>,
    rollout_percent: Family<ReleaseLabels, Gauge>,
    rollout_paused: Family<ChannelLabels, Gauge>,
    rollout_halted: Family<ChannelLabels, Gauge>,
    /// Held while the fleet gauges are replaced, and while they are rendered, so a
    /// scrape never sees half of an update.
    fleet: Mutex<()>,
    /// Requests and bytes as counted by each thread ([`Shard`]), and how much of them
    /// the `requests` and `bytes` series already hold: added to them when rendered.
    shards: Box<[Shard]>,
    exported: Mutex<Shard>,
}

/// Requests by kind and status class and body bytes by kind, counted by the threads
/// of one shard. A request adds to two atomics no other core writes (one shard per
/// serving thread, on a cache line of its own), with no lock or label hashing.
#[derive(Default)]
#[repr(align(128))]
struct Shard {
    requests: [[AtomicU64; CLASSES.len()]; KINDS.len()],
    bytes: [AtomicU64; KINDS.len()],
}

/// Shards of request counts (serving threads beyond this share them).
const SHARDS: usize = 16;

/// This thread's shard.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    MINE.with(|m| *m)
}

/// Every [`Kind`], in the order of its discriminant.
const KINDS: [Kind; 6] = [
    Kind::head,
    Kind::manifest,
    Kind::archive,
    Kind::diff,
    Kind::key_list,
    Kind::other,
];
/// The status classes, by `status / 100` (0 and 1 both count as 1xx).
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::default(),
            requests: Family::default(),
            bytes: Family::default(),
            connections: Counter::default(),
            shed: Counter::default(),
            on_demand: Family::default(),
            reports: Family::default(),
            outcomes: Family::default(),
            update_duration: Family::new_with_constructor(DurationBuckets),
            rollback_duration: Family::new_with_constructor(DurationBuckets),
            halts: Family::default(),
            agents: Family::default(),
            release_agents: Family::default(),
            offline: Family::default(),
            bytes_saved: Family::default(),
            rollout_percent: Family::default(),
            rollout_paused: Family::default(),
            rollout_halted: Family::default(),
            fleet: Mutex::new(()),
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            exported: Mutex::default(),
        };
        let mut r = Registry::default();
        // Counter names get their `_total` suffix from the encoder.
        r.register(
            "ferry_requests",
            "Responses sent, by object kind and status class",
            m.requests.clone(),
        );
        r.register(
            "ferry_response_bytes",
            "Body bytes of responses, by object kind",
            m.bytes.clone(),
        );
        r.register(
            "ferry_connections",
            "Connections accepted",
            m.connections.clone(),
        );
        r.register(
            "ferry_connections_shed",
            "Idle connections closed to make room",
            m.shed.clone(),
        );
        r.register(
            "ferry_diffs_on_demand",
            "Diffs made on request (serve --diffs-on-demand) and the requests for them, by result",
            m.on_demand.clone(),
        );
        r.register(
            "ferry_reports_received",
            "Agent reports received (POST /v1/reports), by result",
            m.reports.clone(),
        );
        r.register(
            "ferry_update_outcomes",
            "Update attempts reported by agents, by channel and outcome",
            m.outcomes.clone(),
        );
        r.register_with_unit(
            "ferry_update_duration",
            "Duration of reported update attempts, by channel and outcome",
            Unit::Seconds,
            m.update_duration.clone(),
        );
        r.register_with_unit(
            "ferry_rollback_duration",
            "Duration of reported rollbacks, by channel",
            Unit::Seconds,
            m.rollback_duration.clone(),
        );
        r.register(
            "ferry_rollout_halts",
            "Rollouts halted by the server's --halt-when rule, by channel",
            m.halts.clone(),
        );
        r.register(
            "ferry_agents",
            "Agents by channel, active release and latest state (offline ones included)",
            m.agents.clone(),
        );
        r.register(
            "ferry_release_agents",
            "Agents updating to, staged for, failed, rolled back from or refusing each release (their newest attempt at it), as GET /v1/fleet counts them",
            m.release_agents.clone(),
        );
        r.register(
            "ferry_agents_offline",
            "Agents without a report for 3 heartbeat intervals, by channel",
            m.offline.clone(),
        );
        r.register_with_unit(
            "ferry_fleet_saved",
            "Bytes the deltas saved against full downloads, by channel",
            Unit::Bytes,
            m.bytes_saved.clone(),
        );
        r.register(
            "ferry_rollout_percent",
            "Effective rollout percentage of the channel's newest release",
            m.rollout_percent.clone(),
        );
        r.register(
            "ferry_rollout_paused",
            "1 when the channel's rollout is paused",
            m.rollout_paused.clone(),
        );
        r.register(
            "ferry_rollout_halted",
            "1 when the channel's rollout was halted by the --halt-when rule",
            m.rollout_halted.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// One response: its object kind, status and body bytes.
    pub fn record(&self, kind: Kind, status: u16, bytes: u64) {
        let c = match status / 100 {
            0 | 1 => 0,
            2 => 1,
            3 => 2,
            4 => 3,
            _ => 4,
        };
        let shard = &self.shards[shard()];
        let k = kind as usize;
        shard.requests[k][c].fetch_add(1, Ordering::Relaxed);
        shard.bytes[k].fetch_add(bytes, Ordering::Relaxed);
    }

    /// Adds what the shards counted since the last call to the `requests` and
    /// `bytes` series (created at a kind's first request, as if counted directly).
    fn export(&self) {
        let exported = self.exported.lock().unwrap_or_else(|p| p.into_inner());
        for (k, &kind) in KINDS.iter().enumerate() {
            let mut seen = false;
            for (c, &class) in CLASSES.iter().enumerate() {
                let total: u64 = self
                    .shards
                    .iter()
                    .map(|s| s.requests[k][c].load(Ordering::Relaxed))
                    .sum();
                let done = exported.requests[k][c].swap(total, Ordering::Relaxed);
                seen |= total > 0;
                if total > done {
                    self.requests
                        .get_or_create(&RequestLabels { kind, class })
                        .inc_by(total - done);
                }
            }
            let total: u64 = self
                .shards
                .iter()
                .map(|s| s.bytes[k].load(Ordering::Relaxed))
                .sum();
            let done = exported.bytes[k].swap(total, Ordering::Relaxed);
            if seen {
                self.bytes
                    .get_or_create(&KindLabels { kind })
                    .inc_by(total.saturating_sub(done));
            }
        }
    }

    pub fn connection(&self) {
        self.connections.inc();
    }

    /// An idle connection was closed to make room for a new one.
    pub fn shed(&self) {
        self.shed.inc();
    }

    /// An on-demand diff request or job ended with `result`.
    pub fn on_demand(&self, result: OnDemandResult) {
        self.on_demand
            .get_or_create(&OnDemandLabels { result })
            .inc();
    }

    /// The counter of `result`, for a job running away from the request path.
    pub fn on_demand_counter(&self, result: OnDemandResult) -> Counter {
        self.on_demand
            .get_or_create(&OnDemandLabels { result })
            .clone()
    }

    /// A `POST /v1/reports` was answered with `result`.
    pub fn report_received(&self, result: ReportResult) {
        self.reports.get_or_create(&ResultLabels { result }).inc();
    }

    /// A newly stored report (not a duplicate): counts its update or rollback outcome
    /// and observes its duration. Heartbeats and checks that found nothing to do count
    /// nothing.
    pub fn observe_report(&self, report: &Report) {
        if report.kind == ReportKind::Heartbeat {
            return;
        }
        let outcome = match report.state {
            AgentState::RolledBack => "rolled_back",
            AgentState::Failed => "failed",
            AgentState::Refused => "refused",
            AgentState::Staged => "staged",
            // An attempt that ended idle on a new release installed it.
            AgentState::Idle if report.result == "installed" => "installed",
            _ => return,
        };
        let channel = report.channel.clone();
        let seconds = report.duration_ms as f64 / 1000.0;
        self.outcomes
            .get_or_create(&OutcomeLabels {
                channel: channel.clone(),
                outcome,
            })
            .inc();
        if report.state == AgentState::RolledBack {
            self.rollback_duration
                .get_or_create(&ChannelLabels {
                    channel: channel.clone(),
                })
                .observe(seconds);
        }
        self.update_duration
            .get_or_create(&OutcomeLabels { channel, outcome })
            .observe(seconds);
    }

    /// The server halted `channel`'s rollout by itself.
    pub fn rollout_halted(&self, channel: &str) {
        self.halts
            .get_or_create(&ChannelLabels {
                channel: channel.to_string(),
            })
            .inc();
    }

    /// Replaces every fleet gauge with `fleet` (channels and releases that left it
    /// disappear from the output).
    pub fn set_fleet(&self, fleet: &FleetGauges) {
        let _whole = self.fleet.lock().unwrap_or_else(|p| p.into_inner());
        self.agents.clear();
        self.release_agents.clear();
        self.offline.clear();
        self.bytes_saved.clear();
        self.rollout_percent.clear();
        self.rollout_paused.clear();
        self.rollout_halted.clear();
        for c in &fleet.channels {
            let channel = ChannelLabels {
                channel: c.channel.clone(),
            };
            for a in &c.agents {
                self.agents
                    .get_or_create(&AgentLabels {
                        channel: c.channel.clone(),
                        release: a.release.clone(),
                        state: a.state.name(),
                    })
                    .inc_by(clamp(a.agents));
            }
            for r in &c.releases {
                self.release_agents
                    .get_or_create(&ReleaseOutcomeLabels {
                        channel: c.channel.clone(),
                        release: r.release.clone(),
                        outcome: r.outcome,
                    })
                    .set(clamp(r.agents));
            }
            self.offline.get_or_create(&channel).set(clamp(c.offline));
            self.bytes_saved
                .get_or_create(&channel)
                .set(clamp(c.bytes_saved));
            if let Some(r) = &c.rollout {
                self.rollout_percent
                    .get_or_create(&ReleaseLabels {
                        channel: c.channel.clone(),
                        release: r.release.clone(),
                    })
                    .set(i64::from(r.percent));
                self.rollout_paused
                    .get_or_create(&channel)
                    .set(i64::from(r.paused));
                self.rollout_halted
                    .get_or_create(&channel)
                    .set(i64::from(r.halted));
            }
        }
    }

    /// The text of every metric, plus the upload counters when uploads are enabled;
    /// serve it with [`CONTENT_TYPE`].
    pub fn render(&self, uploads: Option<&UploadCounts>) -> String {
        let mut out = String::new();
        self.export();
        {
            let _whole = self.fleet.lock().unwrap_or_else(|p| p.into_inner());
            // Writing into a String cannot fail.
            let _ = text::encode_registry(&mut out, &self.registry);
        }
        if let Some(u) = uploads {
            let _ = text::encode_registry(&mut out, &upload_registry(u));
        }
        to_prometheus_text(&out)
    }
}

/// Rewrites the OpenMetrics text `prometheus-client` writes into the Prometheus text
/// format: a counter family is named with its samples' `_total` suffix in `# HELP`
/// and `# TYPE`, and the `# UNIT` and `# EOF` lines, which that format lacks, go.
fn to_prometheus_text(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len() + 64);
    for line in open_metrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let comment = ["# HELP ", "# TYPE "]
            .into_iter()
            .find(|p| line.starts_with(p));
        match comment {
            Some(prefix) => {
                let rest = &line[prefix.len()..];
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UploadKind {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UploadReason {
    reason: &'static str,
}

/// A throwaway registry holding the upload counters' current values.
fn upload_registry(u: &UploadCounts) -> Registry {
    let mut r = Registry::default();
    let uploads = Family::<UploadKind, Counter>::default();
    for (kind, n) in [("object", u.objects), ("head", u.heads)] {
        uploads.get_or_create(&UploadKind { kind }).inc_by(n);
    }
    let refused = Family::<UploadReason, Counter>::default();
    for &(reason, n) in &u.refused {
        refused.get_or_create(&UploadReason { reason }).inc_by(n);
    }
    r.register("ferry_uploads", "Uploads accepted, by kind", uploads);
    r.register(
        "ferry_upload_refused",
        "Uploads refused, by reason",
        refused,
    );
    r
}

/// The kind of what `path` names in the repository at `repo`. Objects are told apart by
/// their first bytes: a manifest's magic `FRYM`, a diff's `FRYD`; anything else in
/// `objects/` (archives, and manifest diffs, which are bare zstd frames like an
/// archive's chunks) counts as an archive. A missing object is `other`.
/// Objects whose kind is remembered, at most (a few MB).
const KIND_MEMORY: usize = 1 << 16;

fn kinds()
-> std::sync::MutexGuard<'static, std::collections::HashMap<ferry_format::id::Digest, Kind>> {
    static KINDS: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<ferry_format::id::Digest, Kind>>,
    > = std::sync::OnceLock::new();
    KINDS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

pub async fn object_kind(store: &crate::store::Store, path: &str) -> Kind {
    match parse_repo_path(path) {
        // A head log entry is a past head, kept byte for byte.
        Some(RepoPath::Head(_) | RepoPath::HeadLog(..)) => Kind::head,
        Some(RepoPath::KeyList(_)) => Kind::key_list,
        Some(RepoPath::Object(hash)) => {
            // An object's kind never changes (its name is its hash): remembered, so a
            // request costs no second open and read of the file to be counted.
            if let Some(kind) = kinds().get(&hash) {
                return *kind;
            }
            let kind = match store.magic(&object_path(&hash)).await {
                Ok(Some(m)) if &m == b"FRYM" => Kind::manifest,
                Ok(Some(m)) if &m == b"FRYD" => Kind::diff,
                Ok(_) => Kind::archive,
                Err(_) => return Kind::other,
            };
            let mut memory = kinds();
            if memory.len() >= KIND_MEMORY {
                memory.clear();
            }
            memory.insert(hash, kind);
            kind
        }
        None => Kind::other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(state: AgentState, result: &str, ms: u64) -> Report {
        Report {
            schema: ferry_format::report::REPORT_SCHEMA,
            report_id: "00112233445566778899aabbccddeeff-1".into(),
            agent_id: "00112233445566778899aabbccddeeff".into(),
            hostname: "edge-1".into(),
            labels: Default::default(),
            channel: "stable".into(),
            kind: ReportKind::Attempt,
            state,
            time: 1_790_000_000,
            active: Some("1.0.0".into()),
            previous: None,
            target: Some("2.0.0".into()),
            result: result.into(),
            error: None,
            last_check: None,
            bytes_downloaded: 0,
            bytes_reused: 0,
            bytes_full: 0,
            requests: 0,
            duration_ms: ms,
            held_back: vec![],
            ferry_version: "0.1.0".into(),
        }
    }

    fn fleet(agents: u64) -> FleetGauges {
        FleetGauges {
            channels: vec![ChannelGauges {
                channel: "stable".into(),
                rollout: Some(RolloutGauge {
                    release: "2.0.0".into(),
                    percent: 50,
                    paused: false,
                    halted: true,
                }),
                agents: vec![AgentCount {
                    release: "1.0.0".into(),
                    state: AgentState::RolledBack,
                    agents,
                }],
                offline: 1,
                bytes_saved: 1234,
                releases: vec![ReleaseOutcome {
                    release: "2.0.0".into(),
                    outcome: "rolled_back",
                    agents: 3,
                }],
            }],
        }
    }

    /// Every sample line's name, with its value.
    fn samples(text: &str) -> Vec<(String, String)> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (name, value) = l.rsplit_once(' ').unwrap();
                (name.to_string(), value.to_string())
            })
            .collect()
    }

    #[test]
    fn requests_count_under_their_kind_and_class() {
        for (i, k) in KINDS.iter().enumerate() {
            assert_eq!(*k as usize, i, "KINDS in discriminant order");
        }
        let m = Metrics::new();
        m.record(Kind::head, 200, 10);
        m.record(Kind::head, 304, 0);
        m.record(Kind::archive, 206, 100);
        m.record(Kind::archive, 206, 50);
        m.record(Kind::other, 404, 5);
        m.record(Kind::other, 101, 0);
        m.record(Kind::key_list, 503, 1);
        // Counted in another thread's shard, added alike.
        std::thread::scope(|s| {
            s.spawn(|| m.record(Kind::diff, 600, 0));
        });
        let text = m.render(None);
        for line in [
            "ferry_requests_total{kind=\"head\",class=\"2xx\"} 1",
            "ferry_requests_total{kind=\"head\",class=\"3xx\"} 1",
            "ferry_requests_total{kind=\"archive\",class=\"2xx\"} 2",
            "ferry_requests_total{kind=\"other\",class=\"4xx\"} 1",
            "ferry_requests_total{kind=\"other\",class=\"1xx\"} 1",
            "ferry_requests_total{kind=\"key_list\",class=\"5xx\"} 1",
            "ferry_requests_total{kind=\"diff\",class=\"5xx\"} 1",
            "ferry_response_bytes_total{kind=\"head\"} 10",
            "ferry_response_bytes_total{kind=\"archive\"} 150",
            "ferry_response_bytes_total{kind=\"other\"} 5",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        assert!(!text.contains("kind=\"manifest\""), "{text}");
        // A second scrape adds only what came since.
        m.record(Kind::head, 200, 5);
        let text = m.render(None);
        for line in [
            "ferry_requests_total{kind=\"head\",class=\"2xx\"} 2",
            "ferry_response_bytes_total{kind=\"head\"} 15",
            "ferry_requests_total{kind=\"archive\",class=\"2xx\"} 2",
            "ferry_response_bytes_total{kind=\"diff\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }

    #[test]
    fn every_sample_belongs_to_the_family_its_type_line_names() {
        let m = Metrics::new();
        m.record(Kind::archive, 206, 100);
        m.report_received(ReportResult::stored);
        m.observe_report(&report(AgentState::RolledBack, "rolled-back", 1500));
        m.observe_report(&report(AgentState::Idle, "installed", 700));
        m.rollout_halted("stable");
        m.set_fleet(&fleet(3));
        let uploads = UploadCounts {
            objects: 2,
            heads: 1,
            refused: vec![("auth", 4)],
        };
        let text = m.render(Some(&uploads));
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        let mut family = String::new();
        let mut kind = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (f, k) = rest.split_once(' ').unwrap();
                (family, kind) = (f.to_string(), k.to_string());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let name = line.split(['{', ' ']).next().unwrap();
            let ok = match kind.as_str() {
                "histogram" => ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name == format!("{family}{s}")),
                _ => name == family,
            };
            assert!(ok, "{name} under # TYPE {family} {kind}:\n{text}");
        }
        let s = samples(&text);
        for (name, value) in [
            (r#"ferry_requests_total{kind="archive",class="2xx"}"#, "1"),
            (r#"ferry_response_bytes_total{kind="archive"}"#, "100"),
            (r#"ferry_reports_received_total{result="stored"}"#, "1"),
            (
                r#"ferry_update_outcomes_total{channel="stable",outcome="rolled_back"}"#,
                "1",
            ),
            (
                r#"ferry_update_outcomes_total{channel="stable",outcome="installed"}"#,
                "1",
            ),
            (
                r#"ferry_rollback_duration_seconds_sum{channel="stable"}"#,
                "1.5",
            ),
            (
                r#"ferry_rollback_duration_seconds_count{channel="stable"}"#,
                "1",
            ),
            (r#"ferry_rollout_halts_total{channel="stable"}"#, "1"),
            (
                r#"ferry_agents{channel="stable",release="1.0.0",state="rolled-back"}"#,
                "3",
            ),
            (
                r#"ferry_release_agents{channel="stable",release="2.0.0",outcome="rolled_back"}"#,
                "3",
            ),
            (r#"ferry_agents_offline{channel="stable"}"#, "1"),
            (r#"ferry_fleet_saved_bytes{channel="stable"}"#, "1234"),
            (
                r#"ferry_rollout_percent{channel="stable",release="2.0.0"}"#,
                "50",
            ),
            (r#"ferry_rollout_halted{channel="stable"}"#, "1"),
            (r#"ferry_rollout_paused{channel="stable"}"#, "0"),
            (r#"ferry_uploads_total{kind="head"}"#, "1"),
            (r#"ferry_upload_refused_total{reason="auth"}"#, "4"),
            ("ferry_connections_shed_total", "0"),
        ] {
            assert!(
                s.iter().any(|(n, v)| n == name && v == value),
                "{name} {value} missing:\n{text}"
            );
        }
    }

    #[test]
    fn set_fleet_replaces_the_gauges_instead_of_adding() {
        let m = Metrics::new();
        m.set_fleet(&fleet(3));
        m.set_fleet(&fleet(2));
        let text = m.render(None);
        assert!(
            text.contains(
                "ferry_agents{channel=\"stable\",release=\"1.0.0\",state=\"rolled-back\"} 2\n"
            ),
            "{text}"
        );
        m.set_fleet(&FleetGauges::default());
        assert!(
            !m.render(None).contains("ferry_agents{"),
            "gone with the channel"
        );
    }

    #[test]
    fn fleet_gauges_come_from_the_fleet_and_agents_views() {
        let fleet = serde_json::json!({"generated_at": 1, "channels": [{
            "channel": "stable",
            "rollout": {"release": "2.0.0", "percent": 50, "paused": true, "halted": true,
                        "halt_reason": "failed 3 of 4"},
            "releases": [{"version": "2.0.0", "agents": 1, "updating": 0, "staged": 0,
                          "failed": 1, "rolled_back": 2, "refused": 0, "offline": 0}],
            "offline": [{"agent_id": "a", "hostname": "h", "last_seen": 1}],
            "bytes_saved": 900
        }]});
        let agent = |channel: &str, active: &str, state: &str| serde_json::json!({"channel": channel, "active": active, "state": state});
        let agents = serde_json::json!({"agents": [
            agent("stable", "1.0.0", "rolled-back"),
            agent("stable", "1.0.0", "rolled-back"),
            agent("stable", "2.0.0", "idle"),
            agent("beta", "3.0.0", "health-checking"),
            agent("stable", "1.0.0", "no-such-state"),
        ]});
        let g = FleetGauges::from_views(&fleet, &agents);
        assert_eq!(g.channels.len(), 2);
        let stable = &g.channels[0];
        assert_eq!(
            stable.rollout,
            Some(RolloutGauge {
                release: "2.0.0".into(),
                percent: 50,
                paused: true,
                halted: true
            })
        );
        assert_eq!((stable.offline, stable.bytes_saved), (1, 900));
        let outcome = |o: &str| {
            stable
                .releases
                .iter()
                .find(|r| r.release == "2.0.0" && r.outcome == o)
                .map(|r| r.agents)
        };
        assert_eq!(
            RELEASE_OUTCOMES.map(outcome),
            [Some(0), Some(0), Some(1), Some(2), Some(0)]
        );
        assert_eq!(
            stable.agents,
            vec![
                AgentCount {
                    release: "1.0.0".into(),
                    state: AgentState::RolledBack,
                    agents: 2
                },
                AgentCount {
                    release: "2.0.0".into(),
                    state: AgentState::Idle,
                    agents: 1
                },
            ]
        );
        assert_eq!(g.channels[1].channel, "beta");
        assert_eq!(g.channels[1].agents[0].state, AgentState::HealthChecking);
    }

    #[test]
    fn heartbeats_count_no_outcome() {
        let m = Metrics::new();
        let mut r = report(AgentState::Failed, "error", 10);
        r.kind = ReportKind::Heartbeat;
        m.observe_report(&r);
        assert!(!m.render(None).contains("ferry_update_outcomes_total{"));
    }
}
