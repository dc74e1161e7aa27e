//! Flight SQL: DataFusion over snapshots of the live tables.
//!
//! Each query gets its own `SessionContext` with a memory pool of the
//! configured size and no spilling, so a query over its budget fails with
//! `RESOURCE_EXHAUSTED` instead of growing the agent. The catalog `sonde`
//! holds one schema per table schema (`shop`, `sonde`, ...); a table is
//! snapshotted when the query plans it.
//!
//! Statement tickets and prepared-statement handles carry the SQL text
//! itself: the server keeps no per-statement state, so closing a prepared
//! statement has nothing to free and a handle survives reconnects.

use std::{collections::BTreeSet, sync::Arc};

use arrow_array::RecordBatch;
use arrow_flight::{
    FlightDescriptor, FlightEndpoint, FlightInfo, IpcMessage, SchemaAsIpc, Ticket,
    encode::{DictionaryHandling, FlightDataEncoderBuilder},
    error::FlightError as ArrowFlightError,
    flight_service_server::FlightService,
    sql::{
        ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
        ActionCreatePreparedStatementResult, Any, Command, CommandGetCatalogs, CommandGetDbSchemas,
        CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
        CommandStatementQuery, CommandStatementUpdate, ProstMessageExt, SqlInfo,
        TicketStatementQuery,
        metadata::SqlInfoDataBuilder,
        server::{FlightSqlService, PeekableFlightDataStream},
    },
};
use arrow_ipc::writer::IpcWriteOptions;
use arrow_schema::{Schema, SchemaRef};
use datafusion::{
    catalog::{CatalogProvider, MemTable, SchemaProvider, TableProvider},
    error::DataFusionError,
    execution::{
        disk_manager::{DiskManagerBuilder, DiskManagerMode},
        runtime_env::RuntimeEnvBuilder,
    },
    logical_expr::LogicalPlan,
    prelude::{SessionConfig, SessionContext},
    sql::{
        parser::{DFParser, Statement as DFStatement},
        sqlparser::ast::Statement as SqlStatement,
    },
};
use futures::{StreamExt, TryStreamExt, stream::BoxStream};
use prost::{Message, bytes::Bytes};
use tonic::{Request, Response, Status};

use super::{error::FlightError, error::RequestError, provider::ScanTable, table::BatchStream};
use probe_store::{TableName, TableSource};

/// The one catalog SQL sees.
pub(crate) const CATALOG: &str = "sonde";
/// The schema of unqualified table names.
const DEFAULT_SCHEMA: &str = "sonde";
const TABLE_TYPE: &str = "TABLE";

pub(crate) type FlightDataStream = BoxStream<'static, Result<arrow_flight::FlightData, Status>>;

/// Plans and runs SQL over a [`TableSource`].
#[derive(Clone)]
pub(crate) struct SqlEngine {
    source: Arc<dyn TableSource>,
    memory_limit: usize,
}

impl SqlEngine {
    pub(crate) fn new(
        source: Arc<dyn TableSource>,
        memory_limit: usize,
    ) -> Result<Self, FlightError> {
        let engine = Self {
            source,
            memory_limit,
        };
        // Fail at start-up, not on the first query, if the runtime cannot
        // be built with this configuration.
        engine
            .context()
            .map_err(|source| FlightError::SqlEngine { source })?;
        Ok(engine)
    }

    fn context(&self) -> Result<SessionContext, DataFusionError> {
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(self.memory_limit, 1.0)
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .build_arc()?;
        let config = SessionConfig::new()
            .with_default_catalog_and_schema(CATALOG, DEFAULT_SCHEMA)
            .with_create_default_catalog_and_schema(false)
            .with_information_schema(true);
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        ctx.register_catalog(
            CATALOG,
            Arc::new(LiveCatalog {
                source: Arc::clone(&self.source),
            }),
        );
        Ok(ctx)
    }

    /// Parses, checks and plans one read-only statement.
    pub(crate) async fn plan(&self, sql: &str) -> Result<Planned, RequestError> {
        let ctx = self
            .context()
            .map_err(|source| RequestError::Execution { source })?;
        let mut statements =
            DFParser::parse_sql(sql).map_err(|source| RequestError::Sql { source })?;
        let statement = match (statements.pop_front(), statements.len()) {
            (Some(statement), 0) => statement,
            (first, rest) => {
                return Err(RequestError::StatementCount {
                    count: rest + usize::from(first.is_some()),
                });
            }
        };
        let is_query = match &statement {
            DFStatement::Statement(statement) => {
                matches!(
                    **statement,
                    SqlStatement::Query(_) | SqlStatement::Explain { .. }
                )
            }
            DFStatement::Explain(_) => true,
            _ => false,
        };
        if !is_query {
            return Err(RequestError::NotAQuery);
        }
        let state = ctx.state();
        let references = state
            .resolve_table_references(&statement)
            .map_err(|source| RequestError::Sql { source })?;
        for reference in references {
            if reference.schema() == Some("information_schema") {
                continue;
            }
            let catalog_ok = reference.catalog().is_none_or(|c| c == CATALOG);
            let name = TableName::new(
                reference.schema().unwrap_or(DEFAULT_SCHEMA),
                reference.table(),
            );
            if !catalog_ok || self.source.info(&name).is_none() {
                return Err(RequestError::SqlUnknownTable {
                    table: reference.to_string(),
                });
            }
        }
        let plan = state
            .statement_to_plan(statement)
            .await
            .map_err(|source| RequestError::Sql { source })?;
        datafusion::execution::context::SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)
            .map_err(|source| RequestError::Sql { source })?;
        Ok(Planned { ctx, plan })
    }

    /// Runs a planned statement; errors while it streams end the stream
    /// with the matching status.
    pub(crate) async fn execute(
        &self,
        planned: Planned,
    ) -> Result<(SchemaRef, BatchStream), RequestError> {
        let limit = self.memory_limit;
        let frame = planned
            .ctx
            .execute_logical_plan(planned.plan)
            .await
            .map_err(|e| RequestError::execution(e, limit))?;
        let stream = frame
            .execute_stream()
            .await
            .map_err(|e| RequestError::execution(e, limit))?;
        let schema = stream.schema();
        let stream = stream
            .map_err(move |e| {
                ArrowFlightError::Tonic(Box::new(Status::from(RequestError::execution(e, limit))))
            })
            .boxed();
        Ok((schema, stream))
    }
}

/// A statement planned in its own session.
pub(crate) struct Planned {
    ctx: SessionContext,
    plan: LogicalPlan,
}

impl Planned {
    pub(crate) fn schema(&self) -> Schema {
        self.plan.schema().as_arrow().clone()
    }
}

/// Every table schema of the source, as DataFusion schemas.
struct LiveCatalog {
    source: Arc<dyn TableSource>,
}

impl CatalogProvider for LiveCatalog {
    fn schema_names(&self) -> Vec<String> {
        schema_names(&*self.source).into_iter().collect()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        Some(Arc::new(LiveSchema {
            source: Arc::clone(&self.source),
            schema: name.to_owned(),
        }))
    }
}

impl std::fmt::Debug for LiveCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveCatalog")
    }
}

impl std::fmt::Debug for LiveSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSchema")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

/// The tables of one schema; each is snapshotted when a query plans it.
struct LiveSchema {
    source: Arc<dyn TableSource>,
    schema: String,
}

#[tonic::async_trait]
impl SchemaProvider for LiveSchema {
    fn table_names(&self) -> Vec<String> {
        self.source
            .tables()
            .into_iter()
            .filter(|t| t.name.schema == self.schema)
            .map(|t| t.name.table)
            .collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        let Some(scan) = self.source.scan(&TableName::new(self.schema.clone(), name)) else {
            return Ok(None);
        };
        // Spread the batches over partitions so scans run in parallel; the
        // batches are shared, not copied.
        let partitions = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .clamp(1, scan.parts.len().max(1));
        if !scan.all_ready() {
            // Compacted batches are decoded as the query reads them.
            return Ok(Some(Arc::new(ScanTable::new(scan, partitions))));
        }
        let mut split: Vec<Vec<RecordBatch>> = vec![Vec::new(); partitions];
        for (i, batch) in scan
            .load_all()
            .map_err(DataFusionError::from)?
            .into_iter()
            .enumerate()
        {
            split[i % partitions].push(batch);
        }
        Ok(Some(Arc::new(MemTable::try_new(scan.info.schema, split)?)))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.source
            .info(&TableName::new(self.schema.clone(), name))
            .is_some()
    }
}

fn schema_names(source: &dyn TableSource) -> BTreeSet<String> {
    source.tables().into_iter().map(|t| t.name.schema).collect()
}

/// Encodes batches as a DoGet stream; the schema goes first even when no
/// batch follows. Dictionary columns (asked for with a ticket's
/// `dictionary` or SQL's `arrow_cast`) stay dictionaries on the wire, their
/// dictionary sent before each batch.
pub(crate) fn encode(schema: SchemaRef, batches: BatchStream) -> FlightDataStream {
    FlightDataEncoderBuilder::new()
        .with_dictionary_handling(DictionaryHandling::Resend)
        .with_schema(schema)
        .build(batches)
        .map_err(Status::from)
        .boxed()
}

fn encode_one(batch: RecordBatch) -> FlightDataStream {
    encode(batch.schema(), futures::stream::iter([Ok(batch)]).boxed())
}

fn flight_info(
    schema: &Schema,
    ticket: Bytes,
    descriptor: FlightDescriptor,
) -> Result<FlightInfo, RequestError> {
    Ok(FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|source| RequestError::Arrow { source })?
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
        .with_descriptor(descriptor))
}

fn sql_text(handle: &[u8]) -> Result<&str, RequestError> {
    std::str::from_utf8(handle).map_err(|_| RequestError::PreparedHandle)
}

/// The Flight SQL half of the endpoint.
pub(crate) struct SqlService {
    pub(crate) engine: SqlEngine,
}

impl SqlService {
    async fn run(&self, sql: &str) -> Result<FlightDataStream, RequestError> {
        let (schema, batches) = self.batches(sql).await?;
        Ok(encode(schema, batches))
    }

    async fn batches(&self, sql: &str) -> Result<(SchemaRef, BatchStream), RequestError> {
        let planned = self.engine.plan(sql).await?;
        self.engine.execute(planned).await
    }

    /// The rows of a statement's or prepared statement's DoGet ticket (a
    /// Flight SQL `Any`); `None` for every other command.
    pub(crate) async fn statement_batches(
        &self,
        ticket: &[u8],
    ) -> Result<Option<(SchemaRef, BatchStream)>, RequestError> {
        let Ok(any) = Any::decode(ticket) else {
            return Ok(None);
        };
        let sql = match Command::try_from(any) {
            Ok(Command::TicketStatementQuery(ticket)) => ticket.statement_handle,
            Ok(Command::CommandPreparedStatementQuery(query)) => query.prepared_statement_handle,
            _ => return Ok(None),
        };
        Ok(Some(self.batches(sql_text(&sql)?).await?))
    }

    fn source(&self) -> &dyn TableSource {
        &*self.engine.source
    }

    fn sql_info() -> Result<arrow_flight::sql::metadata::SqlInfoData, RequestError> {
        let mut builder = SqlInfoDataBuilder::new();
        builder.append(SqlInfo::FlightSqlServerName, "sonde");
        builder.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        builder.append(SqlInfo::FlightSqlServerArrowVersion, "59");
        builder.append(SqlInfo::FlightSqlServerReadOnly, true);
        builder
            .build()
            .map_err(|source| RequestError::Metadata { source })
    }

    fn tables_batch(&self, query: CommandGetTables) -> Result<RecordBatch, RequestError> {
        let mut builder = query.into_builder();
        for table in self.source().tables() {
            builder
                .append(
                    CATALOG,
                    &table.name.schema,
                    &table.name.table,
                    TABLE_TYPE,
                    &table.schema,
                )
                .map_err(|source| RequestError::Metadata { source })?;
        }
        builder
            .build()
            .map_err(|source| RequestError::Metadata { source })
    }

    fn schemas_batch(&self, query: CommandGetDbSchemas) -> Result<RecordBatch, RequestError> {
        let mut builder = query.into_builder();
        for schema in schema_names(self.source()) {
            builder.append(CATALOG, schema);
        }
        builder
            .build()
            .map_err(|source| RequestError::Metadata { source })
    }

    fn catalogs_batch(query: CommandGetCatalogs) -> Result<RecordBatch, RequestError> {
        let mut builder = query.into_builder();
        builder.append(CATALOG);
        builder
            .build()
            .map_err(|source| RequestError::Metadata { source })
    }

    fn table_types_batch(query: CommandGetTableTypes) -> Result<RecordBatch, RequestError> {
        let mut builder = query.into_builder();
        builder.append(TABLE_TYPE);
        builder
            .build()
            .map_err(|source| RequestError::Metadata { source })
    }

    /// FlightInfo for a metadata command: the ticket is the command itself.
    fn metadata_info(
        schema: &Schema,
        command: impl ProstMessageExt,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let ticket = command.as_any().encode_to_vec().into();
        Ok(Response::new(flight_info(
            schema,
            ticket,
            request.into_inner(),
        )?))
    }
}

type DoGetResponse = Result<Response<<SqlService as FlightService>::DoGetStream>, Status>;

#[tonic::async_trait]
impl FlightSqlService for SqlService {
    type FlightService = SqlService;

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let planned = self.engine.plan(&query.query).await?;
        let ticket = TicketStatementQuery {
            statement_handle: query.query.into_bytes().into(),
        };
        let info = flight_info(
            &planned.schema(),
            ticket.as_any().encode_to_vec().into(),
            request.into_inner(),
        )?;
        Ok(Response::new(info))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        _request: Request<Ticket>,
    ) -> DoGetResponse {
        let sql = sql_text(&ticket.statement_handle)?;
        Ok(Response::new(self.run(sql).await?))
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let planned = self
            .engine
            .plan(sql_text(&query.prepared_statement_handle)?)
            .await?;
        let info = flight_info(
            &planned.schema(),
            query.as_any().encode_to_vec().into(),
            request.into_inner(),
        )?;
        Ok(Response::new(info))
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        _request: Request<Ticket>,
    ) -> DoGetResponse {
        let sql = sql_text(&query.prepared_statement_handle)?;
        Ok(Response::new(self.run(sql).await?))
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        _request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let planned = self.engine.plan(&query.query).await?;
        let IpcMessage(dataset_schema) =
            SchemaAsIpc::new(&planned.schema(), &IpcWriteOptions::default())
                .try_into()
                .map_err(|source| RequestError::Arrow { source })?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: query.query.into_bytes().into(),
            dataset_schema,
            parameter_schema: Bytes::new(),
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        _request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        // Handles are the SQL text: nothing is held for them.
        Ok(())
    }

    async fn do_put_statement_update(
        &self,
        _query: CommandStatementUpdate,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(RequestError::ReadOnly {
            what: "an update statement",
        }
        .into())
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        Self::metadata_info(&schema, query, request)
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> DoGetResponse {
        Ok(Response::new(encode_one(Self::catalogs_batch(query)?)))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        Self::metadata_info(&schema, query, request)
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> DoGetResponse {
        Ok(Response::new(encode_one(self.schemas_batch(query)?)))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        Self::metadata_info(&schema, query, request)
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        _request: Request<Ticket>,
    ) -> DoGetResponse {
        Ok(Response::new(encode_one(self.tables_batch(query)?)))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        Self::metadata_info(&schema, query, request)
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> DoGetResponse {
        Ok(Response::new(encode_one(Self::table_types_batch(query)?)))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = Self::sql_info()?.schema();
        Self::metadata_info(&schema, query, request)
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> DoGetResponse {
        let info = Self::sql_info()?;
        let batch = query
            .into_builder(&info)
            .build()
            .map_err(|source| RequestError::Metadata { source })?;
        Ok(Response::new(encode_one(batch)))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
