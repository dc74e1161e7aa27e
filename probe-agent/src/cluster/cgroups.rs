//! Pod containers → cgroup v2 ids, the ids `bpf_get_current_cgroup_id()`
//! reports and the in-kernel target sets hold.
//!
//! The kubelet lays pod cgroups out in one of two ways, by cgroup driver:
//!
//! - cgroupfs: `kubepods[/<qos>]/pod<uid>/<container-id>`;
//! - systemd: `kubepods.slice[/kubepods-<qos>.slice]/kubepods[-<qos>]-pod<uid with _>.slice/<runtime>-<container-id>.scope`,
//!   with `cri-containerd-`, `crio-` or `docker-` as the runtime prefix.
//!
//! Guaranteed pods have no QoS level. cgroup v1 uses the same paths in
//! every controller's hierarchy; on hybrid hosts the runtimes mirror them
//! into the unified (v2) hierarchy, which is the one the kernel's cgroup
//! ids come from, so that is where they are looked up. A host with no
//! cgroup v2 hierarchy at all cannot be targeted by cgroup.
//!
//! A cgroup's id is the inode number of its folder in the v2 hierarchy.

use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// Why a container's cgroup could not be found.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "this node has no cgroup v2 hierarchy (only cgroup v1 is mounted): pods are targeted in the kernel by cgroup v2 id; boot with cgroup v2 or the hybrid layout (systemd.unified_cgroup_hierarchy)"
    )]
    NoUnifiedHierarchy,

    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "container id {id:?} is not in a known form: containerd://<id>, cri-o://<id> or docker://<id>"
    )]
    BadContainerId { id: String },

    #[error(
        "no cgroup of container {container} of pod {pod_uid} under {root}: neither the kubelet's cgroupfs nor its systemd layout has it"
    )]
    NotFound {
        root: PathBuf,
        pod_uid: String,
        container: String,
    },
}

/// The container runtime named by a container id's scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
}

impl Runtime {
    /// The prefix of the container's systemd scope (`<prefix>-<id>.scope`).
    fn scope_prefix(self) -> &'static str {
        match self {
            Self::Containerd => "cri-containerd",
            Self::CriO => "crio",
            Self::Docker => "docker",
        }
    }
}

/// A container id as the pod status gives it (`containerd://4f3c…`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ContainerId {
    pub runtime: Runtime,
    /// The id without the scheme.
    pub id: String,
}

impl ContainerId {
    pub fn parse(text: &str) -> Result<Self, CgroupError> {
        let bad = || CgroupError::BadContainerId {
            id: text.to_owned(),
        };
        let (scheme, id) = text.split_once("://").ok_or_else(bad)?;
        let runtime = match scheme {
            "containerd" => Runtime::Containerd,
            "cri-o" => Runtime::CriO,
            "docker" => Runtime::Docker,
            _ => return Err(bad()),
        };
        let plausible = !id.is_empty()
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !plausible {
            return Err(bad());
        }
        Ok(Self {
            runtime,
            id: id.to_owned(),
        })
    }

    /// The names the container's cgroup folder can have.
    fn folder_names(&self) -> [String; 3] {
        let id = &self.id;
        [
            id.clone(),
            format!("{}-{id}.scope", self.runtime.scope_prefix()),
            // CRI-O with the cgroupfs driver.
            format!("{}-{id}", self.runtime.scope_prefix()),
        ]
    }
}

impl std::fmt::Display for ContainerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = match self.runtime {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Docker => "docker",
        };
        write!(f, "{scheme}://{}", self.id)
    }
}

/// How cgroups are mounted on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupMode {
    /// cgroup v2 only, at this path.
    Unified(PathBuf),
    /// cgroup v1 controllers plus the v2 hierarchy at this path.
    Hybrid(PathBuf),
    /// cgroup v1 only.
    Legacy,
}

impl CgroupMode {
    /// Reads the mode from `/proc/self/mounts`-formatted text.
    pub fn from_mounts(mounts: &str) -> Self {
        let mut unified = None;
        let mut v1 = false;
        for line in mounts.lines() {
            let mut fields = line.split_whitespace();
            let (Some(_source), Some(target), Some(fstype)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            match fstype {
                "cgroup2" if unified.is_none() => unified = Some(unescape_mount(target)),
                "cgroup" => v1 = true,
                _ => {}
            }
        }
        match (unified, v1) {
            (Some(root), false) => Self::Unified(root),
            (Some(root), true) => Self::Hybrid(root),
            (None, _) => Self::Legacy,
        }
    }

    /// The v2 hierarchy's root, if there is one.
    pub fn unified_root(&self) -> Result<&Path, CgroupError> {
        match self {
            Self::Unified(root) | Self::Hybrid(root) => Ok(root),
            Self::Legacy => Err(CgroupError::NoUnifiedHierarchy),
        }
    }
}

/// Mount points escape spaces and a few other bytes as `\\ooo`.
fn unescape_mount(text: &str) -> PathBuf {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(digits) = bytes.get(i + 1..i + 4)
            && let Ok(digits) = std::str::from_utf8(digits)
            && let Ok(octal) = u8::from_str_radix(digits, 8)
        {
            out.push(octal);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(String::from_utf8_lossy(&out).into_owned())
}

/// The pod and container a cgroup path (v1 or v2, any kubelet layout)
/// belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodContainer {
    /// The pod UID, with dashes.
    pub pod_uid: String,
    /// The container id without scheme or scope decoration.
    pub container_id: String,
}

/// Parses a cgroup path as `/proc/<pid>/cgroup` shows it, in any of the
/// kubelet's layouts; `None` outside pods.
pub fn parse_cgroup_path(path: &str) -> Option<PodContainer> {
    let mut parts = path.split('/').filter(|p| !p.is_empty());
    let mut pod_uid = None;
    for part in parts.by_ref() {
        if let Some(uid) = pod_uid_of(part) {
            pod_uid = Some(uid);
            break;
        }
    }
    let pod_uid = pod_uid?;
    let container = parts.next()?;
    let container = container.strip_suffix(".scope").unwrap_or(container);
    let container_id = ["cri-containerd-", "crio-", "docker-"]
        .iter()
        .find_map(|prefix| container.strip_prefix(prefix))
        .unwrap_or(container);
    if container_id.is_empty() || container_id.starts_with("conmon-") {
        return None;
    }
    Some(PodContainer {
        pod_uid,
        container_id: container_id.to_owned(),
    })
}

/// The pod UID in a pod's cgroup folder name: `pod<uid>` (cgroupfs) or
/// `kubepods[-<qos>]-pod<uid with _>.slice` (systemd).
fn pod_uid_of(folder: &str) -> Option<String> {
    if let Some(slice) = folder.strip_suffix(".slice") {
        let at = slice.find("-pod")?;
        return Some(slice[at + 4..].replace('_', "-")).filter(|u| !u.is_empty());
    }
    folder
        .strip_prefix("pod")
        .filter(|uid| !uid.is_empty())
        .map(str::to_owned)
}

/// The cgroup v2 path of a process, from `/proc/<pid>/cgroup` text: the
/// `0::` line. `None` on a pure cgroup v1 host.
pub fn unified_path_of_process(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
}

/// A container's cgroup in the v2 hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerCgroup {
    /// The id the kernel reports for its processes (the folder's inode).
    pub id: u64,
    pub dir: PathBuf,
}

impl ContainerCgroup {
    /// Process ids in the cgroup now (empty if it is gone).
    pub fn processes(&self) -> Vec<u32> {
        fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

/// Finds pod containers' cgroups under the v2 hierarchy's root.
#[derive(Clone, Debug)]
pub struct CgroupResolver {
    root: PathBuf,
}

impl CgroupResolver {
    /// Resolves under this v2 root (tests use fake trees).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Resolves under this host's v2 hierarchy.
    pub fn detect() -> Result<Self, CgroupError> {
        let path = Path::new("/proc/self/mounts");
        let mounts = fs::read_to_string(path).map_err(|source| CgroupError::Io {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::new(CgroupMode::from_mounts(&mounts).unified_root()?))
    }

    /// Resolves under the kubelet's cgroup root `kubelet_root` (such as
    /// `/kubelet`) inside the v2 hierarchy, for kubelets run with
    /// `--cgroup-root`.
    pub fn under_kubelet_root(mut self, kubelet_root: &Path) -> Self {
        if let Ok(relative) = kubelet_root.strip_prefix("/") {
            self.root = self.root.join(relative);
        }
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The cgroup of container `container` of pod `pod_uid`.
    pub fn resolve(
        &self,
        pod_uid: &str,
        container: &ContainerId,
    ) -> Result<ContainerCgroup, CgroupError> {
        let systemd_uid = pod_uid.replace('-', "_");
        let pod_dirs = [
            // cgroupfs driver: Guaranteed, then Burstable and BestEffort.
            format!("kubepods/pod{pod_uid}"),
            format!("kubepods/burstable/pod{pod_uid}"),
            format!("kubepods/besteffort/pod{pod_uid}"),
            // systemd driver.
            format!("kubepods.slice/kubepods-pod{systemd_uid}.slice"),
            format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{systemd_uid}.slice"
            ),
            format!(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{systemd_uid}.slice"
            ),
        ];
        for pod_dir in &pod_dirs {
            let pod_dir = self.root.join(pod_dir);
            if !pod_dir.is_dir() {
                continue;
            }
            for name in container.folder_names() {
                let dir = pod_dir.join(name);
                match fs::metadata(&dir) {
                    Ok(meta) if meta.is_dir() => {
                        return Ok(ContainerCgroup {
                            id: meta.ino(),
                            dir,
                        });
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(source) => return Err(CgroupError::Io { path: dir, source }),
                }
            }
        }
        Err(CgroupError::NotFound {
            root: self.root.clone(),
            pod_uid: pod_uid.to_owned(),
            container: container.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "8e3b3f4c-1d2e-4f5a-9b6c-7d8e9f0a1b2c";
    const ID: &str = "4f3c2b1a0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b";

    fn tree(folder: &str) -> (tempfile::TempDir, PathBuf) {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = root.path().join(folder);
        fs::create_dir_all(&dir).expect("create the fake cgroup");
        (root, dir)
    }

    fn inode(dir: &Path) -> u64 {
        fs::metadata(dir).expect("exists").ino()
    }

    #[test]
    fn parses_container_id_forms() {
        let id = ContainerId::parse(&format!("containerd://{ID}")).expect("containerd");
        assert_eq!(id.runtime, Runtime::Containerd);
        assert_eq!(id.id, ID);
        assert_eq!(id.to_string(), format!("containerd://{ID}"));
        assert_eq!(
            ContainerId::parse("cri-o://abc123").expect("cri-o").runtime,
            Runtime::CriO
        );
        assert_eq!(
            ContainerId::parse("docker://abc123")
                .expect("docker")
                .runtime,
            Runtime::Docker
        );
        for bad in ["abc123", "rkt://abc", "containerd://", "docker://../../etc"] {
            let err = ContainerId::parse(bad).expect_err(bad);
            assert!(err.to_string().contains("not in a known form"), "{err}");
        }
    }

    #[test]
    fn finds_cgroupfs_layouts() {
        for pod_dir in [
            format!("kubepods/pod{UID}"),
            format!("kubepods/burstable/pod{UID}"),
            format!("kubepods/besteffort/pod{UID}"),
        ] {
            let (root, dir) = tree(&format!("{pod_dir}/{ID}"));
            let resolver = CgroupResolver::new(root.path());
            let found = resolver
                .resolve(
                    UID,
                    &ContainerId::parse(&format!("containerd://{ID}")).expect("id"),
                )
                .expect(&pod_dir);
            assert_eq!(found.dir, dir);
            assert_eq!(found.id, inode(&dir));
        }
        // A kubelet with its own cgroup root lays pods out below it.
        let (root, dir) = tree(&format!("node-a/kubepods/besteffort/pod{UID}/{ID}"));
        let id = ContainerId::parse(&format!("containerd://{ID}")).expect("id");
        let resolver = CgroupResolver::new(root.path());
        assert!(
            resolver.resolve(UID, &id).is_err(),
            "found without the root"
        );
        let found = resolver
            .under_kubelet_root(Path::new("/node-a"))
            .resolve(UID, &id)
            .expect("under /node-a");
        assert_eq!(found.dir, dir);
        // CRI-O with cgroupfs names the folder crio-<id>.
        let (root, dir) = tree(&format!("kubepods/burstable/pod{UID}/crio-{ID}"));
        let found = CgroupResolver::new(root.path())
            .resolve(
                UID,
                &ContainerId::parse(&format!("cri-o://{ID}")).expect("id"),
            )
            .expect("crio cgroupfs");
        assert_eq!(found.id, inode(&dir));
    }

    #[test]
    fn finds_systemd_layouts() {
        let uid_ = UID.replace('-', "_");
        for (runtime, scope) in [
            ("containerd", "cri-containerd"),
            ("cri-o", "crio"),
            ("docker", "docker"),
        ] {
            for pod_dir in [
                format!("kubepods.slice/kubepods-pod{uid_}.slice"),
                format!(
                    "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice"
                ),
                format!(
                    "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice"
                ),
            ] {
                let (root, dir) = tree(&format!("{pod_dir}/{scope}-{ID}.scope"));
                let found = CgroupResolver::new(root.path())
                    .resolve(
                        UID,
                        &ContainerId::parse(&format!("{runtime}://{ID}")).expect("id"),
                    )
                    .expect(&pod_dir);
                assert_eq!(found.dir, dir);
                assert_eq!(found.id, inode(&dir));
            }
        }
    }

    #[test]
    fn a_missing_container_names_pod_and_container() {
        let (root, _) = tree(&format!("kubepods/pod{UID}/{ID}"));
        let err = CgroupResolver::new(root.path())
            .resolve(UID, &ContainerId::parse("containerd://other").expect("id"))
            .expect_err("no such container");
        let text = err.to_string();
        assert!(
            text.contains(UID) && text.contains("containerd://other"),
            "{text}"
        );
        let err = CgroupResolver::new(root.path())
            .resolve(
                "other-uid",
                &ContainerId::parse(&format!("containerd://{ID}")).expect("id"),
            )
            .expect_err("no such pod");
        assert!(matches!(err, CgroupError::NotFound { .. }));
    }

    #[test]
    fn reads_the_mount_layout() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            CgroupMode::from_mounts(hybrid),
            CgroupMode::Hybrid("/sys/fs/cgroup/unified".into())
        );
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        let mode = CgroupMode::from_mounts(unified);
        assert_eq!(mode, CgroupMode::Unified("/sys/fs/cgroup".into()));
        assert_eq!(
            mode.unified_root().expect("v2"),
            Path::new("/sys/fs/cgroup")
        );
        let legacy = "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n\
                      cgroup /sys/fs/cgroup/systemd cgroup rw,name=systemd 0 0\n";
        let mode = CgroupMode::from_mounts(legacy);
        assert_eq!(mode, CgroupMode::Legacy);
        let err = mode.unified_root().expect_err("pure v1");
        assert!(err.to_string().contains("no cgroup v2 hierarchy"), "{err}");
        assert_eq!(
            CgroupMode::from_mounts("cgroup2 /mnt/with\\040space cgroup2 rw 0 0"),
            CgroupMode::Unified("/mnt/with space".into())
        );
    }

    #[test]
    fn parses_process_cgroup_paths_of_every_layout() {
        let uid_ = UID.replace('-', "_");
        let expected = Some(PodContainer {
            pod_uid: UID.to_owned(),
            container_id: ID.to_owned(),
        });
        for path in [
            // cgroup v2 and v1 (cgroupfs): the same path in every hierarchy.
            format!("/kubepods/pod{UID}/{ID}"),
            format!("/kubepods/besteffort/pod{UID}/{ID}"),
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"
            ),
            format!("/kubepods.slice/kubepods-pod{uid_}.slice/crio-{ID}.scope"),
            format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/docker-{ID}.scope"
            ),
        ] {
            assert_eq!(parse_cgroup_path(&path), expected, "{path}");
        }
        assert_eq!(
            parse_cgroup_path("/user.slice/user-0.slice/session-1.scope"),
            None
        );
        assert_eq!(parse_cgroup_path(&format!("/kubepods/pod{UID}")), None);
        assert_eq!(
            parse_cgroup_path(&format!(
                "/kubepods.slice/kubepods-pod{uid_}.slice/crio-conmon-{ID}.scope"
            )),
            None
        );

        let hybrid = format!(
            "12:memory:/kubepods/besteffort/pod{UID}/{ID}\n1:name=systemd:/kubepods/besteffort/pod{UID}/{ID}\n0::/kubepods/besteffort/pod{UID}/{ID}\n"
        );
        let path = unified_path_of_process(&hybrid).expect("hybrid has a v2 line");
        assert_eq!(parse_cgroup_path(path), expected);
        let legacy = format!("4:memory:/kubepods/pod{UID}/{ID}\n");
        assert_eq!(unified_path_of_process(&legacy), None);
        // Parsed from the v1 line all the same.
        let v1_path = legacy.lines().next().and_then(|l| l.splitn(3, ':').nth(2));
        assert_eq!(v1_path.and_then(parse_cgroup_path), expected);
    }
}
