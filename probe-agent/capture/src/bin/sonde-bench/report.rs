//! The report: Markdown for people, JSON for tools, built side by side.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::Instant,
};

use serde_json::{Map, Value};

/// One section per measurement, in the order they ran.
#[derive(Default)]
pub struct Report {
    markdown: String,
    json: Map<String, Value>,
}

impl Report {
    pub fn new(title: &str, preamble: &str) -> Self {
        let mut report = Self::default();
        let _ = writeln!(report.markdown, "# {title}\n\n{preamble}\n");
        report
    }

    /// A report whose preamble names the benchmark `tool` and the machine
    /// it ran on.
    pub fn on_this_machine(title: &str, tool: &str) -> Self {
        Self::new(
            title,
            &format!(
                "`{tool}` on {} ({} CPUs, kernel {}). Every ratio compares figures \
                 measured side by side in this run.",
                nix::unistd::gethostname()
                    .map(|h| h.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                std::thread::available_parallelism().map_or(0, usize::from),
                std::fs::read_to_string("/proc/sys/kernel/osrelease")
                    .unwrap_or_default()
                    .trim()
            ),
        )
    }

    /// Writes the report into `out` (see [`out_dir`]) as `NAME.md` and
    /// `NAME.json`, prints the Markdown, and says where it went and how
    /// long the run took since `started`.
    pub fn finish(&self, out: Option<PathBuf>, name: &str, started: Instant) -> anyhow::Result<()> {
        let dir = out_dir(out);
        self.write(&dir, name)?;
        println!("{}", self.markdown);
        eprintln!(
            "wrote {}/{name}.md and .json in {:.0} s",
            dir.display(),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Adds a section: its Markdown text and its figures.
    pub fn section(&mut self, key: &str, heading: &str, markdown: &str, figures: Value) {
        let _ = writeln!(self.markdown, "## {heading}\n\n{}\n", markdown.trim_end());
        self.json.insert(key.to_owned(), figures);
    }

    /// Writes `NAME.md` and `NAME.json` into `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> anyhow::Result<()> {
        use anyhow::Context as _;
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let md = dir.join(format!("{name}.md"));
        std::fs::write(&md, &self.markdown).with_context(|| format!("write {}", md.display()))?;
        let json = dir.join(format!("{name}.json"));
        let text = serde_json::to_string_pretty(&Value::Object(self.json.clone()))?;
        std::fs::write(&json, text + "\n").with_context(|| format!("write {}", json.display()))?;
        Ok(())
    }
}

/// A Markdown table.
pub struct Table {
    text: String,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        let mut text = format!("| {} |\n", headers.join(" | "));
        let _ = writeln!(
            text,
            "|{}",
            headers.iter().map(|_| "---|").collect::<String>()
        );
        Self { text }
    }

    pub fn row(&mut self, cells: &[String]) {
        let _ = writeln!(self.text, "| {} |", cells.join(" | "));
    }

    pub fn finish(self) -> String {
        self.text
    }
}

/// The median; `values` must not be empty.
/// Where a benchmark writes its report: `--out`, else `bench` in the
/// cargo target directory.
pub fn out_dir(out: Option<PathBuf>) -> PathBuf {
    out.unwrap_or_else(|| {
        std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| PathBuf::from("target"), PathBuf::from)
            .join("bench")
    })
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
