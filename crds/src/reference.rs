//! The field reference in `docs/api.md`, generated from the CRD schemas (and
//! so from the doc comments of the Rust types), so the documentation cannot
//! drift from the API: a test fails when the committed section differs.
//!
//! Only the part between [`BEGIN_MARKER`] and [`END_MARKER`] is generated; the
//! prose around it is written by hand.

use std::{fmt::Write as _, io, path::Path};

use serde_json::Value;

use crate::crds;

/// Starts the generated section of docs/api.md.
pub const BEGIN_MARKER: &str = "<!-- BEGIN GENERATED REFERENCE: `cargo run -p crds --bin crdgen -- --docs docs/api.md` rewrites this section -->";
/// Ends the generated section of docs/api.md.
pub const END_MARKER: &str = "<!-- END GENERATED REFERENCE -->";
/// The command that regenerates the section.
pub const DOCS_REGENERATE: &str = "cargo run -p crds --bin crdgen -- --docs docs/api.md";

/// Members whose schemas come from Kubernetes itself; the reference links
/// to the Kubernetes documentation instead of repeating them.
const KUBERNETES_TYPES: [(&str, &str); 2] = [
    (
        "spec.selector",
        "a Kubernetes [label selector](https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors) (`matchLabels`, `matchExpressions`)",
    ),
    (
        "status.conditions",
        "standard Kubernetes [conditions](https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/object-meta/) (`type`, `status`, `reason`, `message`, `lastTransitionTime`, `observedGeneration`)",
    ),
];

/// Why the reference could not be updated. Each message holds its cause, so
/// `source()` returns none: crdgen prints the message alone.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// The file could not be read or written.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        error: io::Error,
    },
    /// The file lacks the markers around the generated section.
    #[error("{}: the markers around the generated section are missing; the file needs a line `{BEGIN_MARKER}` followed later by a line `{END_MARKER}`", path.display())]
    MissingMarkers {
        /// The file.
        path: std::path::PathBuf,
    },
    /// The schemas could not be read.
    #[error("cannot read the CRD schemas: {0}")]
    Schema(serde_json::Error),
}

/// Renders the generated section (without the markers).
pub fn markdown() -> Result<String, serde_json::Error> {
    let mut out = String::new();
    for crd in crds() {
        let names = &crd.spec.names;
        let version = &crd.spec.versions[0];
        let schema = serde_json::to_value(
            version
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref()),
        )?;
        let _ = writeln!(out, "\n### {}\n", names.kind);
        if let Some(description) = schema.get("description").and_then(Value::as_str) {
            let _ = writeln!(out, "{}\n", one_line(description));
        }
        let short_names = names.short_names.as_deref().unwrap_or_default();
        let _ = writeln!(
            out,
            "`apiVersion: {}/{}`, {} scope, plural `{}`{}.\n",
            crd.spec.group,
            version.name,
            crd.spec.scope.to_lowercase(),
            names.plural,
            if short_names.is_empty() {
                String::new()
            } else {
                format!(", short name `{}`", short_names.join("`, `"))
            }
        );
        if let Some(columns) = &version.additional_printer_columns {
            let listed: Vec<String> = columns
                .iter()
                .map(|c| format!("{} (`{}`)", c.name, c.json_path))
                .collect();
            let _ = writeln!(out, "`kubectl get` columns: {}.\n", listed.join(", "));
        }
        let _ = writeln!(out, "| Field | Type | Description | Constraints |");
        let _ = writeln!(out, "|---|---|---|---|");
        let mut rules = Vec::new();
        for part in ["spec", "status"] {
            if let Some(node) = schema.pointer(&format!("/properties/{part}")) {
                let required = node_required(&schema, part);
                rows(&mut out, &mut rules, part, node, required);
            }
        }
        if !rules.is_empty() {
            let _ = writeln!(
                out,
                "\nRules the apiserver checks (CEL), by the member they are attached to:\n"
            );
            for (path, message) in rules {
                let _ = writeln!(out, "- `{path}`: {message}");
            }
        }
    }
    Ok(out)
}

fn node_required(parent: &Value, name: &str) -> bool {
    parent
        .get("required")
        .and_then(Value::as_array)
        .is_some_and(|required| required.iter().any(|r| r == name))
}

fn rows(
    out: &mut String,
    rules: &mut Vec<(String, String)>,
    path: &str,
    node: &Value,
    required: bool,
) {
    let kubernetes_type = KUBERNETES_TYPES.iter().find(|(p, _)| *p == path);
    let description = match kubernetes_type {
        Some((_, text)) => {
            let own = node
                .get("description")
                .and_then(Value::as_str)
                .map(one_line);
            match own {
                Some(own) if !own.is_empty() => format!("{own} Schema: {text}."),
                _ => format!("Schema: {text}."),
            }
        }
        None => node
            .get("description")
            .and_then(Value::as_str)
            .map(one_line)
            .unwrap_or_default(),
    };
    let type_name = type_name(node);
    let _ = writeln!(
        out,
        "| `{path}` | {type_name}{} | {} | {} |",
        if required { ", required" } else { "" },
        escape(&description),
        escape(&constraints(node)),
    );
    for rule in [node, node.get("items").unwrap_or(&Value::Null)] {
        for validation in rule
            .get("x-kubernetes-validations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(message) = validation.get("message").and_then(Value::as_str) {
                let at = if std::ptr::eq(rule, node) {
                    path.to_owned()
                } else {
                    format!("{path}[]")
                };
                rules.push((at, message.to_owned()));
            }
        }
    }
    if kubernetes_type.is_some() {
        return;
    }
    let object = match node.get("items") {
        Some(items) => items,
        None => node,
    };
    let child_prefix = if node.get("items").is_some() {
        format!("{path}[]")
    } else {
        path.to_owned()
    };
    if let Some(properties) = object.get("properties").and_then(Value::as_object) {
        for (name, child) in properties {
            let child_required = node_required(object, name);
            rows(
                out,
                rules,
                &format!("{child_prefix}.{name}"),
                child,
                child_required,
            );
        }
    }
}

fn type_name(node: &Value) -> String {
    if node.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        return "integer or string".into();
    }
    if node.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return "object (a copied spec)".into();
    }
    match node.get("type").and_then(Value::as_str) {
        Some("array") => format!(
            "list of {}",
            type_name(node.get("items").unwrap_or(&Value::Null))
        ),
        Some("object") => match node.get("additionalProperties") {
            Some(values) if values.is_object() => format!("map of {}", type_name(values)),
            _ => "object".into(),
        },
        Some("string") if node.get("format").and_then(Value::as_str) == Some("date-time") => {
            "timestamp".into()
        }
        Some(other) => other.into(),
        None => "any".into(),
    }
}

fn constraints(node: &Value) -> String {
    let mut parts = Vec::new();
    let number = |key: &str| {
        node.get(key).and_then(Value::as_f64).map(|n| {
            // Bounds are whole numbers; print them without a fraction.
            format!("{}", n as i64)
        })
    };
    if let Some(values) = node.get("enum").and_then(Value::as_array) {
        let values: Vec<String> = values
            .iter()
            .filter_map(Value::as_str)
            .map(|v| format!("`{v}`"))
            .collect();
        parts.push(format!("one of {}", values.join(", ")));
    }
    match (number("minimum"), number("maximum")) {
        (Some(min), Some(max)) => parts.push(format!("{min} to {max}")),
        (Some(min), None) if min != "0" => parts.push(format!("at least {min}")),
        (None, Some(max)) => parts.push(format!("at most {max}")),
        _ => {}
    }
    match (number("minLength"), number("maxLength")) {
        (Some(min), Some(max)) => parts.push(format!("{min} to {max} characters")),
        (None, Some(max)) => parts.push(format!("at most {max} characters")),
        _ => {}
    }
    match (number("minItems"), number("maxItems")) {
        (Some(min), Some(max)) => parts.push(format!("{min} to {max} items")),
        (None, Some(max)) => parts.push(format!("at most {max} items")),
        _ => {}
    }
    if let Some(pattern) = node.get("pattern").and_then(Value::as_str) {
        parts.push(format!("matches `{pattern}`"));
    }
    if let Some(default) = node.get("default") {
        parts.push(format!("default `{default}`"));
    }
    if let Some(list_type) = node.get("x-kubernetes-list-type").and_then(Value::as_str) {
        let keys: Vec<&str> = node
            .get("x-kubernetes-list-map-keys")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if keys.is_empty() {
            parts.push(format!("list type {list_type}"));
        } else {
            parts.push(format!(
                "list type {list_type}, keyed by {}",
                keys.join(", ")
            ));
        }
    }
    parts.join("; ")
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn escape(text: &str) -> String {
    text.replace('|', "\\|")
}

/// Replaces the generated section of `document` with `generated`, or
/// returns `None` when the markers are missing.
pub fn splice(document: &str, generated: &str) -> Option<String> {
    let begin = document.find(BEGIN_MARKER)? + BEGIN_MARKER.len();
    let end = begin + document[begin..].find(END_MARKER)?;
    Some(format!(
        "{}\n{}\n{}",
        &document[..begin],
        generated.trim(),
        &document[end..]
    ))
}

/// Rewrites the generated section of the file at `path`.
pub fn update_file(path: &Path) -> Result<(), ReferenceError> {
    let io_error = |error| ReferenceError::Io {
        path: path.to_owned(),
        error,
    };
    let document = std::fs::read_to_string(path).map_err(io_error)?;
    let updated =
        splice(&document, &markdown().map_err(ReferenceError::Schema)?).ok_or_else(|| {
            ReferenceError::MissingMarkers {
                path: path.to_owned(),
            }
        })?;
    std::fs::write(path, updated).map_err(io_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_reference_matches_the_types() {
        let committed = include_str!("../../docs/api.md");
        let generated = markdown().expect("schemas render");
        let expected = splice(committed, &generated).expect("docs/api.md has the markers");
        assert!(
            expected == committed,
            "the reference in docs/api.md is out of date with the Rust types; regenerate it with `{DOCS_REGENERATE}`"
        );
    }

    #[test]
    fn splice_keeps_the_prose_around_the_section() {
        let document = format!("intro\n{BEGIN_MARKER}\nold\n{END_MARKER}\noutro\n");
        assert_eq!(
            splice(&document, "new\n").as_deref(),
            Some(format!("intro\n{BEGIN_MARKER}\nnew\n{END_MARKER}\noutro\n").as_str())
        );
        assert_eq!(splice("no markers", "new"), None);
    }

    #[test]
    fn every_member_is_described() {
        let generated = markdown().expect("schemas render");
        for line in generated.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = line.split(" | ").collect();
            assert!(
                cells.get(2).is_some_and(|d| !d.trim().is_empty()),
                "undocumented member: {line}"
            );
        }
    }
}
