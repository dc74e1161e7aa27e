//! The two-part names of captured tables, shared by every layer that
//! names one: capture, store, Flight, SQL and exports.

/// A two-part table name: the schema is the Tracepoint's namespace (or
/// `sonde` for built-in tables), as in `SELECT * FROM shop.opens`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    pub schema: String,
    pub table: String,
}

impl TableName {
    pub fn new(schema: impl Into<String>, table: impl Into<String>) -> Self {
        Self {
            schema: schema.into(),
            table: table.into(),
        }
    }

    /// Parses `schema.table`.
    pub fn parse(qualified: &str) -> Option<Self> {
        let (schema, table) = qualified.split_once('.')?;
        (!schema.is_empty() && !table.is_empty() && !table.contains('.'))
            .then(|| Self::new(schema, table))
    }
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_two_part() {
        assert_eq!(
            TableName::parse("shop.opens"),
            Some(TableName::new("shop", "opens"))
        );
        assert_eq!(TableName::parse("opens"), None);
        assert_eq!(TableName::parse("a.b.c"), None);
        assert_eq!(TableName::parse(".x"), None);
        assert_eq!(
            TableName::new("sonde", "probe_status").to_string(),
            "sonde.probe_status"
        );
    }
}
