//! `scripts/build-images.sh`, the builder behind `make images`, on stand-in
//! executables (the system's `true`, dynamically linked like Sonde's release
//! binaries), so that the test needs no release build: the archives it
//! writes are OCI image layouts whose index, manifest and config agree (media
//! types, digests, sizes), tagged with the workspace version, labelled with
//! the checkout's revision, with one layer holding exactly the executable,
//! the libraries `ldd` names for it and the CA bundle; a second run writes
//! the same bytes.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, ensure};
use serde_json::Value;

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The file's SHA-256 as `sha256sum` prints it.
fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let out = run(Command::new("sha256sum").arg(path))?;
    Ok(out.split_whitespace().next().unwrap_or_default().to_owned())
}

fn run(command: &mut Command) -> anyhow::Result<String> {
    let out = command
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    ensure!(
        out.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn workspace_version() -> anyhow::Result<String> {
    let cargo = std::fs::read_to_string(Path::new(REPO).join("Cargo.toml"))?;
    let section = cargo
        .split("[workspace.package]")
        .nth(1)
        .context("no [workspace.package]")?;
    section
        .lines()
        .find_map(|l| l.strip_prefix("version = "))
        .map(|v| v.trim_matches('"').to_owned())
        .context("no version in [workspace.package]")
}

/// Builds the images from stand-ins in a target folder of the test's own.
fn build(target: &Path, images: &Path) -> anyhow::Result<String> {
    let release = target.join("release");
    std::fs::create_dir_all(&release)?;
    for name in ["sonde-operator", "probe-agent", "sonde-query"] {
        std::fs::copy("/bin/true", release.join(name))?;
    }
    run(
        Command::new(Path::new(REPO).join("scripts/build-images.sh"))
            .env("CARGO_TARGET_DIR", target)
            .env("SONDE_IMAGES", images),
    )
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap_or(digest))
}

fn json_blob(layout: &Path, descriptor: &Value) -> anyhow::Result<Value> {
    let digest = descriptor["digest"].as_str().context("a digest")?;
    let path = blob(layout, digest);
    let bytes = std::fs::read(&path).with_context(|| format!("{digest} is missing"))?;
    ensure!(
        descriptor["size"].as_u64() == Some(bytes.len() as u64),
        "{digest}: size {} but the descriptor says {}",
        bytes.len(),
        descriptor["size"]
    );
    ensure!(
        format!("sha256:{}", sha256_file(&path)?) == digest,
        "{digest}: content does not match its digest"
    );
    Ok(serde_json::from_slice(&bytes)?)
}

#[test]
fn make_images_writes_oci_archives_tagged_and_labelled() -> anyhow::Result<()> {
    e2e::require_root()?; // the builder runs each entrypoint in a chroot
    let work = tempfile::tempdir()?;
    let images = work.path().join("images");
    let table = build(&work.path().join("target"), &images)?;
    eprintln!("{table}");
    let version = workspace_version()?;
    let revision = run(Command::new("git").args(["-C", REPO, "rev-parse", "HEAD"]))?;
    let revision = revision.trim();
    let expected_files: BTreeSet<String> = {
        // What ldd names for the stand-in, the executable and the CA bundle.
        let ldd = run(Command::new("ldd").arg("/bin/true"))?;
        let mut files: BTreeSet<String> = ldd
            .lines()
            .filter_map(|l| {
                let l = l.trim();
                match l.split_once(" => ") {
                    Some((_, right)) => right.split_whitespace().next(),
                    None => l.split_whitespace().next().filter(|p| p.starts_with('/')),
                }
            })
            .map(|p| p.trim_start_matches('/').to_owned())
            .collect();
        files.insert("etc/ssl/certs/ca-certificates.crt".to_owned());
        files.insert("etc/passwd".to_owned());
        files.insert("etc/group".to_owned());
        files
    };

    for (name, user, entrypoint) in [
        (
            "sonde-operator",
            "65532:65532",
            "/usr/local/bin/sonde-operator",
        ),
        ("sonde-agent", "0:0", "/usr/local/bin/probe-agent"),
        ("sonde-query", "65532:65532", "/usr/local/bin/sonde-query"),
    ] {
        let archive = images.join(format!("{name}-{version}.oci.tar"));
        ensure!(
            table.contains(&format!("{name}:{version}")),
            "{name} is not in the table:\n{table}"
        );
        let layout = work.path().join(name);
        std::fs::create_dir_all(&layout)?;
        run(Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(&layout))?;

        let oci_layout: Value = serde_json::from_slice(&std::fs::read(layout.join("oci-layout"))?)?;
        ensure!(oci_layout["imageLayoutVersion"] == "1.0.0", "{oci_layout}");
        let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
        let manifests = index["manifests"].as_array().context("index.manifests")?;
        ensure!(manifests.len() == 1, "{name}: {index}");
        let descriptor = &manifests[0];
        ensure!(
            descriptor["mediaType"] == "application/vnd.oci.image.manifest.v1+json",
            "{descriptor}"
        );
        ensure!(
            descriptor["annotations"]["org.opencontainers.image.ref.name"] == version.as_str(),
            "{name}: tagged {:?}, not {version}",
            descriptor["annotations"]
        );
        let manifest = json_blob(&layout, descriptor)?;
        ensure!(
            manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json",
            "{manifest}"
        );
        let config = json_blob(&layout, &manifest["config"])?;
        let labels = &config["config"]["Labels"];
        ensure!(
            labels["org.opencontainers.image.revision"] == revision,
            "{name}: {labels}"
        );
        ensure!(
            labels["org.opencontainers.image.version"] == version.as_str(),
            "{name}: {labels}"
        );
        ensure!(config["config"]["User"] == user, "{name}: {config}");
        ensure!(
            config["config"]["Entrypoint"] == serde_json::json!([entrypoint]),
            "{name}: {config}"
        );
        ensure!(config["os"] == "linux", "{name}: {config}");

        let layers = manifest["layers"].as_array().context("manifest.layers")?;
        ensure!(
            layers.len() == 1,
            "{name}: one layer expected, {}",
            layers.len()
        );
        let layer = &layers[0];
        ensure!(
            layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip",
            "{layer}"
        );
        let path = blob(&layout, layer["digest"].as_str().context("digest")?);
        ensure!(
            format!("sha256:{}", sha256_file(&path)?)
                == layer["digest"].as_str().unwrap_or_default(),
            "{name}: the layer does not match its digest"
        );
        // The uncompressed layer's digest is the config's diff id.
        let diff_id = run(Command::new("sh")
            .arg("-c")
            .arg("gzip -dc \"$0\" | sha256sum")
            .arg(&path))?;
        ensure!(
            config["rootfs"]["diff_ids"][0]
                == format!(
                    "sha256:{}",
                    diff_id.split_whitespace().next().unwrap_or_default()
                ),
            "{name}: diff id does not match the layer"
        );
        let listing = run(Command::new("tar").arg("-tzf").arg(&path))?;
        let files: BTreeSet<String> = listing
            .lines()
            .map(|l| l.trim_start_matches("./").to_owned())
            .filter(|l| !l.is_empty() && l != "." && !l.ends_with('/'))
            .collect();
        let mut expected = expected_files.clone();
        expected.insert(entrypoint.trim_start_matches('/').to_owned());
        ensure!(
            files == expected,
            "{name}: the layer holds {files:?}, expected {expected:?}"
        );
    }

    // The same commit and executables give the same archives, byte for byte.
    let first: Vec<String> = ["sonde-operator", "sonde-agent"]
        .iter()
        .map(|n| sha256_file(&images.join(format!("{n}-{version}.oci.tar"))))
        .collect::<Result<_, _>>()?;
    build(&work.path().join("target"), &images)?;
    let second: Vec<String> = ["sonde-operator", "sonde-agent"]
        .iter()
        .map(|n| sha256_file(&images.join(format!("{n}-{version}.oci.tar"))))
        .collect::<Result<_, _>>()?;
    ensure!(first == second, "a rebuild changed the archives");
    Ok(())
}
