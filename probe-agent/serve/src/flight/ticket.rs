//! The JSON ticket of the table path and its validation against a table.

use std::sync::Arc;

use arrow_schema::{DataType, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

use super::error::RequestError;
use probe_store::{TableInfo, TableName};

/// The standard time column every capture table carries.
pub(crate) const TIME_COLUMN: &str = "time_";

/// A DoGet ticket (and GetFlightInfo/GetSchema command) of the table path:
///
/// ```json
/// {"table": "shop.opens", "columns": ["time_", "comm"],
///  "since": "2025-01-01T00:00:00Z", "until": 1735689600000000000,
///  "limit": 100, "follow": false, "dictionary": false}
/// ```
///
/// Only `table` is required. `since` is inclusive and `until` exclusive,
/// both on `time_`. With `follow` the stream goes on with rows appended
/// after the snapshot until the client cancels it (or `limit` rows were
/// sent). With `dictionary` the low-cardinality string columns (`node`,
/// `namespace`, `pod`, `container`, `comm`) come as dictionary arrays;
/// by default every column is plain.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableTicket {
    pub table: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<TimeBound>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<TimeBound>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub follow: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dictionary: bool,
}

/// A point in time: Unix-epoch nanoseconds or an RFC 3339 string.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TimeBound {
    Nanos(i64),
    Text(String),
}

impl TimeBound {
    fn nanos(&self, field: &'static str) -> Result<i64, RequestError> {
        match self {
            Self::Nanos(n) => Ok(*n),
            Self::Text(text) => {
                arrow_cast::parse::string_to_timestamp_nanos(text).map_err(|source| {
                    RequestError::Time {
                        field,
                        value: text.clone(),
                        source,
                    }
                })
            }
        }
    }
}

impl TableTicket {
    /// A ticket reading a whole table.
    pub fn whole(name: &TableName) -> Self {
        Self {
            table: name.to_string(),
            ..Self::default()
        }
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, RequestError> {
        serde_json::from_slice(bytes).map_err(|source| RequestError::TicketJson { source })
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain strings, integers and bools cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The table named, checked for shape only.
    pub fn table_name(&self) -> Result<TableName, RequestError> {
        TableName::parse(&self.table).ok_or_else(|| RequestError::TableName {
            name: self.table.clone(),
        })
    }

    /// Checks everything the ticket asks of `table`, which must be the table
    /// it names.
    pub(crate) fn validate(&self, table: &TableInfo) -> Result<TableRead, RequestError> {
        let schema = &table.schema;
        let projection = match &self.columns {
            None => None,
            Some(columns) => {
                let mut indices = Vec::with_capacity(columns.len());
                for column in columns {
                    let index =
                        schema
                            .index_of(column)
                            .map_err(|_| RequestError::UnknownColumn {
                                table: table.name.to_string(),
                                column: column.clone(),
                                available: column_list(schema),
                            })?;
                    if indices.contains(&index) {
                        return Err(RequestError::DuplicateColumn {
                            column: column.clone(),
                        });
                    }
                    indices.push(index);
                }
                Some(indices)
            }
        };
        let since = self.since.as_ref().map(|b| b.nanos("since")).transpose()?;
        let until = self.until.as_ref().map(|b| b.nanos("until")).transpose()?;
        if let (Some(since), Some(until)) = (since, until)
            && since > until
        {
            return Err(RequestError::EmptyRange { since, until });
        }
        if self.follow && until.is_some() {
            return Err(RequestError::FollowWithUntil);
        }
        let time_column = if since.is_some() || until.is_some() {
            Some(
                time_column(schema).ok_or_else(|| RequestError::NoTimeColumn {
                    table: table.name.to_string(),
                })?,
            )
        } else {
            None
        };
        let limit = match self.limit {
            Some(0) => return Err(RequestError::ZeroLimit),
            Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
            None => None,
        };
        let output_schema = match &projection {
            Some(indices) => Arc::new(
                schema
                    .project(indices)
                    .map_err(|source| RequestError::Arrow { source })?,
            ),
            None => Arc::clone(schema),
        };
        let output_schema = if self.dictionary {
            probe_store::dictionary_schema(&output_schema)
        } else {
            output_schema
        };
        Ok(TableRead {
            name: table.name.clone(),
            projection,
            output_schema,
            time_column,
            since,
            until,
            limit,
            follow: self.follow,
        })
    }
}

/// A validated table read.
#[derive(Clone, Debug)]
pub(crate) struct TableRead {
    pub name: TableName,
    pub projection: Option<Vec<usize>>,
    pub output_schema: SchemaRef,
    /// Index of `time_` in the table's schema, when a time range is set.
    pub time_column: Option<usize>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub limit: Option<usize>,
    pub follow: bool,
}

/// The index of a nanosecond `time_` column.
fn time_column(schema: &SchemaRef) -> Option<usize> {
    let index = schema.index_of(TIME_COLUMN).ok()?;
    matches!(
        schema.field(index).data_type(),
        DataType::Timestamp(TimeUnit::Nanosecond, _)
    )
    .then_some(index)
}

fn column_list(schema: &SchemaRef) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "in a test a failed unwrap is a failed assertion"
)]
mod tests {
    use super::*;
    use crate::flight::fixture::standard_schema;

    fn info() -> TableInfo {
        TableInfo {
            name: TableName::new("shop", "opens"),
            schema: standard_schema(),
            rows: 0,
            bytes: 0,
            time_range: None,
        }
    }

    fn check(json: &str) -> Result<TableRead, RequestError> {
        TableTicket::parse(json.as_bytes())?.validate(&info())
    }

    #[test]
    fn accepts_nanos_and_rfc3339() {
        let read = check(
            r#"{"table":"shop.opens","columns":["comm","time_"],
                "since":"1970-01-01T00:00:01Z","until":2000000000,"limit":5}"#,
        )
        .unwrap();
        assert_eq!(read.since, Some(1_000_000_000));
        assert_eq!(read.until, Some(2_000_000_000));
        assert_eq!(read.limit, Some(5));
        assert_eq!(read.projection, Some(vec![4, 0]));
        assert_eq!(read.output_schema.field(0).name(), "comm");
        assert_eq!(read.time_column, Some(0));
    }

    #[test]
    fn rejects_bad_tickets_precisely() {
        let cases = [
            (
                r#"{"table":"shop.opens","columns":["nope"]}"#,
                "no column \"nope\"",
            ),
            (r#"{"table":"shop.opens","columns":["pid","pid"]}"#, "twice"),
            (
                r#"{"table":"shop.opens","since":10,"until":5}"#,
                "after `until`",
            ),
            (r#"{"table":"shop.opens","limit":0}"#, "at least 1"),
            (r#"{"table":"shop.opens","since":"yesterday"}"#, "RFC 3339"),
            (
                r#"{"table":"shop.opens","follow":true,"until":5}"#,
                "follow",
            ),
            (r#"{"table":"shop.opens","colums":[]}"#, "unknown field"),
            (r#"{"table":"shop.opens""#, "not valid JSON"),
        ];
        for (json, expected) in cases {
            let error = check(json).unwrap_err().to_string();
            assert!(error.contains(expected), "{json}: {error}");
        }
    }

    #[test]
    fn round_trips_through_json() {
        let ticket = TableTicket {
            table: "shop.opens".into(),
            since: Some(TimeBound::Text("2025-01-01T00:00:00Z".into())),
            follow: true,
            ..TableTicket::default()
        };
        assert_eq!(TableTicket::parse(&ticket.to_json()).unwrap(), ticket);
        assert_eq!(
            String::from_utf8(TableTicket::whole(&TableName::new("a", "b")).to_json()).unwrap(),
            r#"{"table":"a.b"}"#
        );
    }
}
