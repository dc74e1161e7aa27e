//! The cluster's catalogue as one query sees it: schema `<namespace>` or
//! `sonde`, table as on the agents. A table is resolved when a query plans
//! it, by asking every agent for it: the nodes that hold it are where the
//! scan's tasks go, a node that cannot answer fails the query (or, with
//! partial results allowed, is noted as missing).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use arrow_flight::FlightDescriptor;
use arrow_schema::{Schema, SchemaRef};
use datafusion::{
    catalog::{CatalogProvider, SchemaProvider, Session, TableProvider},
    common::{DataFusionError, Result},
    datasource::TableType,
    logical_expr::{Expr, TableProviderFilterPushDown},
    physical_plan::ExecutionPlan,
};
use probe_serve::{
    cluster::{ScanSpec, WORKER_VERSION, coordinator_scan},
    flight::time_range,
};
use url::Url;

use crate::{
    Error,
    agents::{AgentDirectory, Connections},
};

/// How long one agent may take to say whether it holds a table.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What one query knows about the cluster while it plans.
pub struct QueryScope {
    pub directory: AgentDirectory,
    pub connections: Connections,
    /// The client accepts an answer without some nodes.
    pub partial: bool,
    /// Nodes left out of the answer, with why.
    missing: Mutex<BTreeMap<String, String>>,
}

impl QueryScope {
    pub fn new(directory: AgentDirectory, connections: Connections, partial: bool) -> Self {
        Self {
            directory,
            connections,
            partial,
            missing: Mutex::default(),
        }
    }

    /// Nodes left out of the answer, with why.
    pub fn missing(&self) -> BTreeMap<String, String> {
        self.missing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn note_missing(&self, node: &str, reason: String) {
        self.missing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(node.to_owned(), reason);
    }
}

/// What one agent said about a table.
enum Holding {
    Holds(Schema),
    Absent,
    Unavailable(Error),
}

async fn probe(scope: &QueryScope, node: &str, url: &Url, schema: &str, table: &str) -> Holding {
    let ask = async {
        let version = match scope.connections.worker_version(url).await {
            Ok(version) => version,
            Err(e) => {
                return Holding::Unavailable(Error::NodeUnreachable {
                    node: node.to_owned(),
                    url: url.to_string(),
                    reason: e.to_string(),
                });
            }
        };
        if version != WORKER_VERSION {
            return Holding::Unavailable(Error::IncompatibleWorker {
                node: node.to_owned(),
                found: version,
                expected: WORKER_VERSION.to_owned(),
            });
        }
        let mut client = match scope.connections.flight(url) {
            Ok(client) => client,
            Err(e) => return Holding::Unavailable(e),
        };
        let descriptor = FlightDescriptor::new_path(vec![schema.to_owned(), table.to_owned()]);
        match client.get_schema(descriptor).await {
            Ok(reply) => match Schema::try_from(&reply.into_inner()) {
                Ok(schema) => Holding::Holds(schema),
                Err(e) => Holding::Unavailable(Error::NodeUnreachable {
                    node: node.to_owned(),
                    url: url.to_string(),
                    reason: format!("undecodable schema: {e}"),
                }),
            },
            Err(status) if status.code() == tonic::Code::NotFound => Holding::Absent,
            Err(status) => Holding::Unavailable(Error::NodeUnreachable {
                node: node.to_owned(),
                url: url.to_string(),
                reason: format!("{}: {}", status.code(), status.message()),
            }),
        }
    };
    match tokio::time::timeout(PROBE_TIMEOUT, ask).await {
        Ok(holding) => holding,
        Err(_) => Holding::Unavailable(Error::NodeUnreachable {
            node: node.to_owned(),
            url: url.to_string(),
            reason: format!("no answer within {PROBE_TIMEOUT:?}"),
        }),
    }
}

/// The table across the cluster, or `None` if no node holds it.
async fn resolve(scope: &QueryScope, schema: &str, table: &str) -> Result<Option<ClusterTable>> {
    let agents = scope.directory.snapshot();
    let answers = futures::future::join_all(agents.iter().map(|(node, url)| async move {
        (
            node.clone(),
            url.clone(),
            probe(scope, node, url, schema, table).await,
        )
    }))
    .await;
    let mut holders: Vec<String> = Vec::new();
    let mut table_schema: Option<Schema> = None;
    for (node, url, holding) in answers {
        let failure = match holding {
            Holding::Absent => continue,
            Holding::Holds(found) => match &table_schema {
                None => {
                    table_schema = Some(found);
                    holders.push(node);
                    continue;
                }
                Some(expected) if expected.fields() == found.fields() => {
                    holders.push(node);
                    continue;
                }
                Some(expected) => Error::SchemaDiffers {
                    node: node.clone(),
                    table: format!("{schema}.{table}"),
                    found: field_names(&found),
                    expected: field_names(expected),
                },
            },
            Holding::Unavailable(error) => {
                scope.connections.forget(&url);
                error
            }
        };
        if scope.partial {
            scope.note_missing(&node, failure.to_string());
        } else {
            return Err(DataFusionError::External(Box::new(failure)));
        }
    }
    Ok(table_schema.map(|s| ClusterTable {
        table: format!("{schema}.{table}"),
        schema: Arc::new(s),
        nodes: holders,
    }))
}

fn field_names(schema: &Schema) -> Vec<String> {
    schema.fields().iter().map(|f| f.name().clone()).collect()
}

/// The one catalog, `sonde`: any schema name may hold tables.
pub struct ClusterCatalog {
    pub scope: Arc<QueryScope>,
}

impl std::fmt::Debug for ClusterCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterCatalog")
    }
}

impl CatalogProvider for ClusterCatalog {
    fn schema_names(&self) -> Vec<String> {
        Vec::new()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        Some(Arc::new(ClusterSchema {
            scope: Arc::clone(&self.scope),
            schema: name.to_owned(),
        }))
    }
}

struct ClusterSchema {
    scope: Arc<QueryScope>,
    schema: String,
}

impl std::fmt::Debug for ClusterSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSchema")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

#[tonic::async_trait]
impl SchemaProvider for ClusterSchema {
    fn table_names(&self) -> Vec<String> {
        // Listing needs every agent: Flight SQL GetTables does it, not SQL.
        Vec::new()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        Ok(resolve(&self.scope, &self.schema, name)
            .await?
            .map(|t| Arc::new(t) as Arc<dyn TableProvider>))
    }

    fn table_exist(&self, _name: &str) -> bool {
        // Known only by asking the agents, which `table` does.
        true
    }
}

/// One table as held by `nodes`.
#[derive(Debug)]
pub struct ClusterTable {
    table: String,
    schema: SchemaRef,
    nodes: Vec<String>,
}

#[tonic::async_trait]
impl TableProvider for ClusterTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // The scan narrows by `time_` and the filter itself runs in the
        // node's stage right above it: inexact keeps it there.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let (columns, schema) = match projection {
            Some(indices) => (
                Some(
                    indices
                        .iter()
                        .map(|&i| self.schema.field(i).name().clone())
                        .collect(),
                ),
                Arc::new(self.schema.project(indices)?),
            ),
            None => (None, Arc::clone(&self.schema)),
        };
        let (since, until) = time_range(filters);
        let spec = ScanSpec {
            table: self.table.clone(),
            nodes: self.nodes.clone(),
            columns,
            since,
            until,
            limit: limit.map(|l| l as u64),
            partitions: 1,
        };
        Ok(Arc::new(coordinator_scan(spec, schema)))
    }
}
