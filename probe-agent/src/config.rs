//! The agent's command line; every flag is also an environment variable.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;

use crate::baseline::BaselineTables;

/// Sonde's node agent: captures with eBPF what Sonde resources ask for.
#[derive(Clone, Debug, Parser)]
#[command(name = "probe-agent", version, about)]
pub struct Config {
    /// Run without a cluster, from the resource YAML files in --manifests.
    #[arg(long, env = "SONDE_STANDALONE", requires = "manifests")]
    pub standalone: bool,

    /// Folder of Tracepoint/Retention/Export YAML files (standalone mode).
    #[arg(long, env = "SONDE_MANIFESTS", value_name = "DIR")]
    pub manifests: Option<PathBuf>,

    /// Standalone: capture only from these process ids (comma-separated)
    /// instead of the whole host.
    #[arg(
        long,
        env = "SONDE_TARGET_PIDS",
        value_delimiter = ',',
        conflicts_with = "target_cgroups"
    )]
    pub target_pids: Vec<u32>,

    /// Standalone: capture only from these cgroup v2 ids (comma-separated).
    #[arg(long, env = "SONDE_TARGET_CGROUPS", value_delimiter = ',')]
    pub target_cgroups: Vec<u64>,

    /// Standalone: how often the manifests folder is checked for changes.
    #[arg(long, env = "SONDE_RESCAN_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub rescan_interval: Duration,

    /// The kubelet's cgroup root (its --cgroup-root / cgroupRoot), under
    /// which it lays out pod cgroups: / unless the kubelet was told otherwise.
    #[arg(long, env = "SONDE_KUBELET_CGROUP_ROOT", default_value = "/", value_parser = parse_cgroup_root)]
    pub kubelet_cgroup_root: PathBuf,

    /// This node's name, as the cluster knows it (the downward API sets
    /// it); required in cluster mode, the host name by default standalone.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// Cluster mode: how often the agent heartbeats, by renewing its Lease
    /// in --heartbeat-namespace, or without one by writing its node's
    /// status (the operator counts an agent silent for its grace period,
    /// three intervals by default, as not reporting). The cluster is
    /// reached through KUBECONFIG, or in-cluster.
    #[arg(long, env = "SONDE_HEARTBEAT_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,

    /// Cluster mode: the namespace of the agent's heartbeat Lease (named
    /// after the node), the one the operator runs in; the downward API sets
    /// it. Unset: the heartbeat is a write of the node's status.
    #[arg(long, env = "POD_NAMESPACE")]
    pub heartbeat_namespace: Option<String>,

    /// Cluster mode, with a heartbeat Lease: how often the node's status is
    /// written when no state changes, to update its event counts. A state
    /// change is written at once. Each write sends the whole ProbeNode
    /// through the apiserver to every watcher: at 1,000 nodes every 60 s
    /// is 17 writes a second of ~50 KB objects, more than a two-core
    /// control plane keeps up with; 5 minutes is the kubelet's own default
    /// for node status with Lease heartbeats. The agent's metrics have the
    /// counts as they happen.
    #[arg(long, env = "SONDE_STATUS_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub status_interval: Duration,

    /// Where tracefs is mounted; found in /proc/mounts' usual places if unset.
    #[arg(long, env = "SONDE_TRACEFS", value_name = "DIR")]
    pub tracefs: Option<PathBuf>,

    /// Where Arrow Flight and Flight SQL are served (one port for both).
    #[arg(long, env = "SONDE_FLIGHT_ADDR", default_value = "127.0.0.1:50051")]
    pub flight_addr: SocketAddr,

    /// Where Prometheus metrics are served, at /metrics, such as
    /// 127.0.0.1:9464 (the port OpenTelemetry's Prometheus exporters use);
    /// none: not served.
    #[arg(long, env = "SONDE_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Bearer token Flight clients must send; none: no authentication.
    #[arg(long, env = "SONDE_FLIGHT_TOKEN", hide_env_values = true)]
    pub flight_token: Option<String>,

    /// TLS certificate (PEM) for the Flight endpoint; needs --flight-tls-key.
    #[arg(long, env = "SONDE_FLIGHT_TLS_CERT", requires = "flight_tls_key")]
    pub flight_tls_cert: Option<PathBuf>,

    /// TLS private key (PEM) for the Flight endpoint.
    #[arg(long, env = "SONDE_FLIGHT_TLS_KEY", requires = "flight_tls_cert")]
    pub flight_tls_key: Option<PathBuf>,

    /// The Flight URL this agent reports in its ProbeNode status, where
    /// sonde-query reaches it (Flight and the cluster-query worker); by
    /// default `http(s)://<host>:<port>` of the bound address, the host
    /// being $POD_IP when the address is unspecified (0.0.0.0).
    #[arg(long, env = "SONDE_FLIGHT_ENDPOINT")]
    pub flight_endpoint: Option<String>,

    /// Memory one SQL query may use (bytes, or a quantity such as 256Mi).
    #[arg(long, env = "SONDE_QUERY_MEMORY", default_value = "256Mi", value_parser = parse_bytes)]
    pub query_memory: u64,

    /// Memory all tables together may hold (bytes, or a quantity such as 512Mi).
    #[arg(long, env = "SONDE_MEMORY_BUDGET", default_value = "512Mi", value_parser = parse_bytes)]
    pub memory_budget: u64,

    /// Age of its newest row after which a table's batches are compacted
    /// into compressed cold batches (a run of batches that is not full yet
    /// waits ten times as long); a short one such as 1ms compacts at every
    /// upkeep.
    #[arg(long, env = "SONDE_COLD_AFTER", default_value = "30s", value_parser = parse_duration)]
    pub cold_after: Duration,

    /// Memory for decoded cold batches kept for reads, all tables together
    /// (bytes, or a quantity such as 64Mi); not counted in --memory-budget.
    #[arg(long, env = "SONDE_DECODE_CACHE", default_value = "64Mi", value_parser = parse_bytes)]
    pub decode_cache: u64,

    /// Ring buffer size in bytes (a power of two, at least one page).
    #[arg(long, env = "SONDE_RING_BYTES", default_value_t = 8 << 20)]
    pub ring_bytes: u32,

    /// Ring fill level, in bytes, at which a record wakes the reader early
    /// (and again at each further quarter of it).
    #[arg(long, env = "SONDE_WAKEUP_BYTES", default_value_t = 2 << 20)]
    pub wakeup_bytes: u64,

    /// How often the ring buffer is drained when no wake-up comes first.
    #[arg(long, env = "SONDE_DRAIN_INTERVAL", default_value = "50ms", value_parser = parse_duration)]
    pub drain_interval: Duration,

    /// How often a summary of what was captured and lost is logged.
    #[arg(long, env = "SONDE_REPORT_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub report_interval: Duration,

    /// Baseline tables (schema `sonde`) collected with no Tracepoint: `all`,
    /// `none`, or a comma-separated list (process_stats, network_stats,
    /// http_events, conn_stats).
    #[arg(long, env = "SONDE_BASELINE_TABLES", default_value = "all")]
    pub baseline_tables: BaselineTables,

    /// How often `sonde.process_stats` samples every process from /proc.
    #[arg(long, env = "SONDE_PROCESS_STATS_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub process_stats_interval: Duration,

    /// Most processes one `sonde.process_stats` sample reads (lowest pids
    /// first); the rest are counted in sonde_baseline_dropped_total.
    #[arg(long, env = "SONDE_PROCESS_STATS_MAX", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub process_stats_max: u32,

    /// How often `sonde.network_stats` reads every cgroup's traffic counters.
    #[arg(long, env = "SONDE_NETWORK_STATS_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub network_stats_interval: Duration,

    /// How often `sonde.conn_stats` samples every traced connection.
    #[arg(long, env = "SONDE_CONN_STATS_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub conn_stats_interval: Duration,

    /// Bytes of each HTTP request and response body `sonde.http_events`
    /// keeps (req_body, resp_body); 0 keeps none.
    #[arg(long, env = "SONDE_HTTP_BODY_BYTES", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=4096))]
    pub http_body_bytes: u32,

    /// Keep HTTP headers in `sonde.http_events` (req_headers,
    /// resp_headers); off by default, as they may carry credentials.
    #[arg(long, env = "SONDE_HTTP_HEADERS")]
    pub http_headers: bool,

    /// Size of the socket programs' ring buffer (a power of two, at least
    /// one page): HTTP bytes copied from the kernel wait there.
    #[arg(long, env = "SONDE_SOCKET_RING_BYTES", default_value_t = 8 << 20)]
    pub socket_ring_bytes: u32,

    /// How long a /metrics scrape waits for the drive loop's counters;
    /// past it the scrape serves the last ones it got and counts the miss
    /// (sonde_scrape_report_misses_total).
    #[arg(long, env = "SONDE_SCRAPE_TIMEOUT", default_value = "500ms", value_parser = parse_duration)]
    pub scrape_timeout: Duration,
}

impl Config {
    /// The Flight URL to report, for a port bound at `bound`.
    pub fn advertised_flight_endpoint(&self, bound: SocketAddr) -> Option<String> {
        if let Some(endpoint) = &self.flight_endpoint {
            return Some(endpoint.clone());
        }
        let scheme = if self.flight_tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        let host = if bound.ip().is_unspecified() {
            std::env::var("POD_IP").ok().filter(|ip| !ip.is_empty())?
        } else {
            bound.ip().to_string()
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        Some(format!("{scheme}://{host}:{}", bound.port()))
    }

    /// The node name: as given, or standalone the host name.
    pub fn node_name(&self) -> Result<String, String> {
        match (&self.node_name, self.standalone) {
            (Some(name), _) if !name.is_empty() => Ok(name.clone()),
            (_, true) => Ok(default_node_name()),
            _ => Err(
                "cluster mode needs the node's name: pass --node-name or set NODE_NAME \
                 (the downward API's spec.nodeName); or run --standalone --manifests DIR"
                    .to_owned(),
            ),
        }
    }

    /// Whom standalone Tracepoints capture from.
    pub fn targets(&self) -> probe_capture::loader::Targets {
        use probe_capture::loader::Targets;
        if !self.target_pids.is_empty() {
            Targets::Pids(self.target_pids.clone())
        } else if !self.target_cgroups.is_empty() {
            Targets::Cgroups(self.target_cgroups.clone())
        } else {
            Targets::All
        }
    }
}

fn default_node_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Parses a byte count or a Kubernetes quantity (`512Mi`, `1G`).
fn parse_bytes(text: &str) -> Result<u64, String> {
    crds::units::parse_bytes(&k8s_openapi::apimachinery::pkg::api::resource::Quantity(
        text.to_owned(),
    ))
    .map_err(|e| e.to_string())
    .and_then(|bytes| {
        if bytes == 0 {
            Err(format!("{text:?} must be greater than zero"))
        } else {
            Ok(bytes)
        }
    })
}

/// Parses `250ms`, `10s`, `2m`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} needs a unit: ms, s or m"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a number"))?;
    let duration = match unit {
        "ms" => Duration::from_millis(number),
        "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number * 60),
        _ => {
            return Err(format!(
                "{text:?} has unknown unit {unit:?}: use ms, s or m"
            ));
        }
    };
    if duration.is_zero() {
        return Err(format!("{text:?} must be greater than zero"));
    }
    Ok(duration)
}

/// An absolute cgroup path with no `..`, such as / or /kubelet.
fn parse_cgroup_root(text: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(text);
    if !path.is_absolute() {
        return Err(format!(
            "{text:?} is not an absolute cgroup path such as / or /kubelet"
        ));
    }
    if path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!("{text:?} must not contain .."));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(
            parse_duration("10")
                .expect_err("no unit")
                .contains("needs a unit")
        );
        assert!(
            parse_duration("10h")
                .expect_err("bad unit")
                .contains("unknown unit")
        );
        assert!(
            parse_duration("0s")
                .expect_err("zero")
                .contains("greater than zero")
        );
    }

    #[test]
    fn kubelet_cgroup_roots_are_absolute_without_parents() {
        assert_eq!(parse_cgroup_root("/"), Ok(PathBuf::from("/")));
        assert_eq!(parse_cgroup_root("/kubelet"), Ok(PathBuf::from("/kubelet")));
        assert!(
            parse_cgroup_root("kubelet")
                .expect_err("relative")
                .contains("absolute")
        );
        assert!(
            parse_cgroup_root("/a/../b")
                .expect_err("parent")
                .contains("..")
        );
    }

    #[test]
    fn standalone_needs_manifests() {
        let err =
            Config::try_parse_from(["probe-agent", "--standalone"]).expect_err("needs --manifests");
        assert!(err.to_string().contains("--manifests"), "{err}");
        let config =
            Config::try_parse_from(["probe-agent", "--standalone", "--manifests", "examples"])
                .expect("valid flags");
        assert_eq!(config.drain_interval, Duration::from_millis(50));
        assert_eq!(config.memory_budget, 512 << 20);
        assert_eq!(config.metrics_addr, None);
        assert_eq!(config.process_stats_interval, Duration::from_secs(10));
        assert_eq!(config.process_stats_max, 4096);
        assert_eq!(config.baseline_tables, "all".parse().expect("valid"));
    }

    #[test]
    fn cluster_mode_needs_a_node_name() {
        let config = Config::try_parse_from(["probe-agent"]).expect("valid flags");
        let err = config.node_name().expect_err("no node name");
        assert!(err.contains("--node-name"), "{err}");
        let config = Config::try_parse_from([
            "probe-agent",
            "--node-name",
            "node-a",
            "--heartbeat-interval",
            "2s",
        ])
        .expect("valid flags");
        assert_eq!(config.node_name(), Ok("node-a".to_owned()));
        assert_eq!(config.heartbeat_interval, Duration::from_secs(2));
        let standalone =
            Config::try_parse_from(["probe-agent", "--standalone", "--manifests", "examples"])
                .expect("valid flags");
        assert!(standalone.node_name().is_ok_and(|n| !n.is_empty()));
    }

    #[test]
    fn refuses_unknown_baseline_tables() {
        let err = Config::try_parse_from([
            "probe-agent",
            "--standalone",
            "--manifests",
            "examples",
            "--baseline-tables",
            "process_stats,htttp_events",
        ])
        .expect_err("unknown table");
        assert!(err.to_string().contains("htttp_events"), "{err}");
        let err = Config::try_parse_from(["probe-agent", "--process-stats-max", "0"])
            .expect_err("zero processes");
        assert!(err.to_string().contains("process-stats-max"), "{err}");
    }

    #[test]
    fn parses_byte_sizes() {
        assert_eq!(parse_bytes("64Mi"), Ok(64 << 20));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("lots").is_err());
    }
}
