//! Writing record batches in the format asked for.

use std::{io::Write, sync::Arc};

use arrow_array::RecordBatch;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::SchemaRef;

use crate::CliError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for a terminal.
    Table,
    /// CSV with a header line.
    Csv,
    /// One JSON object per row.
    Json,
    /// An Arrow IPC stream.
    Arrow,
}

/// Where batches go. Tables are printed once at the end (so columns line up)
/// unless [`Sink::stream_tables`] asked for one table per batch.
pub struct Sink<W: Write> {
    format: OutputFormat,
    out: Option<W>,
    ipc: Option<StreamWriter<W>>,
    pending: Vec<RecordBatch>,
    stream_tables: bool,
    wrote_csv_header: bool,
    schema: Option<SchemaRef>,
}

impl<W: Write> Sink<W> {
    pub fn new(format: OutputFormat, out: W) -> Self {
        Self {
            format,
            out: Some(out),
            ipc: None,
            pending: Vec::new(),
            stream_tables: false,
            wrote_csv_header: false,
            schema: None,
        }
    }

    /// Prints each batch as its own table as soon as it arrives.
    pub fn stream_tables(&mut self) {
        self.stream_tables = true;
    }

    /// The schema to write when no batch arrives.
    pub fn set_schema(&mut self, schema: SchemaRef) {
        self.schema.get_or_insert(schema);
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), CliError> {
        self.schema.get_or_insert_with(|| batch.schema());
        let arrow = |source| CliError::Output { source };
        match self.format {
            OutputFormat::Table if !self.stream_tables => self.pending.push(batch.clone()),
            OutputFormat::Table => {
                if batch.num_rows() > 0 {
                    self.print_table(std::slice::from_ref(batch))?;
                }
            }
            OutputFormat::Csv => {
                let header = !self.wrote_csv_header;
                self.wrote_csv_header = true;
                let out = self.out()?;
                arrow_csv::WriterBuilder::new()
                    .with_header(header)
                    .build(&mut *out)
                    .write(batch)
                    .map_err(arrow)?;
                out.flush().map_err(|source| CliError::Io { source })?;
            }
            OutputFormat::Json => {
                let out = self.out()?;
                let mut writer = arrow_json::LineDelimitedWriter::new(&mut *out);
                writer.write(batch).map_err(arrow)?;
                writer.finish().map_err(arrow)?;
                out.flush().map_err(|source| CliError::Io { source })?;
            }
            OutputFormat::Arrow => {
                let writer = self.ipc_writer(&batch.schema())?;
                writer.write(batch).map_err(arrow)?;
                writer.flush().map_err(arrow)?;
            }
        }
        Ok(())
    }

    /// Writes what is pending and ends the output.
    pub fn finish(mut self) -> Result<(), CliError> {
        let arrow = |source| CliError::Output { source };
        match self.format {
            OutputFormat::Table if !self.stream_tables => {
                let pending = std::mem::take(&mut self.pending);
                match &self.schema {
                    Some(schema) if pending.is_empty() => {
                        let empty = RecordBatch::new_empty(Arc::clone(schema));
                        self.print_table(&[empty])?;
                    }
                    _ => self.print_table(&pending)?,
                }
            }
            OutputFormat::Arrow => {
                if self.ipc.is_none()
                    && let Some(schema) = self.schema.clone()
                {
                    self.ipc_writer(&schema)?;
                }
                if let Some(mut writer) = self.ipc.take() {
                    writer.finish().map_err(arrow)?;
                }
            }
            OutputFormat::Csv if !self.wrote_csv_header => {
                // The header alone says which columns an empty result has.
                if let Some(schema) = self.schema.clone() {
                    self.write(&RecordBatch::new_empty(schema))?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn print_table(&mut self, batches: &[RecordBatch]) -> Result<(), CliError> {
        let table = arrow_cast::pretty::pretty_format_batches(batches)
            .map_err(|source| CliError::Output { source })?;
        let out = self.out()?;
        writeln!(out, "{table}")
            .and_then(|()| out.flush())
            .map_err(|source| CliError::Io { source })
    }

    fn out(&mut self) -> Result<&mut W, CliError> {
        self.out.as_mut().ok_or_else(|| CliError::Io {
            source: std::io::Error::other("output already handed to the Arrow writer"),
        })
    }

    fn ipc_writer(&mut self, schema: &SchemaRef) -> Result<&mut StreamWriter<W>, CliError> {
        if self.ipc.is_none() {
            let out = self.out.take().ok_or_else(|| CliError::Io {
                source: std::io::Error::other("output already closed"),
            })?;
            let writer =
                StreamWriter::try_new(out, schema).map_err(|source| CliError::Output { source })?;
            self.ipc = Some(writer);
        }
        self.ipc.as_mut().ok_or_else(|| CliError::Io {
            source: std::io::Error::other("no Arrow writer"),
        })
    }
}
