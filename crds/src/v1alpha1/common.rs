//! Pieces shared by several kinds: column names and types, the standard
//! columns every table carries, Secret references, and the schema fragments
//! that schemars cannot derive on its own.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::units::DURATION_PATTERN;

/// The grammar of column, table and metric names: lowercase, digits and `_`,
/// not starting with a digit, so names work unquoted in SQL and PromQL.
pub const NAME_PATTERN: &str = r"^[a-z_][a-z0-9_]*$";

/// The longest column, table or metric name.
pub const MAX_NAME_LENGTH: usize = 63;

/// The columns every captured row carries, in table order.
pub const STANDARD_COLUMNS: [StandardColumn; 9] = [
    StandardColumn {
        name: "time_",
        column_type: ColumnType::Timestamp,
        in_kernel: false,
    },
    StandardColumn {
        name: "node",
        column_type: ColumnType::String,
        in_kernel: false,
    },
    StandardColumn {
        name: "pid",
        column_type: ColumnType::U32,
        in_kernel: true,
    },
    StandardColumn {
        name: "tid",
        column_type: ColumnType::U32,
        in_kernel: true,
    },
    StandardColumn {
        name: "comm",
        column_type: ColumnType::String,
        in_kernel: true,
    },
    StandardColumn {
        name: "cgroup_id",
        column_type: ColumnType::U64,
        in_kernel: true,
    },
    StandardColumn {
        name: "namespace",
        column_type: ColumnType::String,
        in_kernel: false,
    },
    StandardColumn {
        name: "pod",
        column_type: ColumnType::String,
        in_kernel: false,
    },
    StandardColumn {
        name: "container",
        column_type: ColumnType::String,
        in_kernel: false,
    },
];

/// A column that Sonde adds to every row of every Tracepoint table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandardColumn {
    /// Column name.
    pub name: &'static str,
    /// Column type.
    pub column_type: ColumnType,
    /// Whether the value is known in the kernel, so filters can use it.
    /// Pod, namespace, container and node are resolved in user space.
    pub in_kernel: bool,
}

/// Looks up a standard column by name.
pub fn standard_column(name: &str) -> Option<&'static StandardColumn> {
    STANDARD_COLUMNS.iter().find(|column| column.name == name)
}

/// Whether `name` follows [`NAME_PATTERN`] and [`MAX_NAME_LENGTH`].
pub fn is_valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    let Some(first) = bytes.next() else {
        return false;
    };
    name.len() <= MAX_NAME_LENGTH
        && (first.is_ascii_lowercase() || first == b'_')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Whether `name` is a valid Kubernetes label-style name (RFC 1123 label),
/// as container names are.
pub fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

// Documented for rustdoc only: kube hoists an optional enum's own schema
// over the member's, and the member's description is the useful one.
#[cfg_attr(
    doc,
    doc = "The type of a captured field, as declared in a Tracepoint."
)]
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    /// Unsigned 8-bit integer.
    U8,
    /// Unsigned 16-bit integer.
    U16,
    /// Unsigned 32-bit integer.
    U32,
    /// Unsigned 64-bit integer.
    U64,
    /// Signed 8-bit integer.
    I8,
    /// Signed 16-bit integer.
    I16,
    /// Signed 32-bit integer.
    I32,
    /// Signed 64-bit integer.
    I64,
    /// Boolean (any non-zero byte is true).
    Bool,
    /// NUL-terminated string: a `__data_loc char[]` or `char[N]` tracepoint
    /// field, or a pointer to a string (kernel memory for kernel probes, user
    /// memory for user-space probes), read up to `maxLength` bytes.
    String,
}

impl FieldType {
    /// The name used in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::U8 => "u8",
            Self::U16 => "u16",
            Self::U32 => "u32",
            Self::U64 => "u64",
            Self::I8 => "i8",
            Self::I16 => "i16",
            Self::I32 => "i32",
            Self::I64 => "i64",
            Self::Bool => "bool",
            Self::String => "string",
        }
    }

    /// The inclusive range of integer values of this type, or `None` for
    /// strings and booleans.
    pub fn integer_range(self) -> Option<(i128, i128)> {
        match self {
            Self::U8 => Some((0, u8::MAX.into())),
            Self::U16 => Some((0, u16::MAX.into())),
            Self::U32 => Some((0, u32::MAX.into())),
            Self::U64 => Some((0, u64::MAX.into())),
            Self::I8 => Some((i8::MIN.into(), i8::MAX.into())),
            Self::I16 => Some((i16::MIN.into(), i16::MAX.into())),
            Self::I32 => Some((i32::MIN.into(), i32::MAX.into())),
            Self::I64 => Some((i64::MIN.into(), i64::MAX.into())),
            Self::Bool | Self::String => None,
        }
    }
}

impl std::fmt::Display for FieldType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The type of a table column, as reported in status.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    /// Nanoseconds since the Unix epoch.
    Timestamp,
    /// Unsigned 8-bit integer.
    U8,
    /// Unsigned 16-bit integer.
    U16,
    /// Unsigned 32-bit integer.
    U32,
    /// Unsigned 64-bit integer.
    U64,
    /// Signed 8-bit integer.
    I8,
    /// Signed 16-bit integer.
    I16,
    /// Signed 32-bit integer.
    I32,
    /// Signed 64-bit integer.
    I64,
    /// Boolean.
    Bool,
    /// UTF-8 string (invalid bytes replaced).
    String,
}

impl From<FieldType> for ColumnType {
    fn from(field_type: FieldType) -> Self {
        match field_type {
            FieldType::U8 => Self::U8,
            FieldType::U16 => Self::U16,
            FieldType::U32 => Self::U32,
            FieldType::U64 => Self::U64,
            FieldType::I8 => Self::I8,
            FieldType::I16 => Self::I16,
            FieldType::I32 => Self::I32,
            FieldType::I64 => Self::I64,
            FieldType::Bool => Self::Bool,
            FieldType::String => Self::String,
        }
    }
}

impl ColumnType {
    /// The name used in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timestamp => "timestamp",
            Self::U8 => "u8",
            Self::U16 => "u16",
            Self::U32 => "u32",
            Self::U64 => "u64",
            Self::I8 => "i8",
            Self::I16 => "i16",
            Self::I32 => "i32",
            Self::I64 => "i64",
            Self::Bool => "bool",
            Self::String => "string",
        }
    }
}

impl std::fmt::Display for ColumnType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Secret in the same namespace as the resource that refers to it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// One key of a Secret in the same namespace as the resource that refers to it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Schema of a Go-style duration string.
pub(crate) fn duration_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "maxLength": 64,
        "pattern": DURATION_PATTERN,
    })
}

/// Schema of a byte size: an integer number of bytes, or a string with a
/// Kubernetes quantity suffix. Structural schemas cannot constrain the two
/// branches separately, so a CEL rule on the member checks the value.
pub(crate) fn byte_size_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-int-or-string": true,
    })
}

/// Schema of a copied spec that the apiserver stores without checking:
/// it was validated on its own resource before it was copied.
pub(crate) fn preserved_object_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// A filter operand: an integer or a string.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(untagged)]
pub enum FilterValue {
    /// An integer, compared with integer fields. YAML hex (`0x40`) works.
    Int(i64),
    /// A string, compared with string fields.
    String(String),
}

impl JsonSchema for FilterValue {
    fn schema_name() -> Cow<'static, str> {
        "FilterValue".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "An integer (for integer and bool fields) or a string (for string fields).",
            "x-kubernetes-int-or-string": true,
        })
    }
}

impl std::fmt::Display for FilterValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Int(value) => write!(f, "{value}"),
            Self::String(value) => write!(f, "{value:?}"),
        }
    }
}
