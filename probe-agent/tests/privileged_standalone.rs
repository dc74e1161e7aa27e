//! Standalone mode watching its manifests folder: editing a file changes the
//! capture within 2 s, deleting it detaches the program.

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
fn edits_apply_within_two_seconds_and_deletion_detaches() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("watched.yaml");
    std::fs::write(&file, tracepoint("first", "")).expect("write manifest");
    let agent = AgentProcess::start(
        dir.path(),
        &["--rescan-interval", "200ms", "--report-interval", "1m"],
    );
    agent.expect("table=first", Duration::from_secs(60));
    let (line, _) = agent.expect("standalone agent running", Duration::from_secs(10));
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
    let (_, took) = agent.expect("changed; reattaching", Duration::from_secs(2));
    agent.expect("table=second", Duration::from_secs(2));
    eprintln!("edit applied after {took:?}");

    // An invalid edit is refused with its reason; the agent keeps running.
    std::fs::write(&file, tracepoint("Bad-Name", "")).expect("break manifest");
    agent.expect("not attached", Duration::from_secs(2));

    // Deleting the file detaches: no link of ours remains.
    std::fs::write(&file, tracepoint("third", "")).expect("fix manifest");
    agent.expect("table=third", Duration::from_secs(2));
    std::fs::remove_file(&file).expect("delete manifest");
    let (_, took) = agent.expect("removed; detached", Duration::from_secs(2));
    eprintln!("deletion applied after {took:?}");
    let linked = linked_programs();
    assert!(
        ids.iter().all(|id| !linked.contains(id)),
        "no Sonde program is linked after the manifest is deleted"
    );
}
