//! Where sealed batches of captured rows go once the drain thread has
//! built them: the agent's table store, behind a trait so the capture path
//! knows nothing of retention, readers or query engines.

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use crds::TableName;

/// Why a table refused to be created or to take rows.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("table {name} exists with other columns")]
    SchemaMismatch { name: TableName },
    #[error("table {name} does not exist")]
    Missing { name: TableName },
    #[error("table {name} refused the rows")]
    Refused {
        name: TableName,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The destination of sealed batches, shared with the readers.
pub trait BatchSink: Send + Sync {
    /// Creates the table, or reuses an existing one with the same columns.
    fn create_table(&self, name: &TableName, schema: SchemaRef) -> Result<(), SinkError>;

    /// Appends a sealed batch.
    fn append(&self, name: &TableName, batch: RecordBatch) -> Result<(), SinkError>;

    /// Drops a table and what it holds; false if there was none.
    fn drop_table(&self, name: &TableName) -> bool;

    /// What the table holds now (for logs and tests; readers have their own
    /// path to the store).
    fn batches(&self, name: &TableName) -> Vec<RecordBatch>;
}

/// A sink that keeps tables in memory, for the capture path's unit tests.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct MemorySink {
    tables: std::sync::Mutex<std::collections::BTreeMap<TableName, (SchemaRef, Vec<RecordBatch>)>>,
}

#[cfg(test)]
impl MemorySink {
    fn tables(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::BTreeMap<TableName, (SchemaRef, Vec<RecordBatch>)>,
    > {
        // A test that panicked while holding it has failed already.
        self.tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn rows(&self, name: &TableName) -> Option<usize> {
        self.tables()
            .get(name)
            .map(|(_, batches)| batches.iter().map(RecordBatch::num_rows).sum())
    }
}

#[cfg(test)]
impl BatchSink for MemorySink {
    fn create_table(&self, name: &TableName, schema: SchemaRef) -> Result<(), SinkError> {
        let mut tables = self.tables();
        match tables.get(name) {
            Some((existing, _)) if *existing != schema => {
                Err(SinkError::SchemaMismatch { name: name.clone() })
            }
            Some(_) => Ok(()),
            None => {
                tables.insert(name.clone(), (schema, Vec::new()));
                Ok(())
            }
        }
    }

    fn append(&self, name: &TableName, batch: RecordBatch) -> Result<(), SinkError> {
        match self.tables().get_mut(name) {
            Some((_, batches)) => {
                batches.push(batch);
                Ok(())
            }
            None => Err(SinkError::Missing { name: name.clone() }),
        }
    }

    fn drop_table(&self, name: &TableName) -> bool {
        self.tables().remove(name).is_some()
    }

    fn batches(&self, name: &TableName) -> Vec<RecordBatch> {
        self.tables()
            .get(name)
            .map(|(_, batches)| batches.clone())
            .unwrap_or_default()
    }
}
