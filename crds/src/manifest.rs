//! Reads Sonde resources from the same multi-document YAML files users
//! `kubectl apply`, for standalone mode (no apiserver).
//!
//! Every error names the file, the document (counted from 0, in file order)
//! and the problem; for a malformed spec, the path of the member at fault.

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

/// Why a manifest could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// The document is not YAML, or not a mapping.
    #[error("{}: document {document}: not a YAML object: {source}", file.display())]
    Yaml {
        /// The file.
        file: PathBuf,
        /// Index of the document in the file.
        document: usize,
        /// The YAML error.
        #[source]
        source: serde_yaml::Error,
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
    #[error("{}: document {document}: {kind} {name:?}: {path}: {message}", file.display())]
    Malformed {
        /// The file.
        file: PathBuf,
        /// Index of the document in the file.
        document: usize,
        /// The kind.
        kind: String,
        /// metadata.name, if it could be read.
        name: String,
        /// Path of the member at fault, such as `spec.fields[0].type`.
        path: String,
        /// What is wrong with it.
        message: String,
    },

    /// The document deserializes but its spec is invalid.
    #[error("{}: document {document}: {kind} {name:?}: {source}", file.display())]
    Invalid {
        /// The file.
        file: PathBuf,
        /// Index of the document in the file.
        document: usize,
        /// The kind.
        kind: &'static str,
        /// metadata.name.
        name: String,
        /// Why the spec is invalid.
        #[source]
        source: ValidationError,
    },
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
}

/// Parses every document of a YAML stream. `file` only names the source in
/// errors. Empty documents (such as after a trailing `---`) are skipped.
/// Specs are not validated; see [`parse_and_validate`].
pub fn parse(file: &Path, text: &str) -> Result<Vec<Resource>, ManifestError> {
    Ok(parse_indexed(file, text)?
        .into_iter()
        .map(|(_, resource)| resource)
        .collect())
}

/// Parses every non-empty document, keeping its index for error messages.
fn parse_indexed(file: &Path, text: &str) -> Result<Vec<(usize, Resource)>, ManifestError> {
    let mut resources = Vec::new();
    for (document, deserializer) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value =
            serde_yaml::Value::deserialize(deserializer).map_err(|source| ManifestError::Yaml {
                file: file.to_owned(),
                document,
                source,
            })?;
        if value.is_null() {
            continue;
        }
        resources.push((document, parse_document(file, document, value)?));
    }
    Ok(resources)
}

/// Parses every document of a YAML stream, then validates each spec.
pub fn parse_and_validate(file: &Path, text: &str) -> Result<Vec<Resource>, ManifestError> {
    let resources = parse_indexed(file, text)?;
    for (document, resource) in &resources {
        resource
            .validate()
            .map_err(|source| ManifestError::Invalid {
                file: file.to_owned(),
                document: *document,
                kind: resource.kind(),
                name: resource.name().to_owned(),
                source,
            })?;
    }
    Ok(resources
        .into_iter()
        .map(|(_, resource)| resource)
        .collect())
}

/// Reads, parses and validates one file.
pub fn load_file(file: &Path) -> Result<Vec<Resource>, ManifestError> {
    let text = std::fs::read_to_string(file).map_err(|source| ManifestError::Read {
        file: file.to_owned(),
        source,
    })?;
    parse_and_validate(file, &text)
}

fn parse_document(
    file: &Path,
    document: usize,
    value: serde_yaml::Value,
) -> Result<Resource, ManifestError> {
    let header = TypeHeader::deserialize(&value).map_err(|source| ManifestError::Yaml {
        file: file.to_owned(),
        document,
        source,
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
    let name = header
        .metadata
        .and_then(|m| m.name)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| missing("metadata.name"))?;
    let malformed =
        |error: serde_path_to_error::Error<serde_yaml::Error>| ManifestError::Malformed {
            file: file.to_owned(),
            document,
            kind: kind.clone(),
            name: name.clone(),
            path: error.path().to_string(),
            message: error.into_inner().to_string(),
        };
    let mut resource = match kind.as_str() {
        "Tracepoint" => {
            Resource::Tracepoint(serde_path_to_error::deserialize(value).map_err(malformed)?)
        }
        "Retention" => {
            Resource::Retention(serde_path_to_error::deserialize(value).map_err(malformed)?)
        }
        "Export" => Resource::Export(serde_path_to_error::deserialize(value).map_err(malformed)?),
        _ => Resource::Secret(serde_path_to_error::deserialize(value).map_err(malformed)?),
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
                "sonde.yaml: document 0: Tracepoint \"opens\": spec.fields[0].type: unknown variant `int`"
            ),
            "{message}"
        );
        let invalid = OPENS.replace("table: opens", "table: Opens");
        assert_eq!(
            parse_err(&invalid),
            "sonde.yaml: document 0: Tracepoint \"opens\": spec.table \"Opens\" is not a valid \
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
}
