//! Specs for tests, shared with other crates' tests through the `testdata`
//! feature: the examples, and a table of invalid specs with the exact
//! [`validate`](crate::TracepointSpec::validate) message each must produce
//! and what the apiserver is expected to say about it.
//!
//! The cluster tests apply every [`INVALID_SPECS`] manifest with a server
//! dry-run: the ones marked [`Apiserver::RejectsByCel`] or
//! [`Apiserver::RejectsByOpenApi`] must be refused with a message containing
//! the given text; the ones marked [`Apiserver::Accepts`] pass the schema and
//! are only caught by `validate()` (reported in status by the operator).

/// The example manifests in `examples/`, by file name.
pub const EXAMPLES: [(&str, &str); 6] = [
    (
        "file-opens.yaml",
        include_str!("../../examples/file-opens.yaml"),
    ),
    (
        "process-execs.yaml",
        include_str!("../../examples/process-execs.yaml"),
    ),
    (
        "request-latency.yaml",
        include_str!("../../examples/request-latency.yaml"),
    ),
    (
        "request-usdt.yaml",
        include_str!("../../examples/request-usdt.yaml"),
    ),
    (
        "retention.yaml",
        include_str!("../../examples/retention.yaml"),
    ),
    (
        "export-otlp.yaml",
        include_str!("../../examples/export-otlp.yaml"),
    ),
];

/// What the apiserver does with an invalid spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Apiserver {
    /// A CEL rule (`x-kubernetes-validations`) rejects it; its message
    /// contains this text.
    RejectsByCel(&'static str),
    /// The OpenAPI part of the schema (pattern, bounds, enum) rejects it;
    /// the apiserver's message contains this text.
    RejectsByOpenApi(&'static str),
    /// The schema cannot tell; only `validate()` catches it.
    Accepts,
}

/// An invalid resource and how it must be refused.
#[derive(Debug, Clone, Copy)]
pub struct InvalidSpec {
    /// What is wrong, in a few words; also the resource's metadata.name.
    pub name: &'static str,
    /// The complete manifest, as a user would apply it.
    pub manifest: &'static str,
    /// The exact message of the error `validate()` returns.
    pub error: &'static str,
    /// What the apiserver does with it.
    pub apiserver: Apiserver,
}

macro_rules! manifest {
    ($kind:literal, $name:literal, $spec:literal) => {
        concat!(
            "apiVersion: sonde.dev/v1alpha1\nkind: ",
            $kind,
            "\nmetadata:\n  name: ",
            $name,
            "\nspec:\n",
            $spec
        )
    };
}

macro_rules! invalid {
    ($kind:literal, $name:literal, $spec:literal, $error:expr, $apiserver:expr $(,)?) => {
        InvalidSpec {
            name: $name,
            manifest: manifest!($kind, $name, $spec),
            error: $error,
            apiserver: $apiserver,
        }
    };
}

use Apiserver::{Accepts, RejectsByCel, RejectsByOpenApi};

/// Invalid specs, each with one thing wrong.
pub const INVALID_SPECS: &[InvalidSpec] = &[
    invalid!(
        "Tracepoint",
        "no-probe-kind",
        "  probe: {}\n  table: opens\n",
        "spec.probe sets no probe kind; set exactly one of tracepoint, rawTracepoint, uprobe, \
         uretprobe, usdt, kprobe or kretprobe",
        RejectsByCel("set exactly one probe kind"),
    ),
    invalid!(
        "Tracepoint",
        "two-probe-kinds",
        "  probe:
    tracepoint: {group: syscalls, name: sys_enter_openat}
    kprobe: {function: do_sys_openat2}
  table: opens
",
        "spec.probe sets 2 probe kinds (tracepoint, kprobe); set exactly one",
        RejectsByCel("set exactly one probe kind"),
    ),
    invalid!(
        "Tracepoint",
        "standard-column-name",
        "  probe:
    tracepoint: {group: syscalls, name: sys_enter_openat}
  fields:
    - {name: filename, type: string}
    - {name: pid, source: dfd}
  table: opens
",
        "spec.fields[1].name \"pid\" collides with the standard column pid",
        RejectsByCel("field name must not be a standard column"),
    ),
    invalid!(
        "Tracepoint",
        "uppercase-column-name",
        "  probe:
    tracepoint: {group: syscalls, name: sys_enter_openat}
  fields:
    - {name: FileName, source: filename, type: string}
  table: opens
",
        "spec.fields[0].name \"FileName\" is not a valid column name: use 1 to 63 lowercase \
         letters, digits and _, not starting with a digit",
        RejectsByOpenApi("should match '^[a-z_][a-z0-9_]*$'"),
    ),
    invalid!(
        "Tracepoint",
        "duplicate-field-name",
        "  probe:
    tracepoint: {group: syscalls, name: sys_enter_openat}
  fields:
    - {name: filename, type: string}
    - {name: filename, source: flags}
  table: opens
",
        "spec.fields[1].name \"filename\" is already used by spec.fields[0].name",
        RejectsByCel("field names must be unique"),
    ),
    invalid!(
        "Tracepoint",
        "uprobe-symbol-and-offset",
        "  probe:
    uprobe: {binary: /usr/local/bin/app, symbol: handle_request, offset: 4096}
  table: calls
",
        "spec.probe.uprobe must set exactly one of symbol and offset",
        RejectsByCel("set exactly one of symbol and offset"),
    ),
    invalid!(
        "Tracepoint",
        "uprobe-relative-binary",
        "  probe:
    uprobe: {binary: bin/app, symbol: handle_request}
  table: calls
",
        "spec.probe.uprobe.binary \"bin/app\" must be an absolute path such as /usr/local/bin/app",
        RejectsByOpenApi("should match '^/'"),
    ),
    invalid!(
        "Tracepoint",
        "uprobe-parent-segment",
        "  probe:
    uprobe: {binary: /app/../../usr/bin/sudo, symbol: main}
  table: calls
",
        "spec.probe.uprobe.binary \"/app/../../usr/bin/sudo\" must not contain .. segments",
        RejectsByCel("binary must not contain .. segments"),
    ),
    invalid!(
        "Tracepoint",
        "uprobe-argument-without-type",
        "  probe:
    uprobe: {binary: /usr/local/bin/app, symbol: handle_request}
  fields:
    - {name: request_id, source: arg0}
  table: calls
",
        "spec.fields[0].type is required for \"arg0\" on a uprobe probe: only tracepoint formats \
         describe their fields",
        RejectsByCel("fields need a type unless the probe is a tracepoint"),
    ),
    invalid!(
        "Tracepoint",
        "latency-on-entry-probe",
        "  probe:
    uprobe: {binary: /usr/local/bin/app, symbol: handle_request}
  fields:
    - {name: latency}
  table: calls
",
        "spec.fields[0].name \"latency\" is not available on a uprobe probe, which offers \
         arg0..arg5",
        RejectsByCel("field source does not fit the probe"),
    ),
    invalid!(
        "Tracepoint",
        "kprobe-seventh-argument",
        "  probe:
    kprobe: {function: tcp_v4_connect}
  fields:
    - {name: flags, source: arg6, type: u32}
  table: connects
",
        "spec.fields[0].source \"arg6\" is not available on a kprobe probe, which offers \
         arg0..arg5",
        RejectsByCel("field source does not fit the probe"),
    ),
    invalid!(
        "Tracepoint",
        "latency-not-u64",
        "  probe:
    uretprobe: {binary: /usr/local/bin/app, symbol: handle_request}
  fields:
    - {name: latency, type: u32}
  table: latency
",
        "spec.fields[0].type is u32, but latency is a u64 count of nanoseconds",
        RejectsByCel("latency is a u64 count of nanoseconds"),
    ),
    invalid!(
        "Tracepoint",
        "max-length-on-integer",
        "  probe:
    tracepoint: {group: syscalls, name: sys_enter_openat}
  fields:
    - {name: flags, type: u32, maxLength: 16}
  table: opens
",
        "spec.fields[0].maxLength applies only to string fields, and this field is u32",
        RejectsByCel("maxLength applies only to string fields"),
    ),
    invalid!(
        "Tracepoint",
        "max-length-too-large",
        "  probe:
    tracepoint: {group: syscalls, name: sys_enter_openat}
  fields:
    - {name: filename, type: string, maxLength: 4096}
  table: opens
",
        "spec.fields[0].maxLength is 4096; it must be between 1 and 256",
        RejectsByOpenApi("should be less than or equal to 256"),
    ),
    invalid!(
        "Tracepoint",
        "filter-on-unknown-field",
        "  probe:
    tracepoint: {group: syscalls, name: sys_enter_openat}
  fields:
    - {name: filename, type: string}
  filters:
    - {field: flags, op: mask, value: 64}
  table: opens
",
        "spec.filters[0].field \"flags\" is neither one of the fields nor a standard column \
         known in the kernel (pid, tid, comm, cgroup_id)",
        RejectsByCel("every filter field must name one of the fields"),
    ),
    invalid!(
        "Tracepoint",
        "filter-on-pod",
        "  probe:
    tracepoint: {group: syscalls, name: sys_enter_openat}
  filters:
    - {field: pod, op: eq, value: web-0}
  table: opens
",
        "spec.filters[0].field \"pod\" is neither one of the fields nor a standard column known \
         in the kernel (pid, tid, comm, cgroup_id)",
        RejectsByCel("every filter field must name one of the fields"),
    ),
    invalid!(
        "Tracepoint",
        "prefix-on-integer",
        "  probe:
    tracepoint: {group: syscalls, name: sys_enter_openat}
  fields:
    - {name: flags, type: u32}
  filters:
    - {field: flags, op: prefix, value: '1'}
  table: opens
",
        "spec.filters[0].op prefix cannot test flags, which is u32: integer columns take eq, ne, \
         mask, lt, le, gt, ge or range",
        RejectsByCel("filter op does not fit the field type"),
    ),
    invalid!(
        "Tracepoint",
        "range-with-value",
        "  probe:
    tracepoint: {group: syscalls, name: sys_enter_openat}
  fields:
    - {name: flags, type: u32}
  filters:
    - {field: flags, op: range, value: 5}
  table: opens
",
        "spec.filters[0]: op range takes min and max and no value",
        RejectsByCel("range filters take min and max, every other op takes value"),
    ),
    invalid!(
        "Tracepoint",
        "range-min-over-max",
        "  probe:
    tracepoint: {group: syscalls, name: sys_enter_openat}
  fields:
    - {name: flags, type: u32}
  filters:
    - {field: flags, op: range, min: 10, max: 1}
  table: opens
",
        "spec.filters[0]: range min 10 is greater than max 1, so nothing would match",
        RejectsByCel("range min must not be greater than max"),
    ),
    invalid!(
        "Tracepoint",
        "less-than-a-string",
        "  probe:
    tracepoint: {group: syscalls, name: sys_enter_openat}
  fields:
    - {name: flags, type: u32}
  filters:
    - {field: flags, op: lt, value: ten}
  table: opens
",
        "spec.filters[0].value: op lt takes an integer",
        RejectsByCel("lt, le, gt, ge and mask take an integer value"),
    ),
    invalid!(
        "Tracepoint",
        "integer-for-string-field",
        "  probe:
    tracepoint: {group: syscalls, name: sys_enter_openat}
  fields:
    - {name: filename, type: string}
  filters:
    - {field: filename, op: eq, value: 5}
  table: opens
",
        "spec.filters[0].value must be a string because filename is string",
        RejectsByCel("filter value must be a string for string fields"),
    ),
    invalid!(
        "Tracepoint",
        "operand-beyond-field-type",
        "  probe:
    kprobe: {function: do_sys_openat2}
  fields:
    - {name: mode, source: arg3, type: u8}
  filters:
    - {field: mode, op: eq, value: 300}
  table: opens
",
        "spec.filters[0].value 300 does not fit mode, which is u8, so the filter could never \
         match as written",
        Accepts,
    ),
    invalid!(
        "Tracepoint",
        "zero-mask",
        "  probe:
    tracepoint: {group: syscalls, name: sys_enter_openat}
  fields:
    - {name: flags, type: u32}
  filters:
    - {field: flags, op: mask, value: 0}
  table: opens
",
        "spec.filters[0].value is 0; a mask filter tests (field & value) != 0, which never holds \
         for 0",
        Accepts,
    ),
    invalid!(
        "Tracepoint",
        "comm-longer-than-kernel-keeps",
        "  probe:
    tracepoint: {group: syscalls, name: sys_enter_openat}
  filters:
    - {field: comm, op: eq, value: a-very-long-process-name}
  table: opens
",
        "spec.filters[0].value is 24 bytes, longer than the 15 bytes captured of comm, so it \
         could never match",
        Accepts,
    ),
    invalid!(
        "Tracepoint",
        "sampling-zero",
        "  probe:
    tracepoint: {group: syscalls, name: sys_enter_openat}
  sampling: {oneIn: 0}
  table: opens
",
        "spec.sampling.oneIn is 0; it must be between 1 and 1000000",
        RejectsByOpenApi("should be greater than or equal to 1"),
    ),
    invalid!(
        "Tracepoint",
        "rate-limit-too-high",
        "  probe:
    tracepoint: {group: syscalls, name: sys_enter_openat}
  rateLimit: {eventsPerSecond: 20000000}
  table: opens
",
        "spec.rateLimit.eventsPerSecond is 20000000; it must be between 1 and 10000000",
        RejectsByOpenApi("should be less than or equal to 10000000"),
    ),
    invalid!(
        "Tracepoint",
        "table-name-with-dash",
        "  probe:
    tracepoint: {group: syscalls, name: sys_enter_openat}
  table: file-opens
",
        "spec.table \"file-opens\" is not a valid table name: use 1 to 63 lowercase letters, \
         digits and _, not starting with a digit",
        RejectsByOpenApi("should match '^[a-z_][a-z0-9_]*$'"),
    ),
    invalid!(
        "Tracepoint",
        "ttl-zero",
        "  probe:
    tracepoint: {group: syscalls, name: sys_enter_openat}
  table: opens
  ttl: 0s
",
        "spec.ttl \"0s\" is zero; it must be a positive duration such as 30s or 1h",
        RejectsByCel("ttl must be a positive duration"),
    ),
    invalid!(
        "Tracepoint",
        "ttl-in-days",
        "  probe:
    tracepoint: {group: syscalls, name: sys_enter_openat}
  table: opens
  ttl: 7d
",
        "spec.ttl \"7d\" has unknown unit \"d\"; units are ns, us, ms, s, m and h (there is no d: \
         write 24h)",
        RejectsByOpenApi("spec.ttl in body should match"),
    ),
    invalid!(
        "Tracepoint",
        "histogram-without-buckets",
        "  probe:
    uretprobe: {binary: /usr/local/bin/app, symbol: handle_request}
  fields:
    - {name: latency}
  table: latency
  metrics:
    - {name: request_latency, kind: histogram, value: latency}
",
        "spec.metrics[0].buckets is required: a histogram needs bucket upper bounds",
        RejectsByCel("histograms need value and buckets"),
    ),
    invalid!(
        "Tracepoint",
        "buckets-not-increasing",
        "  probe:
    uretprobe: {binary: /usr/local/bin/app, symbol: handle_request}
  fields:
    - {name: latency}
  table: latency
  metrics:
    - {name: request_latency, kind: histogram, value: latency, buckets: [1000, 5000, 2000]}
",
        "spec.metrics[0].buckets[2] is 2000, not greater than the bound before it (5000); \
         buckets must strictly increase",
        RejectsByCel("buckets must be strictly increasing"),
    ),
    invalid!(
        "Tracepoint",
        "metric-label-not-a-column",
        "  probe:
    tracepoint: {group: syscalls, name: sys_enter_openat}
  fields:
    - {name: filename, type: string}
  table: opens
  metrics:
    - {name: opens, kind: counter, labels: [path]}
",
        "spec.metrics[0].labels[0] \"path\" is neither one of the fields nor a standard column",
        RejectsByCel("metric labels must name fields or standard columns"),
    ),
    invalid!(
        "Tracepoint",
        "metric-value-not-a-field",
        "  probe:
    tracepoint: {group: syscalls, name: sys_enter_openat}
  table: opens
  metrics:
    - {name: opened_bytes, kind: counter, value: size}
",
        "spec.metrics[0].value \"size\" is not one of the fields",
        RejectsByCel("metric value must name one of the fields"),
    ),
    invalid!(
        "Tracepoint",
        "metric-name-reserved",
        "  probe:
    tracepoint: {group: syscalls, name: sys_enter_openat}
  table: opens
  metrics:
    - {name: sonde_opens, kind: counter}
",
        "spec.metrics[0].name \"sonde_opens\" starts with sonde_, which is reserved for Sonde's \
         own metrics",
        RejectsByCel("metric names starting with sonde_ are reserved"),
    ),
    invalid!(
        "Tracepoint",
        "metric-max-series-too-high",
        "  probe:
    tracepoint: {group: syscalls, name: sys_enter_openat}
  table: opens
  metrics:
    - {name: opens, kind: counter, labels: [pid], maxSeries: 200000}
",
        "spec.metrics[0].maxSeries is 200000; it must be between 1 and 100000",
        RejectsByOpenApi("should be less than or equal to 100000"),
    ),
    invalid!(
        "Tracepoint",
        "selector-unknown-operator",
        "  selector:
    matchExpressions:
      - {key: app, operator: Equals, values: [web]}
  probe:
    tracepoint: {group: syscalls, name: sys_enter_openat}
  table: opens
",
        "spec.selector.matchExpressions[0].operator \"Equals\" is not a selector operator; use \
         In, NotIn, Exists or DoesNotExist",
        Accepts,
    ),
    invalid!(
        "Tracepoint",
        "probe-container-not-selected",
        "  containers: [web]
  probe:
    uprobe: {binary: /usr/local/bin/app, symbol: handle_request, container: sidecar}
  table: calls
",
        "spec.probe.uprobe.container \"sidecar\" is not among spec.containers, so the probe \
         would never fire",
        Accepts,
    ),
    invalid!(
        "Retention",
        "retention-without-limits",
        "  tables: [opens]\n",
        "spec sets none of maxBytes, maxAge and rollups, so it would have no effect",
        RejectsByCel("set at least one of maxBytes, maxAge and rollups"),
    ),
    invalid!(
        "Retention",
        "retention-max-bytes-unit",
        "  tables: [opens]\n  maxBytes: 64MB\n",
        "spec.maxBytes \"64MB\" is not a byte size; write a number of bytes, optionally with a \
         suffix Ki, Mi, Gi, Ti, Pi, Ei (powers of 1024) or k, M, G, T, P, E (powers of 1000), \
         such as 64Mi",
        RejectsByCel("maxBytes must be a positive number of bytes or a quantity such as 64Mi"),
    ),
    invalid!(
        "Retention",
        "rollup-of-a-pattern",
        "  tables: ['opens*']
  rollups:
    - name: opens_1m
      interval: 1m
      aggregates: [{fn: count}]
      keep: 24h
",
        "spec.tables must name exactly one table without wildcards when rollups are set, so \
         that each rollup has one source",
        RejectsByCel("rollups need tables to hold exactly one table name without wildcards"),
    ),
    invalid!(
        "Retention",
        "percentile-without-column",
        "  tables: [request_latency]
  rollups:
    - name: request_latency_1m
      interval: 1m
      aggregates: [{fn: p99}]
      keep: 24h
",
        "spec.rollups[0].aggregates[0].column is required: p99 aggregates a column (only count \
         does not)",
        RejectsByCel("every aggregate except count needs a column"),
    ),
    invalid!(
        "Retention",
        "rollup-kept-shorter-than-interval",
        "  tables: [request_latency]
  rollups:
    - name: request_latency_1h
      interval: 1h
      aggregates: [{fn: count}]
      keep: 30m
",
        "spec.rollups[0].keep \"30m\" is shorter than spec.rollups[0].interval \"1h\"",
        Accepts,
    ),
    invalid!(
        "Retention",
        "detect-unknown-column",
        "  tables: [request_latency]
  rollups:
    - name: request_latency_1m
      interval: 1m
      aggregates: [{fn: count}, {fn: p99, column: latency}]
      keep: 24h
      detect: [{column: p90_latency, method: levelShift}]
",
        "spec.rollups[0].detect[0].column \"p90_latency\" is not an output column of this \
         rollup, which writes count, p99_latency",
        RejectsByCel("detect columns must be output columns of the rollup"),
    ),
    invalid!(
        "Retention",
        "detect-sensitivity-out-of-range",
        "  tables: [request_latency]
  rollups:
    - name: request_latency_1m
      interval: 1m
      aggregates: [{fn: count}]
      keep: 24h
      detect: [{column: count, method: levelShift, sensitivity: 0}]
",
        "spec.rollups[0].detect[0].sensitivity is 0; it must be between 1 and 99",
        RejectsByOpenApi("should be greater than or equal to 1"),
    ),
    invalid!(
        "Retention",
        "detect-warm-up-too-short",
        "  tables: [request_latency]
  rollups:
    - name: request_latency_1m
      interval: 1m
      aggregates: [{fn: count}]
      keep: 24h
      detect: [{column: count, method: levelShift, warmUp: 2}]
",
        "spec.rollups[0].detect[0].warmUp is 2; it must be between 3 and 1000",
        RejectsByOpenApi("should be greater than or equal to 3"),
    ),
    invalid!(
        "Retention",
        "siblings-without-across",
        "  tables: [request_latency]
  rollups:
    - name: request_latency_1m
      interval: 1m
      groupBy: [pod]
      aggregates: [{fn: count}]
      keep: 24h
      detect: [{column: count, method: siblings}]
",
        "spec.rollups[0].detect[0].across is required by the siblings method: name the \
         groupBy column that tells siblings apart, such as pod",
        RejectsByCel("across is required by the siblings method and allowed only there"),
    ),
    invalid!(
        "Retention",
        "across-not-grouped",
        "  tables: [request_latency]
  rollups:
    - name: request_latency_1m
      interval: 1m
      groupBy: [pod]
      aggregates: [{fn: count}]
      keep: 24h
      detect: [{column: count, method: siblings, across: container}]
",
        "spec.rollups[0].detect[0].across \"container\" is not one of the rollup's groupBy \
         columns",
        RejectsByCel("across must be one of the rollup's groupBy columns"),
    ),
    invalid!(
        "Retention",
        "season-not-whole-intervals",
        "  tables: [request_latency]
  rollups:
    - name: request_latency_1m
      interval: 1m
      aggregates: [{fn: count}]
      keep: 24h
      detect: [{column: count, method: forecastBand, season: 90s}]
",
        "spec.rollups[0].detect[0].season \"90s\" must be a whole number of intervals, at \
         least two",
        Accepts,
    ),
    invalid!(
        "Retention",
        "season-on-level-shift",
        "  tables: [request_latency]
  rollups:
    - name: request_latency_1m
      interval: 1m
      aggregates: [{fn: count}]
      keep: 24h
      detect: [{column: count, method: levelShift, season: 1h}]
",
        "spec.rollups[0].detect[0].season \"1h\" applies only to the forecastBand method",
        RejectsByCel("season applies only to the forecastBand method"),
    ),
    invalid!(
        "Retention",
        "keep-raw-without-detect",
        "  tables: [request_latency]
  rollups:
    - name: request_latency_1m
      interval: 1m
      aggregates: [{fn: count}]
      keep: 24h
      keepRaw: {around: 5m, maxBytes: 16Mi}
",
        "spec.rollups[0].keepRaw keeps raw rows around anomalies, so it needs detect",
        RejectsByCel("keepRaw keeps raw rows around anomalies, so it needs detect"),
    ),
    invalid!(
        "Retention",
        "keep-raw-bad-size",
        "  tables: [request_latency]
  rollups:
    - name: request_latency_1m
      interval: 1m
      aggregates: [{fn: count}]
      keep: 24h
      detect: [{column: count, method: levelShift}]
      keepRaw: {around: 5m, maxBytes: 16MB}
",
        "spec.rollups[0].keepRaw.maxBytes \"16MB\" is not a byte size; write a number of \
         bytes, optionally with a suffix Ki, Mi, Gi, Ti, Pi, Ei (powers of 1024) or k, M, G, T, \
         P, E (powers of 1000), such as 64Mi",
        Accepts,
    ),
    invalid!(
        "Retention",
        "anomalies-table-collides",
        "  tables: [request_latency]
  rollups:
    - name: latency
      interval: 1m
      aggregates: [{fn: count}]
      keep: 24h
      detect: [{column: count, method: levelShift}]
    - name: latency_anomalies
      interval: 1m
      aggregates: [{fn: count}]
      keep: 24h
",
        "spec.rollups[1].name \"latency_anomalies\" is already used by spec.rollups[0].name \
         (table latency_anomalies)",
        Accepts,
    ),
    invalid!(
        "Export",
        "metrics-export-without-value",
        "  tables: [opens]
  destination:
    otlp: {endpoint: 'http://otel:4317', protocol: grpc, signal: metrics}
  mapping:
    metricName: sonde.opens
",
        "spec.mapping.value is required for metrics exports",
        RejectsByCel("metrics exports need mapping.metricName and mapping.value"),
    ),
    invalid!(
        "Export",
        "endpoint-without-scheme",
        "  tables: [opens]
  destination:
    otlp: {endpoint: 'otel-collector:4317', protocol: grpc, signal: logs}
",
        "spec.destination.otlp.endpoint \"otel-collector:4317\" is not an http:// or https:// \
         URL with a host, such as http://otel-collector.observability:4317",
        RejectsByCel("endpoint must be an http:// or https:// URL with a host"),
    ),
    invalid!(
        "Export",
        "tls-on-plain-http",
        "  tables: [opens]
  destination:
    otlp:
      endpoint: 'http://otel:4317'
      protocol: grpc
      signal: logs
      tls: {insecureSkipVerify: true}
",
        "spec.destination.otlp.tls is set, but the endpoint uses http://; use https:// for TLS",
        RejectsByCel("tls applies only to https:// endpoints"),
    ),
    invalid!(
        "Export",
        "batch-larger-than-buffer",
        "  tables: [opens]
  destination:
    otlp: {endpoint: 'http://otel:4317', protocol: grpc, signal: logs}
  batchSize: 5000
  bufferRows: 1000
",
        "spec.batchSize 5000 is larger than bufferRows 1000, so no batch could ever fill",
        RejectsByCel("batchSize must not be larger than bufferRows"),
    ),
    invalid!(
        "Export",
        "log-body-on-traces",
        "  tables: [request_latency]
  destination:
    otlp: {endpoint: 'http://otel:4317', protocol: grpc, signal: traces}
  mapping:
    spanName: handle_request
    duration: latency
    body: status
",
        "spec.mapping.body does not apply to traces exports",
        RejectsByCel("mapping.body is for logs"),
    ),
];

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, path::Path};

    use kube_cel::{ScopeContext, Validator, WarningKind, analyze_rule, compile_schema};

    use serde_json::Value;

    use super::*;
    use crate::{crds, manifest};

    /// The openAPIV3Schema of each kind, as the apiserver would get it.
    fn schema_of(kind: &str) -> Value {
        let crd = crds()
            .into_iter()
            .find(|crd| crd.spec.names.kind == kind)
            .unwrap_or_else(|| panic!("no CRD for kind {kind}"));
        let schema = crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .unwrap_or_else(|| panic!("the {kind} CRD has no schema"));
        serde_json::to_value(schema).expect("schemas serialize to JSON")
    }

    /// Each document of a manifest as JSON, with its kind.
    fn documents(text: &str) -> Vec<(String, Value)> {
        serde_yaml::Deserializer::from_str(text)
            .map(|document| {
                let value: Value =
                    serde::Deserialize::deserialize(document).expect("manifests are YAML objects");
                let kind = value["kind"]
                    .as_str()
                    .expect("manifests have a kind")
                    .to_owned();
                (kind, value)
            })
            .filter(|(_, value)| !value.is_null())
            .collect()
    }

    /// Rewrites `type(x) == string` and the like, which the client-side CEL
    /// evaluator lacks, into `string(x) == x`: equivalent for the
    /// int-or-string values these rules test, because CEL equality across
    /// types is false rather than an error.
    fn without_type_calls(rule: &str) -> String {
        let mut out = String::new();
        let mut rest = rule;
        while let Some(start) = rest.find("type(") {
            out.push_str(&rest[..start]);
            let after = &rest[start + "type(".len()..];
            let mut depth = 1;
            let end = after
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map(|(i, _)| i)
                .expect("type( has a closing parenthesis");
            let operand = &after[..end];
            let tail = &after[end + 1..];
            let (is_string, tail) = [
                (" == string", true),
                (" != string", false),
                (" == int", false),
                (" != int", true),
            ]
            .into_iter()
            .find_map(|(test, is_string)| tail.strip_prefix(test).map(|t| (is_string, t)))
            .unwrap_or_else(|| panic!("unexpected type() test in {rule}"));
            let op = if is_string { "==" } else { "!=" };
            out.push_str(&format!("(string({operand}) {op} {operand})"));
            rest = tail;
        }
        out.push_str(rest);
        out
    }

    fn shim_rules(node: &mut Value) {
        match node {
            Value::Object(map) => {
                if let Some(Value::Array(rules)) = map.get_mut("x-kubernetes-validations") {
                    for rule in rules {
                        if let Some(Value::String(text)) = rule.get_mut("rule") {
                            *text = without_type_calls(text);
                        }
                    }
                }
                map.values_mut().for_each(shim_rules);
            }
            Value::Array(items) => items.iter_mut().for_each(shim_rules),
            _ => {}
        }
    }

    /// The messages of the CEL rules the object breaks, evaluated
    /// client-side the way the apiserver evaluates them.
    fn cel_failures(kind: &str, object: &Value) -> Vec<String> {
        let mut schema = schema_of(kind);
        shim_rules(&mut schema);
        match Validator::new().validate(&schema, object, None) {
            Ok(()) => Vec::new(),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn every_example_parses_and_validates() {
        let mut kinds = BTreeSet::new();
        for (file, text) in EXAMPLES {
            let resources = manifest::parse_and_validate(Path::new(file), text)
                .unwrap_or_else(|e| panic!("examples/{file}: {e}"));
            assert!(!resources.is_empty(), "examples/{file} holds no resource");
            for resource in &resources {
                kinds.insert(resource.kind().to_owned());
                if let manifest::Resource::Tracepoint(tp) = resource {
                    let probe = tp.spec.probe.kind().expect("examples validate");
                    kinds.insert(probe.kind().to_string());
                }
            }
        }
        let expected: BTreeSet<String> = [
            "Tracepoint",
            "Retention",
            "Export",
            "tracepoint",
            "rawTracepoint",
            "uprobe",
            "uretprobe",
            "usdt",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        assert!(
            expected.is_subset(&kinds),
            "examples miss {:?}",
            expected.difference(&kinds).collect::<Vec<_>>()
        );
    }

    #[test]
    fn every_example_passes_the_cel_rules() {
        for (file, text) in EXAMPLES {
            for (kind, object) in documents(text) {
                let failures = cel_failures(&kind, &object);
                assert!(failures.is_empty(), "examples/{file}: {failures:#?}");
            }
        }
    }

    #[test]
    fn invalid_specs_fail_validation_with_their_message() {
        assert!(INVALID_SPECS.len() >= 20);
        let mut names = BTreeSet::new();
        for case in INVALID_SPECS {
            assert!(names.insert(case.name), "{} is listed twice", case.name);
            let file = format!("{}.yaml", case.name);
            let resources = manifest::parse(Path::new(&file), case.manifest)
                .unwrap_or_else(|e| panic!("{}: does not even parse: {e}", case.name));
            let [resource] = resources.as_slice() else {
                panic!("{}: expected one resource", case.name);
            };
            match resource.validate() {
                Ok(()) => panic!(
                    "{}: validates, but should fail with: {}",
                    case.name, case.error
                ),
                Err(error) => assert_eq!(error.to_string(), case.error, "{}", case.name),
            }
        }
    }

    #[test]
    fn cel_rules_catch_exactly_the_cases_marked_for_them() {
        for case in INVALID_SPECS {
            let [(kind, object)] = documents(case.manifest)
                .try_into()
                .unwrap_or_else(|_| panic!("{}: expected one document", case.name));
            let failures = cel_failures(&kind, &object);
            match case.apiserver {
                Apiserver::RejectsByCel(message) => assert!(
                    failures.iter().any(|f| f.contains(message)),
                    "{}: CEL should reject it with {message:?}, got {failures:#?}",
                    case.name
                ),
                Apiserver::Accepts => assert!(
                    failures.is_empty(),
                    "{}: marked as accepted by the apiserver, but CEL rejects it: {failures:#?}",
                    case.name
                ),
                // OpenAPI bounds are not CEL; the cluster tests check them.
                Apiserver::RejectsByOpenApi(_) => {}
            }
        }
    }

    /// Walks every schema node, calling `visit(path, node)`.
    fn walk(path: &str, node: &Value, visit: &mut dyn FnMut(&str, &Value)) {
        visit(path, node);
        if let Some(properties) = node.get("properties").and_then(Value::as_object) {
            for (name, child) in properties {
                walk(&format!("{path}.{name}"), child, visit);
            }
        }
        if let Some(items) = node.get("items") {
            walk(&format!("{path}[]"), items, visit);
        }
        if let Some(values) = node.get("additionalProperties").filter(|v| v.is_object()) {
            walk(&format!("{path}{{}}"), values, visit);
        }
    }

    #[test]
    fn schemas_are_structural() {
        for kind in ["Tracepoint", "Retention", "Export", "ProbeNode"] {
            walk(kind, &schema_of(kind), &mut |path, node| {
                for keyword in [
                    "$ref",
                    "anyOf",
                    "oneOf",
                    "allOf",
                    "not",
                    "definitions",
                    "$defs",
                ] {
                    assert!(node.get(keyword).is_none(), "{path} uses {keyword}");
                }
                let untyped_ok = node.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
                    || node.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
                assert!(
                    node.get("type").is_some() || untyped_ok,
                    "{path} has no type: {node}"
                );
                if node.get("properties").is_some() {
                    assert_eq!(
                        node["type"], "object",
                        "{path} has properties but is not an object"
                    );
                }
                if let Some(values) = node.get("enum") {
                    assert_eq!(node["type"], "string", "{path} is a non-string enum");
                    assert!(
                        values
                            .as_array()
                            .is_some_and(|v| v.iter().all(Value::is_string))
                    );
                }
            });
        }
    }

    #[test]
    fn cel_rules_compile_and_fit_the_cost_budget() {
        for kind in ["Tracepoint", "Retention", "Export", "ProbeNode"] {
            let schema = schema_of(kind);
            let mut rules = 0;
            walk(kind, &schema, &mut |path, node| {
                let Some(validations) = node.get("x-kubernetes-validations") else {
                    return;
                };
                let compiled = compile_schema(node);
                let errors = compiled.compilation_errors();
                assert!(errors.is_empty(), "{path}: {errors:?}");
                for validation in validations.as_array().into_iter().flatten() {
                    rules += 1;
                    let rule = validation["rule"].as_str().expect("rules are strings");
                    assert!(
                        validation["message"]
                            .as_str()
                            .is_some_and(|m| !m.is_empty()),
                        "{path}: rule {rule} has no message"
                    );
                    let warnings = analyze_rule(rule, &compiled, ScopeContext::CrdValidation);
                    let serious: Vec<_> = warnings
                        .iter()
                        .filter(|w| w.kind == WarningKind::CostExceeded)
                        .collect();
                    assert!(serious.is_empty(), "{path}: {serious:#?}");
                }
            });
            if kind != "ProbeNode" {
                assert!(rules > 0, "{kind} has no CEL rules");
            }
        }
    }
}
