//! The README's two commands do what it says: `make run` builds the agent
//! and runs it standalone on `examples/`, `make test` is what `.ci/run`
//! runs, and no other target starts the agent. Read from make's dry run
//! (`make -n`), which prints each recipe without running it.

use std::{path::PathBuf, process::Command};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_owned()
}

/// The commands `make -n target` would run, one per line.
fn dry_run(target: &str) -> Vec<String> {
    let output = Command::new("make")
        .args(["-n", "--no-print-directory", target])
        .current_dir(root())
        .output()
        .expect("run make");
    assert!(
        output.status.success(),
        "make -n {target}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn readme() -> String {
    std::fs::read_to_string(root().join("README.md")).expect("read README.md")
}

#[test]
fn make_run_builds_the_agent_and_runs_it_standalone() {
    assert!(readme().contains("```sh\nmake run\n```"));
    let commands = dry_run("run");
    let position = |what: &str| commands.iter().position(|c| c.contains(what));
    let install = position("scripts/install.sh").expect("make run installs first");
    let build = position("--bin probe-agent").expect("make run builds the agent");
    let demo = position("--bin sonde-demo-app").expect("make run builds the demo app");
    let run = position("scripts/run-standalone.sh").expect("make run starts the agent");
    assert!(
        install < build && build < run && demo < run,
        "{commands:#?}"
    );
    assert_eq!(
        run,
        commands.len() - 1,
        "the agent runs last: {commands:#?}"
    );
    let script = std::fs::read_to_string(root().join("scripts/run-standalone.sh"))
        .expect("read scripts/run-standalone.sh");
    assert!(
        script.contains("--standalone --manifests examples"),
        "run-standalone.sh runs the agent standalone on examples/"
    );
}

#[test]
fn make_test_is_what_ci_runs() {
    assert!(readme().contains("```sh\nmake test\n```"));
    let ci = std::fs::read_to_string(root().join(".ci/run")).expect("read .ci/run");
    assert!(
        ci.lines().any(|l| l.trim() == "exec make test"),
        ".ci/run must run the README's test command:\n{ci}"
    );
}

#[test]
fn only_make_run_starts_the_agent() {
    for target in ["images", "test", "bench", "build"] {
        let commands = dry_run(target);
        assert!(
            !commands.iter().any(|c| c.contains("run-standalone.sh")),
            "make {target} would start the standalone agent: {commands:#?}"
        );
    }
}
