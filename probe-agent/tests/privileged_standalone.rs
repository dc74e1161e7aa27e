//! Standalone mode watching its manifests folder: editing a file changes the
//! capture, deleting it detaches the program. How long each took is printed,
//! not asserted: a loaded machine must not fail the test, while the 30 s
//! bound still catches a change that is never applied.

mod common;

use std::{process::Command, time::Duration};

use common::{AgentProcess, program_ids};

fn tracepoint(table: &str, filter: &str) -> String {
    format!(
        "apiVersion: sonde.dev/v1alpha1
kind: Tracepoint
metadata:
  name: watched
spec:
  probe:
    tracepoint:
      group: syscalls
      name: sys_enter_getppid
  table: {table}
{filter}"
    )
}

/// Ids of the programs with an attached link, as bpftool lists them.
fn linked_programs() -> Vec<u32> {
    let output = Command::new("bpftool")
        .args(["-j", "link", "show"])
        .output()
        .expect("run bpftool (scripts/install.sh installs it)");
    assert!(output.status.success(), "bpftool link show failed");
    let links: Vec<serde_json::Value> =
        serde_json::from_slice(&output.stdout).expect("bpftool prints JSON");
    links
        .iter()
        .filter_map(|l| l["prog_id"].as_u64())
        .map(|id| id as u32)
        .collect()
}

#[test]
fn edits_apply_and_deletion_detaches() {
    // With a 200 ms rescan each change takes well under a second on an idle
    // machine; the bound only catches a change that is never applied.
    const BOUND: Duration = Duration::from_secs(30);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("watched.yaml");
    std::fs::write(&file, tracepoint("first", "")).expect("write manifest");
    let agent = AgentProcess::start(
        dir.path(),
        &["--rescan-interval", "200ms", "--report-interval", "1m"],
    );
    agent.expect("table=first", Duration::from_secs(60));
    let (line, _) = agent.expect("standalone agent running", BOUND);
    let ids = program_ids(&line);
    assert_eq!(ids.len(), 1);
    assert!(
        linked_programs().contains(&ids[0]),
        "program {} is linked",
        ids[0]
    );

    // A changed spec is reattached with the new configuration.
    std::fs::write(
        &file,
        tracepoint(
            "second",
            "  filters:\n    - {field: pid, op: eq, value: 1}\n",
        ),
    )
    .expect("edit manifest");
    let (_, noticed) = agent.expect("changed; reattaching", BOUND);
    let (_, attached) = agent.expect("table=second", BOUND);
    eprintln!(
        "edit noticed after {noticed:?}, reattached {attached:?} later (rescan every 200 ms)"
    );

    // An invalid edit is refused with its reason; the agent keeps running.
    std::fs::write(&file, tracepoint("Bad-Name", "")).expect("break manifest");
    let (_, refused) = agent.expect("not attached", BOUND);
    eprintln!("invalid edit refused after {refused:?}");

    // Deleting the file detaches: no link of ours remains.
    std::fs::write(&file, tracepoint("third", "")).expect("fix manifest");
    let (_, fixed) = agent.expect("table=third", BOUND);
    eprintln!("fixed edit attached after {fixed:?}");
    std::fs::remove_file(&file).expect("delete manifest");
    let (_, removed) = agent.expect("removed; detached", BOUND);
    eprintln!("deletion applied after {removed:?}");
    let linked = linked_programs();
    assert!(
        ids.iter().all(|id| !linked.contains(id)),
        "no Sonde program is linked after the manifest is deleted"
    );
}
