#![allow(
    clippy::unwrap_used,
    reason = "in a test a failed unwrap is a failed assertion"
)]

use std::fs;

use arrow_array::{Array, UInt32Array, UInt64Array, cast::AsArray};

use super::*;

const UNITS: HostUnits = HostUnits {
    clock_ticks_per_second: 100,
    page_bytes: 4096,
};

fn stat_line(pid: u32, comm: &str, utime: u64, stime: u64) -> String {
    format!(
        "{pid} ({comm}) S 1 {pid} {pid} 0 -1 4194560 11 0 2 0 {utime} {stime} 0 0 20 0 4 0 \
         100 8192000 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n"
    )
}

/// A fake /proc with processes 10 (in a cgroup), 20 (an io file that
/// cannot be read, as without ptrace access), and 30
/// (a folder whose files are gone: it exited while listed).
fn fake_proc(root: &Path, cgroups: &Path) {
    let write = |pid: u32, file: &str, text: &str| {
        let dir = root.join(pid.to_string());
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(file), text).unwrap();
    };
    write(10, "stat", &stat_line(10, "web server", 250, 50));
    write(
        10,
        "io",
        "rchar: 1\nwchar: 2\nsyscr: 0\nsyscw: 0\nread_bytes: 3\nwrite_bytes: 4\n",
    );
    write(10, "cgroup", "1:cpu:/x\n0::/kubepods/podu1/c1\n");
    write(20, "stat", &stat_line(20, "sh", 7, 0));
    write(20, "cgroup", "0::/\n");
    fs::create_dir_all(root.join("20/io")).unwrap();
    fs::create_dir_all(root.join("30")).unwrap();
    fs::create_dir_all(root.join("self")).unwrap();
    fs::create_dir_all(cgroups.join("kubepods/podu1/c1")).unwrap();
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> &'a UInt64Array {
    batch.column_by_name(name).unwrap().as_primitive()
}

#[test]
fn reads_each_process_and_counts_the_ones_gone() {
    let dir = tempfile::tempdir().unwrap();
    let (proc_root, cgroups) = (dir.path().join("proc"), dir.path().join("cgroup"));
    fake_proc(&proc_root, &cgroups);
    let mut sampler = ProcessSampler::new(&proc_root, Some(cgroups.clone()), "node-a", 100, UNITS);
    let (batch, counts) = sampler
        .sample(1_000, &PodDirectory::default())
        .expect("sample");
    assert_eq!(
        counts,
        SampleCounts {
            rows: 2,
            vanished: 1,
            io_unreadable: 1,
            ..SampleCounts::default()
        }
    );
    assert_eq!(batch.schema(), schema());
    let pids: &UInt32Array = batch.column_by_name("pid").unwrap().as_primitive();
    assert_eq!(pids.values(), &[10, 20]);
    assert_eq!(
        batch
            .column_by_name("comm")
            .unwrap()
            .as_string::<i32>()
            .value(0),
        "web server"
    );
    // 250 ticks of 10 ms, 50 ticks, 300 pages of 4 KiB.
    assert_eq!(column(&batch, "cpu_utime_ns").value(0), 2_500_000_000);
    assert_eq!(column(&batch, "cpu_ktime_ns").value(0), 500_000_000);
    assert_eq!(column(&batch, "rss_bytes").value(0), 300 * 4096);
    assert_eq!(column(&batch, "vsize_bytes").value(0), 8_192_000);
    assert_eq!(column(&batch, "num_threads").value(0), 4);
    assert_eq!(column(&batch, "minor_faults").value(0), 11);
    assert_eq!(column(&batch, "major_faults").value(0), 2);
    assert_eq!(column(&batch, "write_bytes").value(0), 4);
    assert!(column(&batch, "rchar_bytes").is_null(1));
    // The cgroup id is the folder's inode, independently read here.
    let inode = fs::metadata(cgroups.join("kubepods/podu1/c1"))
        .unwrap()
        .ino();
    assert_eq!(column(&batch, "cgroup_id").value(0), inode);
    // Standalone: no pods known, identity columns null.
    assert!(batch.column_by_name("pod").unwrap().is_null(0));

    // Builders are reused: the next sample starts empty.
    let (again, _) = sampler.sample(2_000, &PodDirectory::default()).unwrap();
    assert_eq!(again.num_rows(), 2);
}

#[test]
fn caps_processes_per_sample_and_counts_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (proc_root, cgroups) = (dir.path().join("proc"), dir.path().join("cgroup"));
    fake_proc(&proc_root, &cgroups);
    let mut sampler = ProcessSampler::new(&proc_root, None, "node-a", 1, UNITS);
    let (batch, counts) = sampler.sample(1_000, &PodDirectory::default()).unwrap();
    assert_eq!((counts.rows, counts.capped), (1, 2));
    // Without a cgroup v2 hierarchy the id is 0.
    assert_eq!(column(&batch, "cgroup_id").value(0), 0);
}

#[test]
fn an_unreadable_proc_is_an_error() {
    let mut sampler =
        ProcessSampler::new(Path::new("/nonexistent/proc"), None, "node-a", 10, UNITS);
    let error = sampler
        .sample(0, &PodDirectory::default())
        .expect_err("no /proc");
    assert!(error.to_string().contains("/nonexistent/proc"), "{error}");
}

#[test]
fn reads_this_process_from_the_real_proc() {
    let mut sampler = ProcessSampler::new(
        Path::new("/proc"),
        None,
        "node-a",
        usize::MAX,
        HostUnits::of_this_host(),
    );
    let (batch, counts) = sampler.sample(0, &PodDirectory::default()).unwrap();
    let me = std::process::id();
    let pids: &UInt32Array = batch.column_by_name("pid").unwrap().as_primitive();
    let row = pids
        .values()
        .iter()
        .position(|p| *p == me)
        .expect("this process is sampled");
    let threads = fs::read_dir(format!("/proc/{me}/task")).unwrap().count() as u64;
    assert!(column(&batch, "num_threads").value(row) >= 1);
    assert!(threads >= 1);
    assert!(column(&batch, "rss_bytes").value(row) > 0);
    assert_eq!(counts.rows, batch.num_rows() as u64);
}
