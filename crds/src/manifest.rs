//! Reads Sonde resources from the same multi-document YAML files users
//! `kubectl apply`, for standalone mode (no apiserver).
//!
//! Every error names the file, the document (counted from 0, in file order)
//! and the problem; for a malformed spec, the path of the member at fault.
//!
//! Members a kind does not have (a misspelled `feilds:`) are refused with
//! their path, as `kubectl apply --validate=strict` refuses them, so that a
//! resource never runs without what its author meant. Standalone mode reads
//! with [`parse_documents`]: one result per document, so a bad document does
//! not keep the rest of its file from applying. [`parse`],
//! [`parse_and_validate`] and [`load_file`] take a file all or nothing.

// Resources and errors are built once per file at start-up, so their size
// does not matter and boxing would only make matching on them clumsier.
#![allow(clippy::large_enum_variant, clippy::result_large_err)]

use std::{
    io,
    path::{Path, PathBuf},
};

use k8s_openapi::api::core::v1::Secret;
use serde::Deserialize;

use crate::{
    ValidationError,
    v1alpha1::{API_VERSION, Export, GROUP, Retention, Tracepoint},
};

/// A Sonde resource read from a manifest.
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    /// A Tracepoint.
    Tracepoint(Tracepoint),
    /// A Retention.
    Retention(Retention),
    /// An Export.
    Export(Export),
    /// A core/v1 Secret, which Exports refer to for headers and TLS
    /// material (standalone mode has no apiserver to keep it).
    Secret(Secret),
}

impl Resource {
    /// The kind name.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Tracepoint(_) => "Tracepoint",
            Self::Retention(_) => "Retention",
            Self::Export(_) => "Export",
            Self::Secret(_) => "Secret",
        }
    }

    /// metadata.name (always set: parsing rejects resources without one).
    pub fn name(&self) -> &str {
        let metadata = match self {
            Self::Tracepoint(r) => &r.metadata,
            Self::Retention(r) => &r.metadata,
            Self::Export(r) => &r.metadata,
            Self::Secret(r) => &r.metadata,
        };
        metadata.name.as_deref().unwrap_or_default()
    }

    /// metadata.namespace (always set: parsing fills in `default`, as kubectl does).
    pub fn namespace(&self) -> &str {
        let metadata = match self {
            Self::Tracepoint(r) => &r.metadata,
            Self::Retention(r) => &r.metadata,
            Self::Export(r) => &r.metadata,
            Self::Secret(r) => &r.metadata,
        };
        metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
    }

    /// Validates the spec.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            Self::Tracepoint(r) => r.spec.validate(),
            Self::Retention(r) => r.spec.validate(),
            Self::Export(r) => r.spec.validate(),
            // The apiserver checks nothing more of a Secret than its shape.
            Self::Secret(_) => Ok(()),
        }
    }
}

/// The namespace of resources that name none, as with kubectl.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Why a manifest, or one document of it, could not be read.
///
/// Each message is complete on its own line (file, document, kind,
/// namespace/name, what is wrong), so the cause is formatted into it and not
/// returned again from `source()`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The file could not be read.
    #[error("{}: cannot read: {error}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        error: io::Error,
    },

    /// The document is not YAML, or not a mapping.
    #[error("{}: document {document}: not a YAML object: {error}", file.display())]
    Yaml {
        /// The file.
        file: PathBuf,
        /// Index of the document in the file.
        document: usize,
        /// The YAML error.
        error: serde_yaml::Error,
    },

    /// The document has no kind or apiVersion.
    #[error("{}: document {document}: {member} is missing", file.display())]
    MissingMember {
        /// The file.
        file: PathBuf,
        /// Index of the document in the file.
        document: usize,
        /// `kind`, `apiVersion` or `metadata.name`.
        member: &'static str,
    },

    /// A kind that is not a Sonde resource users write.
    #[error(
        "{}: document {document}: {api_version} {kind} is not a Sonde resource; expected \
         Tracepoint, Retention or Export of {API_VERSION}, or a v1 Secret",
        file.display()
    )]
    UnknownKind {
        /// The file.
        file: PathBuf,
        /// Index of the document in the file.
        document: usize,
        /// The kind found.
        kind: String,
        /// The apiVersion found.
        api_version: String,
    },

    /// A Sonde kind with an apiVersion this build does not serve.
    #[error(
        "{}: document {document}: {kind} has apiVersion {api_version:?}; this version of Sonde \
         reads {API_VERSION}",
        file.display()
    )]
    WrongApiVersion {
        /// The file.
        file: PathBuf,
        /// Index of the document in the file.
        document: usize,
        /// The kind.
        kind: String,
        /// The apiVersion found.
        api_version: String,
    },

    /// The document does not deserialize into its kind.
    #[error(
        "{}: document {document}: {kind} {namespace}/{name}: {path}: {message}",
        file.display()
    )]
    Malformed {
        /// The file.
        file: PathBuf,
        /// Index of the document in the file.
        document: usize,
        /// The kind.
        kind: String,
        /// metadata.namespace, or `default`.
        namespace: String,
        /// metadata.name.
        name: String,
        /// Path of the member at fault, such as `spec.fields[0].type`.
        path: String,
        /// What is wrong with it.
        message: String,
    },

    /// The document has members its kind does not have, such as a
    /// misspelled field: refused, as `kubectl apply --validate=strict`
    /// refuses them, rather than run without what the user meant.
    #[error(
        "{}: document {document}: {kind} {namespace}/{name}: {}{}",
        file.display(),
        describe_unknown_fields(fields),
        malformed.as_ref().map(|m| format!("; {m}")).unwrap_or_default()
    )]
    UnknownFields {
        /// The file.
        file: PathBuf,
        /// Index of the document in the file.
        document: usize,
        /// The kind.
        kind: &'static str,
        /// metadata.namespace, or `default`.
        namespace: String,
        /// metadata.name.
        name: String,
        /// Path of each unknown member, such as `spec.feilds` or
        /// `spec.fields[0].nmae`, in document order.
        fields: Vec<String>,
        /// What else is wrong, when a misspelled member was a required one:
        /// `spec.probe.tracepoint: missing field `name``.
        malformed: Option<String>,
    },

    /// The document deserializes but its spec is invalid.
    #[error("{}: document {document}: {kind} {namespace}/{name}: {error}", file.display())]
    Invalid {
        /// The file.
        file: PathBuf,
        /// Index of the document in the file.
        document: usize,
        /// The kind.
        kind: &'static str,
        /// metadata.namespace, or `default`.
        namespace: String,
        /// metadata.name.
        name: String,
        /// Why the spec is invalid.
        error: ValidationError,
    },
}

/// As the apiserver words strict decoding errors:
/// `unknown field "spec.feilds", unknown field "spec.probe.tracepoint.nmae"`.
fn describe_unknown_fields(fields: &[String]) -> String {
    fields
        .iter()
        .map(|field| format!("unknown field {field:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The minimum every document must have, read before choosing its type.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeHeader {
    api_version: Option<String>,
    kind: Option<String>,
    metadata: Option<NameHeader>,
}

#[derive(Deserialize)]
struct NameHeader {
    name: Option<String>,
    namespace: Option<String>,
}

/// Parses every document of a YAML stream on its own: one entry per
/// non-empty document, in file order, so that a bad document costs only
/// itself. `file` only names the source in errors. Empty documents (such as
/// after a trailing `---`) are skipped. Members no type reads (misspelled
/// fields) make their document an [`ManifestError::UnknownFields`] error, as
/// `kubectl apply --validate=strict` refuses them. Specs are not validated;
/// see [`parse_and_validate_documents`].
pub fn parse_documents(file: &Path, text: &str) -> Vec<Result<Resource, ManifestError>> {
    parse_indexed(file, text)
        .into_iter()
        .map(|(_, parsed)| parsed)
        .collect()
}

/// [`parse_documents`], then each spec that parsed is validated.
pub fn parse_and_validate_documents(
    file: &Path,
    text: &str,
) -> Vec<Result<Resource, ManifestError>> {
    parse_indexed(file, text)
        .into_iter()
        .map(|(document, parsed)| {
            let resource = parsed?;
            match resource.validate() {
                Ok(()) => Ok(resource),
                Err(error) => Err(ManifestError::Invalid {
                    file: file.to_owned(),
                    document,
                    kind: resource.kind(),
                    namespace: resource.namespace().to_owned(),
                    name: resource.name().to_owned(),
                    error,
                }),
            }
        })
        .collect()
}

/// Parses every document of a YAML stream, all or nothing: the first bad
/// document fails the whole file. Specs are not validated; see
/// [`parse_and_validate`]. To apply the good documents of a file with bad
/// ones, use [`parse_documents`].
pub fn parse(file: &Path, text: &str) -> Result<Vec<Resource>, ManifestError> {
    parse_documents(file, text).into_iter().collect()
}

/// Parses every document of a YAML stream, then validates each spec, all or
/// nothing; see [`parse_and_validate_documents`] for one result per document.
pub fn parse_and_validate(file: &Path, text: &str) -> Result<Vec<Resource>, ManifestError> {
    parse_and_validate_documents(file, text)
        .into_iter()
        .collect()
}

/// Reads, parses and validates one file, all or nothing.
pub fn load_file(file: &Path) -> Result<Vec<Resource>, ManifestError> {
    let text = std::fs::read_to_string(file).map_err(|error| ManifestError::Read {
        file: file.to_owned(),
        error,
    })?;
    parse_and_validate(file, &text)
}

/// Parses every non-empty document, keeping its index for error messages.
fn parse_indexed(file: &Path, text: &str) -> Vec<(usize, Result<Resource, ManifestError>)> {
    let mut parsed = Vec::new();
    let mut document = 0;
    for (i, chunk) in split_documents(text).into_iter().enumerate() {
        if chunk.blank {
            // Text before the first separator is a document only if it holds one.
            if i > 0 {
                document += 1;
            }
            continue;
        }
        // Padding with the lines before the chunk keeps YAML errors' line
        // numbers those of the file.
        let padded = format!("{}{}", "\n".repeat(chunk.first_line), chunk.text);
        // A chunk holds more than one document only when a separator has
        // content after it on its line, such as `--- {kind: Export}`.
        for deserializer in serde_yaml::Deserializer::from_str(&padded) {
            let value = match serde_yaml::Value::deserialize(deserializer) {
                Ok(value) => value,
                Err(error) => {
                    parsed.push((
                        document,
                        Err(ManifestError::Yaml {
                            file: file.to_owned(),
                            document,
                            error,
                        }),
                    ));
                    document += 1;
                    // The YAML parser cannot resume inside a broken chunk;
                    // the next separator starts afresh.
                    break;
                }
            };
            if !value.is_null() {
                parsed.push((document, parse_document(file, document, value)));
            }
            document += 1;
        }
    }
    parsed
}

/// The text of one document, as split at separator lines.
struct Chunk<'a> {
    /// Line of the file (from 0) the chunk starts on.
    first_line: usize,
    text: &'a str,
    /// Only blank lines, comments and directives.
    blank: bool,
}

/// Splits a YAML stream at its document separators: lines that are `---`,
/// alone or followed by a comment, as kubectl splits the files it applies.
/// Splitting before parsing lets a syntax error in one document leave the
/// others readable. A `---` at the start of a line always ends the document
/// before it in YAML (even a block scalar), so this never splits a document.
fn split_documents(text: &str) -> Vec<Chunk<'_>> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut first_line = 0;
    let mut offset = 0;
    for (line_number, line) in text.split_inclusive('\n').enumerate() {
        let content = line.trim_end_matches(['\n', '\r']);
        let separator = content.strip_prefix("---").is_some_and(|rest| {
            let after = rest.trim_start();
            rest.is_empty()
                || rest.starts_with([' ', '\t']) && (after.is_empty() || after.starts_with('#'))
        });
        if separator {
            chunks.push(chunk(&text[start..offset], first_line));
            start = offset + line.len();
            first_line = line_number + 1;
        }
        offset += line.len();
    }
    chunks.push(chunk(&text[start..], first_line));
    chunks
}

fn chunk(text: &str, first_line: usize) -> Chunk<'_> {
    let blank = text.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line.starts_with('%')
    });
    Chunk {
        first_line,
        text,
        blank,
    }
}

/// Members every kind has that the Rust types of custom resources do not
/// read: kube's derive leaves them to the caller, who has checked them.
const TYPE_MEMBERS: [&str; 2] = ["apiVersion", "kind"];

/// Deserializes a document into its type, with the path of any member at
/// fault, and collects the paths of the members the type does not read.
fn deserialize_strict<T: serde::de::DeserializeOwned>(
    value: serde_yaml::Value,
    unknown: &mut Vec<String>,
) -> Result<T, serde_path_to_error::Error<serde_yaml::Error>> {
    let mut record = |path: serde_ignored::Path<'_>| {
        let path = member_path(&path);
        if !TYPE_MEMBERS.contains(&path.as_str()) {
            unknown.push(path);
        }
    };
    serde_path_to_error::deserialize(serde_ignored::Deserializer::new(value, &mut record))
}

/// A member's path as the apiserver writes it: `spec.fields[0].name`.
fn member_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", member_path(parent)),
        Path::Map { parent, key } => match member_path(parent) {
            parent if parent.is_empty() => key.clone(),
            parent => format!("{parent}.{key}"),
        },
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => member_path(parent),
    }
}

fn parse_document(
    file: &Path,
    document: usize,
    value: serde_yaml::Value,
) -> Result<Resource, ManifestError> {
    let header = TypeHeader::deserialize(&value).map_err(|error| ManifestError::Yaml {
        file: file.to_owned(),
        document,
        error,
    })?;
    let missing = |member| ManifestError::MissingMember {
        file: file.to_owned(),
        document,
        member,
    };
    let kind = header.kind.ok_or_else(|| missing("kind"))?;
    let api_version = header.api_version.ok_or_else(|| missing("apiVersion"))?;
    let group = api_version.split_once('/').map(|(group, _)| group);
    let secret = kind == "Secret" && api_version == "v1";
    // Another group's kind of the same name is simply not ours.
    if !secret
        && (group != Some(GROUP) || !matches!(kind.as_str(), "Tracepoint" | "Retention" | "Export"))
    {
        return Err(ManifestError::UnknownKind {
            file: file.to_owned(),
            document,
            kind,
            api_version,
        });
    }
    if !secret && api_version != API_VERSION {
        return Err(ManifestError::WrongApiVersion {
            file: file.to_owned(),
            document,
            kind,
            api_version,
        });
    }
    let metadata = header.metadata.unwrap_or(NameHeader {
        name: None,
        namespace: None,
    });
    let name = metadata
        .name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| missing("metadata.name"))?;
    let namespace = metadata
        .namespace
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
    let mut unknown = Vec::new();
    let parsed = match kind.as_str() {
        "Tracepoint" => deserialize_strict(value, &mut unknown).map(Resource::Tracepoint),
        "Retention" => deserialize_strict(value, &mut unknown).map(Resource::Retention),
        "Export" => deserialize_strict(value, &mut unknown).map(Resource::Export),
        _ => deserialize_strict(value, &mut unknown).map(Resource::Secret),
    };
    let describe = |error: serde_path_to_error::Error<serde_yaml::Error>| {
        (error.path().to_string(), error.into_inner().to_string())
    };
    let mut resource = match parsed {
        Ok(resource) if unknown.is_empty() => resource,
        // A misspelled required member is also missing: the unknown name
        // comes first, as it is what to fix.
        parsed => {
            let resource_kind = match kind.as_str() {
                "Tracepoint" => "Tracepoint",
                "Retention" => "Retention",
                "Export" => "Export",
                _ => "Secret",
            };
            return Err(match parsed.map_err(describe) {
                Err((path, message)) if unknown.is_empty() => ManifestError::Malformed {
                    file: file.to_owned(),
                    document,
                    kind,
                    namespace,
                    name,
                    path,
                    message,
                },
                parsed => ManifestError::UnknownFields {
                    file: file.to_owned(),
                    document,
                    kind: resource_kind,
                    namespace,
                    name,
                    fields: unknown,
                    malformed: parsed
                        .err()
                        .map(|(path, message)| format!("{path}: {message}")),
                },
            });
        }
    };
    let metadata = match &mut resource {
        Resource::Tracepoint(r) => &mut r.metadata,
        Resource::Retention(r) => &mut r.metadata,
        Resource::Export(r) => &mut r.metadata,
        Resource::Secret(r) => &mut r.metadata,
    };
    metadata
        .namespace
        .get_or_insert_with(|| DEFAULT_NAMESPACE.to_owned());
    Ok(resource)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "sonde.yaml";

    fn parse_err(text: &str) -> String {
        match parse_and_validate(Path::new(FILE), text) {
            Ok(resources) => panic!(
                "parsed {} resources from an invalid manifest",
                resources.len()
            ),
            Err(e) => e.to_string(),
        }
    }

    const OPENS: &str = "\
apiVersion: sonde.dev/v1alpha1
kind: Tracepoint
metadata:
  name: opens
spec:
  probe:
    tracepoint: {group: syscalls, name: sys_enter_openat}
  fields:
    - name: filename
  table: opens
";

    #[test]
    fn reads_several_documents_and_defaults_the_namespace() {
        let text = format!(
            "{OPENS}---\n---\napiVersion: sonde.dev/v1alpha1\nkind: Retention\nmetadata:\n  name: keep\n  namespace: shop\nspec:\n  tables: [opens]\n  maxBytes: 64Mi\n"
        );
        let resources = parse_and_validate(Path::new(FILE), &text).expect("valid manifest");
        assert_eq!(resources.len(), 2);
        assert_eq!(resources[0].kind(), "Tracepoint");
        assert_eq!(resources[0].namespace(), "default");
        assert_eq!(resources[1].kind(), "Retention");
        assert_eq!(resources[1].name(), "keep");
        assert_eq!(resources[1].namespace(), "shop");
    }

    #[test]
    fn reads_v1_secrets_for_exports() {
        let text = format!(
            "{OPENS}---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: token\n\
             stringData:\n  authorization: Bearer x\n"
        );
        let resources = parse_and_validate(Path::new(FILE), &text).expect("valid manifest");
        assert_eq!(resources[1].kind(), "Secret");
        assert_eq!(resources[1].namespace(), "default");
        let Resource::Secret(secret) = &resources[1] else {
            panic!("a Secret");
        };
        assert!(
            secret
                .string_data
                .as_ref()
                .is_some_and(|d| d.contains_key("authorization"))
        );
    }

    #[test]
    fn names_file_document_and_problem() {
        let unknown =
            format!("{OPENS}---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n");
        assert_eq!(
            parse_err(&unknown),
            "sonde.yaml: document 1: v1 ConfigMap is not a Sonde resource; expected \
             Tracepoint, Retention or Export of sonde.dev/v1alpha1, or a v1 Secret"
        );
        let old = OPENS.replace("v1alpha1", "v1beta9");
        assert_eq!(
            parse_err(&old),
            "sonde.yaml: document 0: Tracepoint has apiVersion \"sonde.dev/v1beta9\"; this \
             version of Sonde reads sonde.dev/v1alpha1"
        );
        let no_kind = OPENS.replace("kind: Tracepoint\n", "");
        assert_eq!(
            parse_err(&no_kind),
            "sonde.yaml: document 0: kind is missing"
        );
        let no_name = OPENS.replace("  name: opens\n", "  labels: {}\n");
        assert_eq!(
            parse_err(&no_name),
            "sonde.yaml: document 0: metadata.name is missing"
        );
        let bad_type = OPENS.replace(
            "    - name: filename\n",
            "    - name: filename\n      type: int\n",
        );
        let message = parse_err(&bad_type);
        assert!(
            message.starts_with(
                "sonde.yaml: document 0: Tracepoint default/opens: spec.fields[0].type: unknown variant `int`"
            ),
            "{message}"
        );
        let invalid = OPENS.replace("table: opens", "table: Opens");
        assert_eq!(
            parse_err(&invalid),
            "sonde.yaml: document 0: Tracepoint default/opens: spec.table \"Opens\" is not a valid \
             table name: use 1 to 63 lowercase letters, digits and _, not starting with a digit"
        );
        let broken = "kind: [";
        assert!(parse_err(broken).starts_with("sonde.yaml: document 0: not a YAML object"));
    }

    #[test]
    fn missing_file_is_named() {
        let err = load_file(Path::new("/nonexistent/sonde.yaml")).expect_err("no such file");
        assert!(
            err.to_string()
                .starts_with("/nonexistent/sonde.yaml: cannot read:"),
            "{err}"
        );
    }
    /// The error of the one document of `text`.
    fn document_err(text: &str) -> String {
        match parse_documents(Path::new(FILE), text).as_slice() {
            [Err(e)] => e.to_string(),
            [Ok(resource)] => panic!("read {} {}", resource.kind(), resource.name()),
            other => panic!("expected one document, got {}", other.len()),
        }
    }

    #[test]
    fn misspelled_fields_are_refused_with_their_path() {
        let fields = OPENS.replace("  fields:", "  feilds:");
        assert_eq!(
            document_err(&fields),
            "sonde.yaml: document 0: Tracepoint default/opens: unknown field \"spec.feilds\""
        );
        let nested = OPENS.replace(
            "tracepoint: {group: syscalls, name: sys_enter_openat}",
            "tracepoint: {group: syscalls, nmae: sys_enter_openat}",
        );
        assert_eq!(
            document_err(&nested),
            "sonde.yaml: document 0: Tracepoint default/opens: unknown field \
             \"spec.probe.tracepoint.nmae\"; spec.probe.tracepoint: missing field `name`"
        );
        let in_list = OPENS.replace(
            "    - name: filename\n",
            "    - name: filename\n      maxLenght: 64\n",
        );
        assert!(
            document_err(&in_list).ends_with("unknown field \"spec.fields[0].maxLenght\""),
            "{}",
            document_err(&in_list)
        );
        let top = OPENS.replace("kind: Tracepoint\n", "kind: Tracepoint\nspecs: {}\n");
        assert!(
            document_err(&top).ends_with("unknown field \"specs\""),
            "{}",
            document_err(&top)
        );
        let metadata = OPENS.replace("  name: opens\n", "  name: opens\n  lables: {app: x}\n");
        assert!(
            document_err(&metadata).ends_with("unknown field \"metadata.lables\""),
            "{}",
            document_err(&metadata)
        );
    }

    #[test]
    fn every_unknown_field_of_a_document_is_named_in_order() {
        let text = OPENS
            .replace("  name: opens\n", "  name: opens\n  namespace: shop\n")
            .replace("  fields:", "  feilds:")
            .replace("  table: opens", "  table: opens\n  tabel: opens");
        assert_eq!(
            document_err(&text),
            "sonde.yaml: document 0: Tracepoint shop/opens: unknown field \"spec.feilds\", \
             unknown field \"spec.tabel\""
        );
    }

    #[test]
    fn misspelled_fields_of_every_kind_are_refused() {
        let retention = "apiVersion: sonde.dev/v1alpha1\nkind: Retention\nmetadata:\n  \
                         name: keep\nspec:\n  tables: [opens]\n  maxbytes: 64Mi\n  maxAge: 1h\n";
        assert_eq!(
            document_err(retention),
            "sonde.yaml: document 0: Retention default/keep: unknown field \"spec.maxbytes\""
        );
        let export = "apiVersion: sonde.dev/v1alpha1\nkind: Export\nmetadata:\n  name: logs\n\
                      spec:\n  tables: [opens]\n  destination:\n    otlp:\n      \
                      endpoint: http://127.0.0.1:4317\n      protocol: grpc\n      signal: logs\n      headersFrm: {name: token}\n  \
                      mapping:\n    body: filename\n";
        let message = document_err(export);
        assert!(
            message.starts_with("sonde.yaml: document 0: Export default/logs: ")
                && message.ends_with("unknown field \"spec.destination.otlp.headersFrm\""),
            "{message}"
        );
        let secret = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: token\n\
                      strinData:\n  authorization: Bearer x\n";
        assert_eq!(
            document_err(secret),
            "sonde.yaml: document 0: Secret default/token: unknown field \"strinData\""
        );
    }

    #[test]
    fn metadata_and_status_as_kubectl_prints_them_are_read() {
        let text = OPENS.replace(
            "  name: opens\n",
            "  name: opens\n  namespace: shop\n  labels: {team: storage}\n  \
             annotations: {sonde.dev/owner: x}\n  resourceVersion: \"42\"\n  generation: 3\n  \
             uid: 0b6c2c1e-1f11-4c1f-9a55-3a8d8a9b9c01\n  creationTimestamp: null\n",
        ) + "status:\n  phase: Running\n  observedGeneration: 3\n  table: opens\n";
        let resources = parse_documents(Path::new(FILE), &text);
        let [Ok(Resource::Tracepoint(tp))] = resources.as_slice() else {
            panic!("{resources:?}");
        };
        assert_eq!(tp.metadata.namespace.as_deref(), Some("shop"));
        assert!(
            tp.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l["team"] == "storage")
        );
        assert!(
            tp.status
                .as_ref()
                .is_some_and(|s| s.table.as_deref() == Some("opens"))
        );
    }

    #[test]
    fn a_bad_document_costs_only_itself() {
        let misspelled = OPENS
            .replace("name: opens", "name: typo")
            .replace("  fields:", "  feilds:");
        let text = format!(
            "{OPENS}--- # the misspelled one\n{misspelled}---\nkind: [\n---\n\
             apiVersion: sonde.dev/v1alpha1\nkind: Retention\nmetadata:\n  name: keep\n\
             spec:\n  tables: [opens]\n  maxAge: 1h\n"
        );
        let documents = parse_documents(Path::new(FILE), &text);
        assert_eq!(documents.len(), 4, "{documents:?}");
        assert!(matches!(&documents[0], Ok(r) if r.name() == "opens"));
        let Err(unknown) = &documents[1] else {
            panic!("{:?}", documents[1]);
        };
        assert_eq!(
            unknown.to_string(),
            "sonde.yaml: document 1: Tracepoint default/typo: unknown field \"spec.feilds\""
        );
        let Err(broken) = &documents[2] else {
            panic!("{:?}", documents[2]);
        };
        // `kind: [` is line 23 of the file; the parser misses its node at
        // the start of line 24.
        let broken = broken.to_string();
        assert!(
            broken.starts_with("sonde.yaml: document 2: not a YAML object:")
                && broken.contains(" line 24 "),
            "{broken}"
        );
        assert!(matches!(&documents[3], Ok(r) if r.kind() == "Retention"));

        let all_or_nothing = parse(Path::new(FILE), &text).expect_err("a document is bad");
        assert_eq!(all_or_nothing.to_string(), unknown.to_string());
    }

    #[test]
    fn yaml_errors_name_the_line_of_the_file() {
        let text = format!("{OPENS}---\nkind: [\n");
        let documents = parse_documents(Path::new(FILE), &text);
        let [Ok(_), Err(broken)] = documents.as_slice() else {
            panic!("{documents:?}");
        };
        // OPENS has 10 lines and the separator is line 11, so `kind: [` is
        // line 12: the parser misses its node at the start of line 13 (the
        // chunk alone would say line 2).
        let broken = broken.to_string();
        assert_eq!(
            broken,
            "sonde.yaml: document 1: not a YAML object: did not find expected node content at \
             line 13 column 1, while parsing a flow node"
        );
    }

    #[test]
    fn validation_is_per_document_too() {
        let invalid = OPENS
            .replace("name: opens", "name: upper")
            .replace("table: opens", "table: Opens");
        let text = format!("{invalid}---\n{OPENS}");
        let documents = parse_and_validate_documents(Path::new(FILE), &text);
        let [Err(error), Ok(valid)] = documents.as_slice() else {
            panic!("{documents:?}");
        };
        assert!(
            error
                .to_string()
                .starts_with("sonde.yaml: document 0: Tracepoint default/upper: spec.table"),
            "{error}"
        );
        assert_eq!(valid.name(), "opens");
    }

    #[test]
    fn separators_split_like_kubectl() {
        let chunks = split_documents("# head\n---\na: 1\n--- # c\n---x: 1\n---\t\n");
        let texts: Vec<(usize, &str, bool)> = chunks
            .iter()
            .map(|c| (c.first_line, c.text, c.blank))
            .collect();
        assert_eq!(
            texts,
            [
                (0, "# head\n", true),
                (2, "a: 1\n", false),
                (4, "---x: 1\n", false),
                (6, "", true),
            ]
        );
    }

    #[test]
    fn errors_say_their_cause_once() {
        let error = load_file(Path::new("/nonexistent/sonde.yaml")).expect_err("no such file");
        assert!(std::error::Error::source(&error).is_none());
        let invalid = OPENS.replace("table: opens", "table: Opens");
        let error = parse_and_validate(Path::new(FILE), &invalid).expect_err("invalid");
        assert!(std::error::Error::source(&error).is_none(), "{error}");
    }
}
