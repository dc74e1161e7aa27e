//! The Sonde API against a real kube-apiserver: the committed CRDs install
//! and are served, every example in `examples/` passes a server dry run, each
//! invalid spec of `crds::testdata::INVALID_SPECS` gets exactly the answer
//! documented for it (refused by a CEL rule or by the OpenAPI schema with the
//! given message, or accepted and left to `validate()`), and a Tracepoint's
//! status subresource feeds its printer columns.
//!
//! One control plane serves every check: the harness keeps a cluster within
//! the test that started it, and a second one would only cost start-up time.
//! Needs root and `scripts/install-harness.sh`.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use crds::testdata::{Apiserver, INVALID_SPECS};
use e2e::Cluster;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;

/// The CRDs exactly as committed, which is what users install.
const COMMITTED_CRDS: &str = include_str!("../../crds/sonde.dev.yaml");

/// How long the apiserver may take to establish the CRDs and publish their schemas.
const SERVING_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_is_served_and_validated_by_a_real_apiserver() -> anyhow::Result<()> {
    e2e::require_root()?;
    // Nothing here needs controllers (no garbage collection, no pods), and the
    // CRDs are installed by the test itself rather than by the harness.
    let cluster = Cluster::builder()
        .name("api")
        .controller_manager(false)
        .start()
        .await?;
    eprintln!("control plane ready in {:?}", cluster.start_time());

    let started = Instant::now();
    crds_install_and_are_served(&cluster).await?;
    eprintln!("CRDs installed and served after {:?}", started.elapsed());

    let started = Instant::now();
    every_example_passes_a_server_dry_run(&cluster).await?;
    eprintln!("examples checked in {:?}", started.elapsed());

    let started = Instant::now();
    invalid_specs_get_their_documented_answer(&cluster).await?;
    eprintln!("invalid specs checked in {:?}", started.elapsed());

    let started = Instant::now();
    status_subresource_feeds_the_printer_columns(&cluster).await?;
    eprintln!(
        "status and printer columns checked in {:?}",
        started.elapsed()
    );
    Ok(())
}

/// The CRDs of `crds/sonde.dev.yaml` install, become Established with their
/// names accepted, and kubectl lists and explains them.
async fn crds_install_and_are_served(cluster: &Cluster) -> anyhow::Result<()> {
    let expected: BTreeSet<String> = crds::crds()
        .into_iter()
        .filter_map(|crd| crd.metadata.name)
        .collect();
    assert_eq!(expected.len(), 4, "four Sonde CRDs: {expected:?}");

    let out = cluster
        .apply(COMMITTED_CRDS)
        .await
        .context("installing crds/sonde.dev.yaml")?;
    for name in &expected {
        assert!(
            out.contains(&format!(
                "customresourcedefinition.apiextensions.k8s.io/{name} created"
            )),
            "kubectl apply did not create {name}:\n{out}"
        );
    }

    let api: Api<CustomResourceDefinition> = Api::all(cluster.client());
    let deadline = Instant::now() + SERVING_TIMEOUT;
    for name in &expected {
        loop {
            let crd = api.get(name).await?;
            let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
            let is_true = |kind: &str| {
                conditions
                    .iter()
                    .any(|c| c.type_ == kind && c.status == "True")
            };
            // The apiserver flags schemas it cannot use; Established alone would not say so.
            let problems: Vec<_> = conditions
                .iter()
                .filter(|c| c.type_ == "NonStructuralSchema" && c.status == "True")
                .collect();
            assert!(problems.is_empty(), "{name}: {problems:#?}");
            if is_true("Established") {
                assert!(is_true("NamesAccepted"), "{name}: {conditions:#?}");
                break;
            }
            if Instant::now() > deadline {
                bail!("{name} not Established after {SERVING_TIMEOUT:?}: {conditions:#?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let listed = cluster
        .kubectl(&[
            "get",
            "crd",
            "-o",
            "custom-columns=NAME:.metadata.name",
            "--no-headers",
        ])
        .await?;
    let listed: BTreeSet<String> = listed.lines().map(|l| l.trim().to_owned()).collect();
    assert!(
        expected.is_subset(&listed),
        "kubectl get crd lacks {:?}; it lists {listed:?}",
        expected.difference(&listed).collect::<Vec<_>>()
    );

    // The OpenAPI documents kubectl explain reads are published a little after
    // the CRDs are Established.
    let explained = retry_until(SERVING_TIMEOUT, || {
        cluster.kubectl(&["explain", "tracepoint.spec.probe"])
    })
    .await
    .context("kubectl explain tracepoint.spec.probe")?;
    assert!(
        explained.contains("KIND:") && explained.contains("Tracepoint"),
        "explain does not name the kind:\n{explained}"
    );
    assert!(
        explained.contains("exactly one kind"),
        "explain lacks the probe's description:\n{explained}"
    );
    for field in [
        "tracepoint",
        "rawTracepoint",
        "uprobe",
        "uretprobe",
        "usdt",
        "kprobe",
        "kretprobe",
    ] {
        assert!(
            explained
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{field}\t"))),
            "explain lists no field {field}:\n{explained}"
        );
    }
    Ok(())
}

/// Every manifest in `examples/` is accepted, resource by resource, by a
/// server dry run (schema, CEL rules and admission, nothing stored).
async fn every_example_passes_a_server_dry_run(cluster: &Cluster) -> anyhow::Result<()> {
    let files = example_files()?;
    let mut failures = Vec::new();
    for file in &files {
        let path = file.to_string_lossy();
        let out = match cluster
            .kubectl(&[
                "apply",
                "--dry-run=server",
                "--namespace=default",
                "-f",
                &path,
            ])
            .await
        {
            Ok(out) => out,
            Err(error) => {
                failures.push(format!("{path}: {error:#}"));
                continue;
            }
        };
        // kubectl names each resource it sent; every one in the file must be there.
        let resources = match crds::manifest::load_file(file) {
            Ok(resources) if resources.is_empty() => {
                failures.push(format!("{path}: holds no Sonde resource"));
                continue;
            }
            Ok(resources) => resources,
            Err(error) => {
                failures.push(format!(
                    "{path}: accepted, but Sonde cannot read it: {error}"
                ));
                continue;
            }
        };
        for resource in &resources {
            let line = format!(
                "{}.sonde.dev/{} created (server dry run)",
                resource.kind().to_lowercase(),
                resource.name()
            );
            if !out.lines().any(|l| l.trim() == line) {
                failures.push(format!("{path}: no `{line}` in:\n{out}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} examples failed:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );

    // The crds unit tests parse and validate the embedded copies; a new
    // example must be listed there too, or only the apiserver would check it.
    let in_folder: BTreeSet<String> = files
        .iter()
        .filter_map(|f| f.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    let embedded: BTreeSet<String> = crds::testdata::EXAMPLES
        .iter()
        .map(|(name, _)| (*name).to_owned())
        .collect();
    assert_eq!(
        in_folder, embedded,
        "examples/ and crds::testdata::EXAMPLES (crds/src/testdata.rs) list different files"
    );
    Ok(())
}

/// The YAML files of `examples/`, sorted.
fn example_files() -> anyhow::Result<Vec<PathBuf>> {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let folder = folder
        .canonicalize()
        .with_context(|| format!("finding {}", folder.display()))?;
    let mut files = Vec::new();
    for entry in
        std::fs::read_dir(&folder).with_context(|| format!("reading {}", folder.display()))?
    {
        let path = entry?.path();
        if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            files.push(path);
        }
    }
    files.sort();
    assert!(!files.is_empty(), "no YAML file in {}", folder.display());
    Ok(files)
}

/// Each invalid spec, sent as a server dry run, is refused with its documented
/// message, or accepted when only `validate()` can catch it. Every mismatch is
/// reported, not just the first.
async fn invalid_specs_get_their_documented_answer(cluster: &Cluster) -> anyhow::Result<()> {
    let (mut cel, mut openapi, mut accepted) = (0, 0, 0);
    let mut mismatches = Vec::new();
    for case in INVALID_SPECS {
        let answer = cluster
            .kubectl_with_input(
                &[
                    "apply",
                    "--dry-run=server",
                    "--namespace=default",
                    "-f",
                    "-",
                ],
                Some(case.manifest),
            )
            .await
            .map_err(|e| format!("{e:#}"));
        let (expected, how) = match case.apiserver {
            Apiserver::RejectsByCel(message) => {
                cel += 1;
                (Some(message), "a CEL rule")
            }
            Apiserver::RejectsByOpenApi(message) => {
                openapi += 1;
                (Some(message), "the OpenAPI schema")
            }
            Apiserver::Accepts => {
                accepted += 1;
                (None, "")
            }
        };
        match (expected, answer) {
            (Some(message), Err(refusal)) if refusal.contains(message) => {}
            (Some(message), Err(refusal)) => mismatches.push(format!(
                "{}: expected a refusal by {how} containing {message:?}\n  got: {refusal}",
                case.name
            )),
            (Some(message), Ok(out)) => mismatches.push(format!(
                "{}: expected a refusal by {how} containing {message:?}\n  but it was accepted: {}",
                case.name,
                out.trim()
            )),
            (None, Ok(out)) if out.contains("created (server dry run)") => {}
            (None, Ok(out)) => mismatches.push(format!(
                "{}: expected to be accepted (only validate() catches it)\n  got: {}",
                case.name,
                out.trim()
            )),
            (None, Err(refusal)) => mismatches.push(format!(
                "{}: expected to be accepted (only validate() catches it; validate() says {:?})\n  but it was refused: {refusal}",
                case.name, case.error
            )),
        }
    }
    eprintln!(
        "{} invalid specs: {cel} for CEL, {openapi} for the OpenAPI schema, {accepted} accepted",
        INVALID_SPECS.len()
    );
    assert!(
        cel > 0 && openapi > 0 && accepted > 0,
        "every kind of answer is exercised"
    );
    assert!(
        mismatches.is_empty(),
        "{} of {} invalid specs got another answer from the apiserver than crds/src/testdata.rs documents:\n\n{}",
        mismatches.len(),
        INVALID_SPECS.len(),
        mismatches.join("\n\n")
    );
    Ok(())
}

const STATUS_TRACEPOINT: &str = "
apiVersion: sonde.dev/v1alpha1
kind: Tracepoint
metadata:
  name: status-columns
  namespace: default
spec:
  probe:
    rawTracepoint: {name: sched_process_exec}
  table: execs
";

/// Status is written only through the status subresource, and `kubectl get tp`
/// shows it in the printer columns.
async fn status_subresource_feeds_the_printer_columns(cluster: &Cluster) -> anyhow::Result<()> {
    let out = cluster.apply(STATUS_TRACEPOINT).await?;
    assert!(
        out.contains("tracepoint.sonde.dev/status-columns created"),
        "{out}"
    );
    let generation = output(cluster, "jsonpath={.metadata.generation}").await?;

    cluster
        .kubectl(&[
            "patch",
            "tracepoint",
            "status-columns",
            "--namespace=default",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Running","table":"default.execs","nodes":{"selected":3,"running":2,"failed":1}}}"#,
        ])
        .await
        .context("patching the status subresource")?;
    assert_eq!(
        output(cluster, "jsonpath={.status.phase}").await?,
        "Running"
    );
    assert_eq!(
        output(
            cluster,
            "jsonpath={.status.nodes.selected}/{.status.nodes.running}/{.status.nodes.failed}"
        )
        .await?,
        "3/2/1"
    );
    assert_eq!(
        output(cluster, "jsonpath={.metadata.generation}").await?,
        generation,
        "a status write must not bump the generation"
    );

    // With a status subresource, status sent to the main resource is dropped.
    cluster
        .kubectl(&[
            "patch",
            "tracepoint",
            "status-columns",
            "--namespace=default",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Failed"}}"#,
        ])
        .await?;
    assert_eq!(
        output(cluster, "jsonpath={.status.phase}").await?,
        "Running",
        "status changed through the main resource"
    );

    let table = cluster
        .kubectl(&["get", "tp", "status-columns", "--namespace=default"])
        .await?;
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let [header, row] = rows.as_slice() else {
        panic!("expected a header and one row:\n{table}");
    };
    assert_eq!(
        header,
        &["NAME", "PHASE", "TABLE", "RUNNING", "SELECTED", "AGE"],
        "printer columns:\n{table}"
    );
    let [name, phase, table_name, running, selected, age] = row.as_slice() else {
        panic!("a row with six columns:\n{table}");
    };
    assert_eq!(
        [*name, *phase, *table_name, *running, *selected],
        ["status-columns", "Running", "execs", "2", "3"],
        "printer column values:\n{table}"
    );
    assert!(
        age.ends_with(['s', 'm']) && age.starts_with(|c: char| c.is_ascii_digit()),
        "AGE is a short duration:\n{table}"
    );
    Ok(())
}

/// The Tracepoint `status-columns` printed with kubectl's `-o <format>`.
async fn output(cluster: &Cluster, format: &str) -> anyhow::Result<String> {
    cluster
        .kubectl(&[
            "get",
            "tracepoint",
            "status-columns",
            "--namespace=default",
            "-o",
            format,
        ])
        .await
}

/// Runs `attempt` until it succeeds or `timeout` passes; returns the last error then.
async fn retry_until<F, Fut, T>(timeout: Duration, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) if Instant::now() > deadline => {
                return Err(error.context(format!("still failing after {timeout:?}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}
