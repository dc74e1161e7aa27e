//! Cold batches: many small sealed batches merged into one, its
//! low-cardinality string columns dictionary-encoded and every buffer
//! compressed, held as one Arrow IPC stream message.
//!
//! What a cold batch holds is exactly the bytes of that message, so the
//! store counts it as such. Reading decodes the message and casts every
//! column back to the table's own type: readers see the same schema for
//! hot and cold data.

use std::{io::Cursor, sync::Arc};

use arrow_array::{ArrayRef, RecordBatch, RecordBatchOptions, cast::AsArray};
use arrow_ipc::{
    CompressionType,
    reader::StreamReader,
    writer::{IpcWriteOptions, StreamWriter},
};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};

/// String columns every Sonde table has that take few distinct values per
/// node: always dictionary-encoded when cold.
pub const LOW_CARDINALITY_COLUMNS: [&str; 5] = ["node", "namespace", "pod", "container", "comm"];

/// Other string columns are dictionary-encoded when a batch has at most
/// one distinct value per this many rows (HTTP methods, status texts,
/// file names a process opens again and again).
const DICTIONARY_MIN_REPEATS: usize = 4;

/// The dictionary key type: wide enough for any batch's distinct values.
const KEY_TYPE: DataType = DataType::Int32;

/// How cold batches are compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Codec {
    /// Zstandard: the smallest; what the agent uses.
    #[default]
    Zstd,
    /// LZ4 frames: faster to decode, larger.
    Lz4,
}

impl Codec {
    fn ipc(self) -> CompressionType {
        match self {
            Self::Zstd => CompressionType::ZSTD,
            Self::Lz4 => CompressionType::LZ4_FRAME,
        }
    }
}

/// One cold batch: an IPC stream (schema, dictionaries, one record batch)
/// with compressed buffers.
#[derive(Debug)]
pub struct ColdBatch {
    encoded: Vec<u8>,
    rows: usize,
    /// What the batches it replaced held, for the compression ratio.
    plain_bytes: u64,
}

impl ColdBatch {
    /// Encodes `batch`, which replaces batches that held `plain_bytes`.
    pub fn encode(batch: &RecordBatch, plain_bytes: u64, codec: Codec) -> Result<Self, ArrowError> {
        let dense = dictionary_encode(batch)?;
        let options = IpcWriteOptions::default().try_with_compression(Some(codec.ipc()))?;
        let mut writer = StreamWriter::try_new_with_options(Vec::new(), &dense.schema(), options)?;
        writer.write(&dense)?;
        writer.finish()?;
        let mut encoded = writer.into_inner()?;
        encoded.shrink_to_fit();
        Ok(Self {
            encoded,
            rows: batch.num_rows(),
            plain_bytes,
        })
    }

    /// Bytes held: the encoded message's allocation.
    pub fn bytes(&self) -> u64 {
        self.encoded.capacity() as u64
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn plain_bytes(&self) -> u64 {
        self.plain_bytes
    }

    /// The rows, with the columns of `schema` (the table's) that
    /// `projection` names (all for `None`): dictionary columns are cast
    /// back unless `schema` asks for dictionaries. Columns left out are
    /// not decompressed.
    pub fn decode(
        &self,
        schema: &SchemaRef,
        projection: Option<&[usize]>,
    ) -> Result<RecordBatch, ArrowError> {
        let schema = match projection {
            Some(indices) => Arc::new(schema.project(indices)?),
            None => Arc::clone(schema),
        };
        let reader = StreamReader::try_new(
            Cursor::new(self.encoded.as_slice()),
            projection.map(<[usize]>::to_vec),
        )?;
        let mut batches = Vec::with_capacity(1);
        for batch in reader {
            batches.push(batch?);
        }
        let batch = match batches.len() {
            1 => batches.swap_remove(0),
            _ => {
                let first = batches.first().map(RecordBatch::schema);
                let stream_schema = first.unwrap_or_else(|| Arc::new(Schema::empty()));
                arrow_select::concat::concat_batches(&stream_schema, &batches)?
            }
        };
        conform(&batch, &schema)
    }
}

/// Whether a string column of `batch` is worth a dictionary.
fn wants_dictionary(field: &Field, column: &ArrayRef) -> bool {
    if !matches!(field.data_type(), DataType::Utf8 | DataType::LargeUtf8) {
        return false;
    }
    LOW_CARDINALITY_COLUMNS.contains(&field.name().as_str())
        || few_distinct(column, column.len() / DICTIONARY_MIN_REPEATS)
}

/// Whether `column` has at most `limit` distinct values, stopping as soon
/// as it has more.
fn few_distinct(column: &ArrayRef, limit: usize) -> bool {
    let mut seen = std::collections::HashSet::new();
    let mut check = |value: Option<&str>| {
        seen.insert(value.map(str::to_owned));
        seen.len() <= limit
    };
    match column.data_type() {
        DataType::Utf8 => column.as_string::<i32>().iter().all(&mut check),
        DataType::LargeUtf8 => column.as_string::<i64>().iter().all(&mut check),
        _ => false,
    }
}

fn dictionary_encode(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let schema = batch.schema();
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        if wants_dictionary(field, column) {
            let data_type =
                DataType::Dictionary(Box::new(KEY_TYPE), Box::new(field.data_type().clone()));
            columns.push(arrow_cast::cast(column, &data_type)?);
            fields.push(field.as_ref().clone().with_data_type(data_type));
        } else {
            columns.push(Arc::clone(column));
            fields.push(field.as_ref().clone());
        }
    }
    RecordBatch::try_new(
        Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone())),
        columns,
    )
}

/// `batch` with the column types of `schema` (same names, same order).
fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    let columns = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(field, column)| {
            if column.data_type() == field.data_type() {
                Ok(Arc::clone(column))
            } else {
                arrow_cast::cast(column, field.data_type())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    // The row count is explicit: a read of no column (`count(*)`) still
    // has rows.
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(Arc::clone(schema), columns, &options)
}

/// `schema` with the store's low-cardinality string columns as
/// dictionaries: what a reader who asks for dictionary columns gets.
pub fn dictionary_schema(schema: &SchemaRef) -> SchemaRef {
    let fields = schema
        .fields()
        .iter()
        .map(|field| {
            let low = LOW_CARDINALITY_COLUMNS.contains(&field.name().as_str());
            if low && field.data_type() == &DataType::Utf8 {
                Arc::new(field.as_ref().clone().with_data_type(DataType::Dictionary(
                    Box::new(KEY_TYPE),
                    Box::new(DataType::Utf8),
                )))
            } else {
                Arc::clone(field)
            }
        })
        .collect::<Vec<_>>();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// `batch` cast to `schema` (see [`dictionary_schema`]).
pub fn cast_to(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    conform(batch, schema)
}

#[cfg(test)]
mod tests {
    use arrow_array::{Array, StringArray, TimestampNanosecondArray, UInt32Array};
    use arrow_schema::TimeUnit;

    use super::*;

    fn table_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new(
                "time_",
                DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
                false,
            ),
            Field::new("pod", DataType::Utf8, true),
            Field::new("method", DataType::Utf8, false),
            Field::new("path", DataType::Utf8, false),
            Field::new("pid", DataType::UInt32, false),
        ]))
    }

    fn rows(n: usize) -> RecordBatch {
        RecordBatch::try_new(
            table_schema(),
            vec![
                Arc::new(
                    TimestampNanosecondArray::from_iter_values((0..n).map(|i| 1_000 * i as i64))
                        .with_timezone("UTC"),
                ),
                Arc::new(StringArray::from_iter(
                    (0..n).map(|i| (i % 5 != 0).then(|| format!("web-{}", i % 3))),
                )),
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| if i % 2 == 0 { "GET" } else { "POST" }),
                )),
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("/item/{i}")),
                )),
                Arc::new(UInt32Array::from_iter_values((0..n).map(|i| i as u32 % 4))),
            ],
        )
        .expect("columns match the schema")
    }

    #[test]
    fn decoding_gives_back_the_rows_with_the_tables_types() {
        let batch = rows(10_000);
        for codec in [Codec::Zstd, Codec::Lz4] {
            let cold = ColdBatch::encode(&batch, 1, codec).expect("encodes");
            assert_eq!(cold.rows(), 10_000);
            let back = cold.decode(&table_schema(), None).expect("decodes");
            assert_eq!(back, batch, "{codec:?}");
            assert!(
                cold.bytes() * 3 < batch.get_array_memory_size() as u64,
                "{codec:?}: {} bytes cold, {} plain",
                cold.bytes(),
                batch.get_array_memory_size()
            );
        }
    }

    #[test]
    fn decoding_some_columns_gives_exactly_those() {
        let batch = rows(5_000);
        let cold = ColdBatch::encode(&batch, 1, Codec::Zstd).expect("encodes");
        for projection in [vec![1, 3], vec![4, 0], vec![2]] {
            let back = cold
                .decode(&table_schema(), Some(&projection))
                .expect("decodes");
            assert_eq!(back, batch.project(&projection).expect("projects"));
        }
        assert!(cold.decode(&table_schema(), Some(&[9])).is_err());
        // No column at all (what `count(*)` reads) still has the rows.
        let none = cold.decode(&table_schema(), Some(&[])).expect("decodes");
        assert_eq!((none.num_columns(), none.num_rows()), (0, 5_000));
    }

    #[test]
    fn repetitive_strings_become_dictionaries_unique_ones_stay_plain() {
        let batch = rows(1_000);
        let dense = dictionary_encode(&batch).expect("encodes");
        let types: Vec<_> = dense
            .schema()
            .fields()
            .iter()
            .map(|f| matches!(f.data_type(), DataType::Dictionary(..)))
            .collect();
        // time_, pod (a standard column), method (2 values), path (unique), pid.
        assert_eq!(types, [false, true, true, false, false]);
        assert_eq!(dense.column(1).len(), 1_000);
    }

    #[test]
    fn readers_may_ask_for_dictionary_columns() {
        let batch = rows(100);
        let schema = dictionary_schema(&table_schema());
        let cast = cast_to(&batch, &schema).expect("casts");
        assert!(matches!(
            cast.schema().field(1).data_type(),
            DataType::Dictionary(..)
        ));
        // Only the store's known low-cardinality names: `method` stays plain.
        assert_eq!(cast.schema().field(2).data_type(), &DataType::Utf8);
        let plain = cast_to(&cast, &table_schema()).expect("casts back");
        assert_eq!(plain, batch);
    }
}
