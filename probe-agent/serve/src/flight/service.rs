//! The one `FlightService` of the endpoint: Flight SQL commands (protobuf
//! `Any` messages of the `arrow.flight.protocol.sql` package) go to
//! [`SqlService`]; descriptor paths and JSON tickets go to the table path.

use std::sync::Arc;

use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaAsIpc, SchemaResult, Ticket,
    flight_descriptor::DescriptorType, flight_service_server::FlightService, sql::Any,
};
use arrow_ipc::writer::IpcWriteOptions;
use arrow_schema::{Schema, SchemaRef};
use futures::{StreamExt, stream::BoxStream};
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use super::{
    error::RequestError,
    metrics::note_command,
    sql::{FlightDataStream, SqlEngine, SqlService, encode},
    table::{BatchStream, read_table},
    ticket::{TableRead, TableTicket},
};
use probe_store::{TableInfo, TableName, TableSource};

const SQL_TYPE_PREFIX: &str = "type.googleapis.com/arrow.flight.protocol.sql.";

/// Whether `bytes` hold a Flight SQL command rather than a table request.
#[cfg(test)]
pub(super) fn is_sql_command(bytes: &[u8]) -> bool {
    sql_command(bytes).is_some()
}

/// The type name of the Flight SQL command in `bytes`, if they hold one.
fn sql_command(bytes: &[u8]) -> Option<String> {
    let any = Any::decode(bytes).ok()?;
    any.type_url
        .strip_prefix(SQL_TYPE_PREFIX)
        .map(str::to_owned)
}

/// Notes the call's Flight SQL command for the request metrics; true if
/// `bytes` hold one.
fn route_sql<T>(request: &Request<T>, bytes: &[u8]) -> bool {
    match sql_command(bytes) {
        Some(command) => {
            note_command(request, &command);
            true
        }
        None => false,
    }
}

pub(crate) struct SondeFlightService {
    source: Arc<dyn TableSource>,
    sql: SqlService,
}

impl SondeFlightService {
    pub(crate) fn new(source: Arc<dyn TableSource>, engine: SqlEngine) -> Self {
        Self {
            source,
            sql: SqlService { engine },
        }
    }

    fn table(&self, name: &TableName) -> Result<TableInfo, RequestError> {
        self.source
            .info(name)
            .ok_or_else(|| RequestError::UnknownTable {
                table: name.to_string(),
            })
    }

    /// The table read a descriptor asks for: a path names a whole table, a
    /// command is a JSON [`TableTicket`].
    fn descriptor_read(
        &self,
        descriptor: &FlightDescriptor,
    ) -> Result<(TableTicket, TableInfo, TableRead), RequestError> {
        let ticket = if descriptor.r#type() == DescriptorType::Path || !descriptor.path.is_empty() {
            let name = match descriptor.path.as_slice() {
                [schema, table] => TableName::new(schema.clone(), table.clone()),
                [qualified] => {
                    TableName::parse(qualified).ok_or_else(|| RequestError::TableName {
                        name: qualified.clone(),
                    })?
                }
                path => {
                    return Err(RequestError::DescriptorPath {
                        path: path.to_vec(),
                    });
                }
            };
            TableTicket::whole(&name)
        } else if !descriptor.cmd.is_empty() {
            serde_json::from_slice(&descriptor.cmd)
                .map_err(|source| RequestError::CommandJson { source })?
        } else {
            return Err(RequestError::EmptyDescriptor);
        };
        let info = self.table(&ticket.table_name()?)?;
        let read = ticket.validate(&info)?;
        Ok((ticket, info, read))
    }

    fn table_flight_info(
        info: &TableInfo,
        ticket: &TableTicket,
        read: &TableRead,
    ) -> Result<FlightInfo, RequestError> {
        let whole = read.since.is_none()
            && read.until.is_none()
            && read.limit.is_none()
            && read.projection.is_none();
        let (records, bytes) = if whole {
            (to_i64(info.rows), to_i64(info.bytes))
        } else {
            // Unknown until read.
            (-1, -1)
        };
        Ok(FlightInfo::new()
            .try_with_schema(&read.output_schema)
            .map_err(|source| RequestError::Arrow { source })?
            .with_descriptor(FlightDescriptor::new_path(vec![
                info.name.schema.clone(),
                info.name.table.clone(),
            ]))
            .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket.to_json())))
            .with_total_records(records)
            .with_total_bytes(bytes))
    }

    fn table_do_get(&self, ticket: &[u8]) -> Result<FlightDataStream, RequestError> {
        let (schema, batches) = self.table_batches(ticket)?;
        Ok(encode(schema, batches))
    }

    fn table_batches(&self, ticket: &[u8]) -> Result<(SchemaRef, BatchStream), RequestError> {
        let ticket = TableTicket::parse(ticket)?;
        let info = self.table(&ticket.table_name()?)?;
        let read = ticket.validate(&info)?;
        let schema = Arc::clone(&read.output_schema);
        Ok((schema, read_table(&*self.source, read)?))
    }

    /// The rows a DoGet asks for, as batches: of a table, or of a Flight
    /// SQL statement. `None` for the other Flight SQL tickets (catalogs,
    /// schemas, tables...), which only the generated server answers.
    pub(crate) async fn batches(
        &self,
        request: &Request<Ticket>,
    ) -> Result<Option<(SchemaRef, BatchStream)>, Status> {
        let ticket = &request.get_ref().ticket;
        if route_sql(request, ticket) {
            return Ok(self.sql.statement_batches(ticket).await?);
        }
        Ok(Some(self.table_batches(ticket)?))
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn schema_result(schema: &Schema) -> Result<SchemaResult, RequestError> {
    SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|source| RequestError::Arrow { source })
}

#[tonic::async_trait]
impl FlightService for SondeFlightService {
    type HandshakeStream = BoxStream<'static, Result<HandshakeResponse, Status>>;
    type ListFlightsStream = BoxStream<'static, Result<FlightInfo, Status>>;
    type DoGetStream = FlightDataStream;
    type DoPutStream = BoxStream<'static, Result<PutResult, Status>>;
    type DoActionStream = BoxStream<'static, Result<arrow_flight::Result, Status>>;
    type ListActionsStream = BoxStream<'static, Result<ActionType, Status>>;
    type DoExchangeStream = BoxStream<'static, Result<FlightData, Status>>;

    /// Authentication is the bearer token on every call, so the handshake
    /// only acknowledges, for clients that always perform one.
    async fn handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        let reply = HandshakeResponse::default();
        Ok(Response::new(futures::stream::iter([Ok(reply)]).boxed()))
    }

    /// One FlightInfo per table; the criteria are ignored.
    async fn list_flights(
        &self,
        _request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        let infos: Vec<Result<FlightInfo, Status>> = self
            .source
            .tables()
            .iter()
            .map(|info| {
                let ticket = TableTicket::whole(&info.name);
                let read = ticket.validate(info)?;
                Ok(Self::table_flight_info(info, &ticket, &read)?)
            })
            .collect();
        Ok(Response::new(futures::stream::iter(infos).boxed()))
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        if route_sql(&request, &request.get_ref().cmd) {
            return self.sql.get_flight_info(request).await;
        }
        let (ticket, info, read) = self.descriptor_read(request.get_ref())?;
        Ok(Response::new(Self::table_flight_info(
            &info, &ticket, &read,
        )?))
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented(
            "PollFlightInfo is not supported: use GetFlightInfo",
        ))
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        if route_sql(&request, &request.get_ref().cmd) {
            let info = self.sql.get_flight_info(request).await?.into_inner();
            return Ok(Response::new(SchemaResult {
                schema: info.schema,
            }));
        }
        let (_, _, read) = self.descriptor_read(request.get_ref())?;
        Ok(Response::new(schema_result(&read.output_schema)?))
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        if route_sql(&request, &request.get_ref().ticket) {
            return self.sql.do_get(request).await;
        }
        Ok(Response::new(self.table_do_get(&request.get_ref().ticket)?))
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        self.sql.do_put(request).await
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented("DoExchange is not supported"))
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        note_command(&request, &request.get_ref().r#type);
        self.sql.do_action(request).await
    }

    async fn list_actions(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        self.sql.list_actions(request).await
    }
}
