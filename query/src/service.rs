//! The Flight SQL endpoint of the cluster.
//!
//! Statement handles and tickets carry the SQL text and the client's
//! partial-results choice, so the server keeps nothing per statement.
//! Partial results are asked for with the call header
//! `x-sonde-partial-results: true` (ADBC:
//! `adbc.flight.sql.rpc.call_header.x-sonde-partial-results`). The nodes
//! left out are then named in the FlightInfo's `app_metadata`
//! (`{"missing_nodes": {"<node>": "<why>"}}`) and in the response header
//! `x-sonde-missing-nodes` (comma-separated) of GetFlightInfo and DoGet.

use std::{collections::BTreeMap, sync::Arc};

use arrow_flight::{
    FlightDescriptor, FlightEndpoint, FlightInfo, IpcMessage, SchemaAsIpc, Ticket,
    encode::{DictionaryHandling, FlightDataEncoderBuilder},
    error::FlightError as ArrowFlightError,
    flight_service_server::FlightService,
    sql::{
        ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
        ActionCreatePreparedStatementResult, CommandGetCatalogs, CommandGetDbSchemas,
        CommandGetSqlInfo, CommandGetTables, CommandPreparedStatementQuery, CommandStatementQuery,
        ProstMessageExt, SqlInfo, TicketStatementQuery, metadata::SqlInfoDataBuilder,
        server::FlightSqlService,
    },
};
use arrow_ipc::writer::IpcWriteOptions;
use arrow_schema::{Schema, SchemaRef};
use datafusion::{
    catalog::CatalogProvider,
    common::DataFusionError,
    logical_expr::LogicalPlan,
    prelude::{SessionConfig, SessionContext},
    sql::{
        parser::{DFParser, Statement as DFStatement},
        sqlparser::ast::Statement as SqlStatement,
    },
};
use datafusion_distributed::{Worker, display_plan_ascii};
use futures::{StreamExt, TryStreamExt, stream::BoxStream};
use prost::{Message, bytes::Bytes};
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status, metadata::MetadataValue};

use crate::{
    Error,
    agents::{AgentDirectory, Connections},
    catalog::{ClusterCatalog, QueryScope},
    distribute::query_session,
};

/// The one catalog SQL sees, as on the agents.
pub const CATALOG: &str = "sonde";
const DEFAULT_SCHEMA: &str = "sonde";
/// The call header that allows an answer without some nodes.
pub const PARTIAL_HEADER: &str = "x-sonde-partial-results";
/// The response header naming the nodes an answer left out.
pub const MISSING_HEADER: &str = "x-sonde-missing-nodes";

type FlightDataStream = BoxStream<'static, Result<arrow_flight::FlightData, Status>>;

/// What a statement handle or ticket holds.
#[derive(Serialize, Deserialize)]
struct Handle {
    sql: String,
    #[serde(default)]
    partial: bool,
}

impl Handle {
    fn encode(&self) -> Bytes {
        // Serializing a string and a bool cannot fail.
        serde_json::to_vec(self).unwrap_or_default().into()
    }

    fn decode(bytes: &[u8]) -> Result<Self, Status> {
        serde_json::from_slice(bytes)
            .map_err(|e| Status::invalid_argument(format!("not a sonde-query handle: {e}")))
    }
}

/// A statement planned in its own session.
struct Planned {
    ctx: SessionContext,
    plan: LogicalPlan,
    scope: Arc<QueryScope>,
}

impl Planned {
    fn schema(&self) -> SchemaRef {
        Arc::new(self.plan.schema().as_arrow().clone())
    }

    fn missing(&self) -> BTreeMap<String, String> {
        self.scope.missing()
    }
}

/// Flight SQL over the whole cluster.
#[derive(Clone)]
pub struct ClusterSqlService {
    pub(crate) directory: AgentDirectory,
    pub(crate) connections: Connections,
    pub(crate) local: Worker,
    pub(crate) memory_limit: usize,
}

fn partial_requested<T>(request: &Request<T>) -> bool {
    request
        .metadata()
        .get(PARTIAL_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// The status a planning or execution error becomes: errors of ours keep
/// their code; an agent's URL in a failure is replaced by its node.
fn status(directory: &AgentDirectory, error: &DataFusionError) -> Status {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(ours) = e.downcast_ref::<Error>() {
            return ours.status();
        }
        if let Some(DataFusionError::External(inner)) = e.downcast_ref::<DataFusionError>()
            && let Some(ours) = inner.downcast_ref::<Error>()
        {
            return ours.status();
        }
        current = e.source();
    }
    let message = error.to_string();
    let named: Vec<String> = directory
        .snapshot()
        .into_iter()
        .filter(|(_, url)| {
            message.contains(url.as_str()) || message.contains(url.as_str().trim_end_matches('/'))
        })
        .map(|(node, url)| format!("node {node} ({url})"))
        .collect();
    match error.find_root() {
        DataFusionError::SQL(..) | DataFusionError::Plan(_) | DataFusionError::SchemaError(..) => {
            Status::invalid_argument(message)
        }
        DataFusionError::ResourcesExhausted(_) => Status::resource_exhausted(message),
        _ if !named.is_empty() => {
            Status::unavailable(format!("{} failed: {message}", named.join(", ")))
        }
        _ => Status::internal(message),
    }
}

impl ClusterSqlService {
    async fn plan(&self, sql: &str, partial: bool) -> Result<Planned, Status> {
        let scope = Arc::new(QueryScope::new(
            self.directory.clone(),
            self.connections.clone(),
            partial,
        ));
        let config = SessionConfig::new()
            .with_default_catalog_and_schema(CATALOG, DEFAULT_SCHEMA)
            .with_create_default_catalog_and_schema(false)
            .with_information_schema(false);
        let state = query_session(
            &self.directory,
            &self.connections,
            &self.local,
            self.memory_limit,
            config,
        )
        .map_err(|e| status(&self.directory, &e))?;
        let ctx = SessionContext::new_with_state(state);
        ctx.register_catalog(
            CATALOG,
            Arc::new(ClusterCatalog {
                scope: Arc::clone(&scope),
            }) as Arc<dyn CatalogProvider>,
        );
        let mut statements = DFParser::parse_sql(sql)
            .map_err(|e| Status::invalid_argument(format!("invalid SQL: {e}")))?;
        let statement = match (statements.pop_front(), statements.len()) {
            (Some(statement), 0) => statement,
            (first, rest) => {
                return Err(Status::invalid_argument(format!(
                    "expected exactly one statement, got {}",
                    rest + usize::from(first.is_some())
                )));
            }
        };
        let is_query = match &statement {
            DFStatement::Statement(s) => {
                matches!(**s, SqlStatement::Query(_) | SqlStatement::Explain { .. })
            }
            DFStatement::Explain(_) => true,
            _ => false,
        };
        if !is_query {
            return Err(Status::invalid_argument(
                "only queries (SELECT, EXPLAIN) are allowed: the cluster is read-only",
            ));
        }
        let plan = ctx
            .state()
            .statement_to_plan(statement)
            .await
            .map_err(|e| status(&self.directory, &e))?;
        datafusion::execution::context::SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)
            .map_err(|e| status(&self.directory, &e))?;
        Ok(Planned { ctx, plan, scope })
    }

    async fn run(&self, sql: &str, partial: bool) -> Result<Response<FlightDataStream>, Status> {
        let planned = self.plan(sql, partial).await?;
        let missing = planned.missing();
        let directory = self.directory.clone();
        if let LogicalPlan::Explain(explain) = &planned.plan {
            let batch = self.explain(&planned, explain).await?;
            let mut response = Response::new(encode_one(batch));
            note_missing(&mut response, &missing);
            return Ok(response);
        }
        let frame = planned
            .ctx
            .execute_logical_plan(planned.plan)
            .await
            .map_err(|e| status(&directory, &e))?;
        let stream = frame
            .execute_stream()
            .await
            .map_err(|e| status(&directory, &e))?;
        let schema = stream.schema();
        let batches = stream
            .map_err(move |e| ArrowFlightError::Tonic(Box::new(status(&directory, &e))))
            .boxed();
        let data = FlightDataEncoderBuilder::new()
            .with_dictionary_handling(DictionaryHandling::Resend)
            .with_schema(schema)
            .build(batches)
            .map_err(Status::from)
            .boxed();
        let mut response = Response::new(data);
        note_missing(&mut response, &missing);
        Ok(response)
    }

    /// EXPLAIN shows the distributed plan: its stages, where each runs
    /// (the node stages with the nodes in their scans) and what runs in
    /// them. DataFusion's own EXPLAIN would show the plan before the
    /// distributed planner splits it.
    async fn explain(
        &self,
        planned: &Planned,
        explain: &datafusion::logical_expr::Explain,
    ) -> Result<arrow_array::RecordBatch, Status> {
        let state = planned.ctx.state();
        let physical = state
            .create_physical_plan(&explain.plan)
            .await
            .map_err(|e| status(&self.directory, &e))?;
        let logical = explain.plan.display_indent().to_string();
        let distributed = display_plan_ascii(physical.as_ref(), false);
        let schema = Arc::new(explain.schema.as_arrow().clone());
        arrow_array::RecordBatch::try_new(
            schema,
            vec![
                Arc::new(arrow_array::StringArray::from(vec![
                    "logical_plan",
                    "distributed_plan",
                ])),
                Arc::new(arrow_array::StringArray::from(vec![logical, distributed])),
            ],
        )
        .map_err(|e| Status::internal(e.to_string()))
    }

    fn info(
        &self,
        planned: &Planned,
        ticket: Bytes,
        descriptor: FlightDescriptor,
    ) -> Result<Response<FlightInfo>, Status> {
        let missing = planned.missing();
        let mut info = FlightInfo::new()
            .try_with_schema(&planned.schema())
            .map_err(|e| Status::internal(e.to_string()))?
            .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
            .with_descriptor(descriptor);
        if !missing.is_empty() {
            let metadata = serde_json::json!({ "missing_nodes": missing });
            info = info.with_app_metadata(metadata.to_string().into_bytes());
        }
        let mut response = Response::new(info);
        note_missing(&mut response, &missing);
        Ok(response)
    }

    /// Every table of the cluster, once per table: its schema, and its
    /// rows and bytes summed over the nodes (unknown if a node did not say).
    async fn cluster_tables(&self) -> Result<BTreeMap<(String, String), Schema>, Status> {
        Ok(self
            .cluster_flights()
            .await?
            .into_iter()
            .map(|(name, (schema, _))| (name, schema))
            .collect())
    }

    async fn cluster_flights(
        &self,
    ) -> Result<BTreeMap<(String, String), (Schema, FlightInfo)>, Status> {
        let agents = self.directory.snapshot();
        let lists = futures::future::join_all(agents.iter().map(|(node, url)| async move {
            let mut client = self.connections.flight(url).map_err(|e| e.status())?;
            let reply = client
                .list_flights(arrow_flight::Criteria::default())
                .await
                .map_err(|s| {
                    Status::unavailable(format!("node {node} ({url}): {}", s.message()))
                })?;
            let infos: Vec<FlightInfo> = reply.into_inner().try_collect().await.map_err(|s| {
                Status::unavailable(format!("node {node} ({url}): {}", s.message()))
            })?;
            Ok::<_, Status>(infos)
        }))
        .await;
        let mut tables: BTreeMap<(String, String), (Schema, FlightInfo)> = BTreeMap::new();
        for infos in lists {
            for info in infos? {
                let Some(descriptor) = &info.flight_descriptor else {
                    continue;
                };
                let [schema, table] = descriptor.path.as_slice() else {
                    continue;
                };
                let arrow = Schema::try_from(info.clone())
                    .map_err(|e| Status::internal(format!("undecodable schema: {e}")))?;
                let key = (schema.clone(), table.clone());
                match tables.get_mut(&key) {
                    None => {
                        let mut merged = info.clone();
                        merged.endpoint.clear();
                        tables.insert(key, (arrow, merged));
                    }
                    Some((_, merged)) => {
                        let add = |a: i64, b: i64| if a < 0 || b < 0 { -1 } else { a + b };
                        merged.total_records = add(merged.total_records, info.total_records);
                        merged.total_bytes = add(merged.total_bytes, info.total_bytes);
                    }
                }
            }
        }
        Ok(tables)
    }
}

fn note_missing<T>(response: &mut Response<T>, missing: &BTreeMap<String, String>) {
    if missing.is_empty() {
        return;
    }
    let names = missing.keys().cloned().collect::<Vec<_>>().join(",");
    if let Ok(value) = MetadataValue::try_from(names.as_str()) {
        response.metadata_mut().insert(MISSING_HEADER, value);
    }
}

fn encode_one(batch: arrow_array::RecordBatch) -> FlightDataStream {
    FlightDataEncoderBuilder::new()
        .with_schema(batch.schema())
        .build(futures::stream::iter([Ok(batch)]))
        .map_err(Status::from)
        .boxed()
}

fn metadata_info(
    schema: &Schema,
    command: impl ProstMessageExt,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let ticket = command.as_any().encode_to_vec();
    Ok(Response::new(
        FlightInfo::new()
            .try_with_schema(schema)
            .map_err(|e| Status::internal(e.to_string()))?
            .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
            .with_descriptor(descriptor),
    ))
}

type DoGetResponse = Result<Response<<ClusterSqlService as FlightService>::DoGetStream>, Status>;

#[tonic::async_trait]
impl FlightSqlService for ClusterSqlService {
    type FlightService = ClusterSqlService;

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let partial = partial_requested(&request);
        let planned = self.plan(&query.query, partial).await?;
        let handle = Handle {
            sql: query.query,
            partial,
        };
        let ticket = TicketStatementQuery {
            statement_handle: handle.encode(),
        };
        self.info(
            &planned,
            ticket.as_any().encode_to_vec().into(),
            request.into_inner(),
        )
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        _request: Request<Ticket>,
    ) -> DoGetResponse {
        let handle = Handle::decode(&ticket.statement_handle)?;
        self.run(&handle.sql, handle.partial).await
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let handle = Handle::decode(&query.prepared_statement_handle)?;
        let planned = self.plan(&handle.sql, handle.partial).await?;
        self.info(
            &planned,
            query.as_any().encode_to_vec().into(),
            request.into_inner(),
        )
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        _request: Request<Ticket>,
    ) -> DoGetResponse {
        let handle = Handle::decode(&query.prepared_statement_handle)?;
        self.run(&handle.sql, handle.partial).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let partial = partial_requested(&request);
        let planned = self.plan(&query.query, partial).await?;
        let IpcMessage(dataset_schema) =
            SchemaAsIpc::new(&planned.schema(), &IpcWriteOptions::default())
                .try_into()
                .map_err(|e: arrow_schema::ArrowError| Status::internal(e.to_string()))?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: Handle {
                sql: query.query,
                partial,
            }
            .encode(),
            dataset_schema,
            parameter_schema: Bytes::new(),
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        _request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        Ok(())
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        metadata_info(&schema, query, request.into_inner())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> DoGetResponse {
        let mut builder = query.into_builder();
        builder.append(CATALOG);
        let batch = builder
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(encode_one(batch)))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        metadata_info(&schema, query, request.into_inner())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> DoGetResponse {
        let tables = self.cluster_tables().await?;
        let mut builder = query.into_builder();
        let schemas: std::collections::BTreeSet<&String> = tables.keys().map(|(s, _)| s).collect();
        for schema in schemas {
            builder.append(CATALOG, schema);
        }
        let batch = builder
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(encode_one(batch)))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        metadata_info(&schema, query, request.into_inner())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        _request: Request<Ticket>,
    ) -> DoGetResponse {
        let tables = self.cluster_tables().await?;
        let mut builder = query.into_builder();
        for ((schema, table), arrow) in &tables {
            builder
                .append(CATALOG, schema, table, "TABLE", arrow)
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        let batch = builder
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(encode_one(batch)))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = sql_info()?.schema();
        metadata_info(&schema, query, request.into_inner())
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> DoGetResponse {
        let info = sql_info()?;
        let batch = query
            .into_builder(&info)
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(encode_one(batch)))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

fn sql_info() -> Result<arrow_flight::sql::metadata::SqlInfoData, Status> {
    let mut builder = SqlInfoDataBuilder::new();
    builder.append(SqlInfo::FlightSqlServerName, "sonde-query");
    builder.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    builder.append(SqlInfo::FlightSqlServerArrowVersion, "59");
    builder.append(SqlInfo::FlightSqlServerReadOnly, true);
    builder.build().map_err(|e| Status::internal(e.to_string()))
}

/// The endpoint's `FlightService`: Flight SQL, plus ListFlights over the
/// whole cluster (one FlightInfo per table, rows and bytes summed over the
/// nodes, no endpoint: read tables with SQL).
#[derive(Clone)]
pub struct ClusterFlightService(pub ClusterSqlService);

type Stream<T> = BoxStream<'static, Result<T, Status>>;

#[tonic::async_trait]
impl FlightService for ClusterFlightService {
    type HandshakeStream = Stream<arrow_flight::HandshakeResponse>;
    type ListFlightsStream = Stream<FlightInfo>;
    type DoGetStream = Stream<arrow_flight::FlightData>;
    type DoPutStream = Stream<arrow_flight::PutResult>;
    type DoActionStream = Stream<arrow_flight::Result>;
    type ListActionsStream = Stream<arrow_flight::ActionType>;
    type DoExchangeStream = Stream<arrow_flight::FlightData>;

    async fn handshake(
        &self,
        request: Request<tonic::Streaming<arrow_flight::HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        FlightService::handshake(&self.0, request).await
    }

    async fn list_flights(
        &self,
        _request: Request<arrow_flight::Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        let infos: Vec<Result<FlightInfo, Status>> = self
            .0
            .cluster_flights()
            .await?
            .into_values()
            .map(|(_, info)| Ok(info))
            .collect();
        Ok(Response::new(futures::stream::iter(infos).boxed()))
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        FlightService::get_flight_info(&self.0, request).await
    }

    async fn poll_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<arrow_flight::PollInfo>, Status> {
        FlightService::poll_flight_info(&self.0, request).await
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<arrow_flight::SchemaResult>, Status> {
        FlightService::get_schema(&self.0, request).await
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        FlightService::do_get(&self.0, request).await
    }

    async fn do_put(
        &self,
        request: Request<tonic::Streaming<arrow_flight::FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        FlightService::do_put(&self.0, request).await
    }

    async fn do_exchange(
        &self,
        request: Request<tonic::Streaming<arrow_flight::FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        FlightService::do_exchange(&self.0, request).await
    }

    async fn do_action(
        &self,
        request: Request<arrow_flight::Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        FlightService::do_action(&self.0, request).await
    }

    async fn list_actions(
        &self,
        request: Request<arrow_flight::Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        FlightService::list_actions(&self.0, request).await
    }
}
