//! The report: Markdown for people, JSON for tools, built side by side.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
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

    /// Adds a section: its Markdown text and its figures.
    pub fn section(&mut self, key: &str, heading: &str, markdown: &str, figures: Value) {
        let _ = writeln!(self.markdown, "## {heading}\n\n{}\n", markdown.trim_end());
        self.json.insert(key.to_owned(), figures);
    }

    pub fn markdown(&self) -> &str {
        &self.markdown
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
