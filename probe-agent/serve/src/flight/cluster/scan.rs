//! [`SondeScanExec`]: the one leaf a cluster plan may have. It reads one
//! table of one node's store, with the projection, `time_` range and limit
//! the planner pushed into it; everything above it in the node's stage
//! (filters, partial aggregates) runs on the same agent.

use std::{fmt, sync::Arc};

use arrow_array::RecordBatch;
use arrow_flight::{IpcMessage, SchemaAsIpc};
use arrow_ipc::writer::IpcWriteOptions;
use arrow_schema::{Schema, SchemaRef};
use datafusion::{
    common::{DataFusionError, Result, exec_err, tree_node::TreeNodeRecursion},
    execution::{SendableRecordBatchStream, TaskContext},
    physical_expr::{EquivalenceProperties, PhysicalExpr},
    physical_plan::{
        ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning,
        PlanProperties, ReplaceChildrenOptions,
        execution_plan::{Boundedness, EmissionType},
        stream::RecordBatchStreamAdapter,
    },
};
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use serde::{Deserialize, Serialize};

use crate::flight::{TableTicket, TimeBound, read_for_worker};
use probe_store::TableSource;

/// The node's own store, put into the session of every query its worker
/// runs: a [`SondeScanExec`] reads only through it.
pub struct LocalTables {
    pub node: String,
    pub source: Arc<dyn TableSource>,
}

/// Where a [`SondeScanExec`] that runs outside any agent (a plan the
/// planner chose not to distribute) gets its rows: the coordinator reads
/// the node's table over plain Flight with the same pushed-down ticket.
pub trait RemoteTables: Send + Sync {
    fn read(
        &self,
        node: &str,
        ticket: TableTicket,
        schema: SchemaRef,
    ) -> Result<SendableRecordBatchStream>;
}

/// A [`RemoteTables`] as a session config extension.
pub struct RemoteTablesExtension(pub Arc<dyn RemoteTables>);

/// What a scan reads, as it travels in a plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanSpec {
    /// The qualified table name, `schema.table`.
    pub table: String,
    /// The nodes whose copy of the table the scan reads: every holder on
    /// the coordinator before the planner splits it, exactly one in a
    /// node's stage.
    pub nodes: Vec<String>,
    /// Columns of the table, by name; all when `None`.
    pub columns: Option<Vec<String>>,
    /// `time_ >= since`, nanoseconds.
    pub since: Option<i64>,
    /// `time_ < until`, nanoseconds.
    pub until: Option<i64>,
    pub limit: Option<u64>,
    /// Output partitions: the node's batches are dealt round-robin.
    pub partitions: usize,
}

impl ScanSpec {
    /// The Flight ticket that reads the same rows from one node.
    pub fn ticket(&self) -> TableTicket {
        TableTicket {
            table: self.table.clone(),
            columns: self.columns.clone(),
            since: self.since.map(TimeBound::Nanos),
            until: self.until.map(TimeBound::Nanos),
            limit: self.limit,
            follow: false,
            dictionary: false,
        }
    }
}

/// Reads one table of one node (or, before the planner splits it, of
/// every node that holds it).
#[derive(Debug)]
pub struct SondeScanExec {
    spec: ScanSpec,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl SondeScanExec {
    /// `schema` is the scan's output schema (the projected table schema).
    pub fn new(spec: ScanSpec, schema: SchemaRef) -> Self {
        let partitions = spec.partitions.max(1);
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Self {
            spec,
            schema,
            properties,
        }
    }

    pub fn spec(&self) -> &ScanSpec {
        &self.spec
    }

    /// The same scan restricted to one node.
    pub fn for_node(&self, node: &str) -> Self {
        let spec = ScanSpec {
            nodes: vec![node.to_owned()],
            ..self.spec.clone()
        };
        Self::new(spec, Arc::clone(&self.schema))
    }

    fn read_local(&self, local: &LocalTables, partition: usize) -> Result<Vec<RecordBatch>> {
        if self.spec.nodes.as_slice() != [local.node.as_str()] {
            return exec_err!(
                "scan of {} for node(s) {:?} sent to the agent of node {}",
                self.spec.table,
                self.spec.nodes,
                local.node
            );
        }
        let batches = read_for_worker(&*local.source, &self.spec.ticket(), &self.schema)?;
        let partitions = self.spec.partitions.max(1);
        Ok(batches
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % partitions == partition)
            .map(|(_, b)| b)
            .collect())
    }
}

impl DisplayAs for SondeScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "SondeScanExec: table={}, nodes=[{}]",
            self.spec.table,
            self.spec.nodes.join(", ")
        )?;
        if let Some(columns) = &self.spec.columns {
            write!(f, ", projection=[{}]", columns.join(", "))?;
        }
        if self.spec.since.is_some() || self.spec.until.is_some() {
            let bound = |b: Option<i64>| b.map_or_else(|| "..".to_owned(), |n| n.to_string());
            write!(
                f,
                ", time_=[{}, {})",
                bound(self.spec.since),
                bound(self.spec.until)
            )?;
        }
        if let Some(limit) = self.spec.limit {
            write!(f, ", limit={limit}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for SondeScanExec {
    fn name(&self) -> &str {
        "SondeScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            exec_err!("SondeScanExec has no children")
        }
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let config = context.session_config();
        if let Some(local) = config.get_extension::<LocalTables>() {
            let batches = self.read_local(&local, partition)?;
            let stream = futures::stream::iter(batches.into_iter().map(Ok));
            return Ok(Box::pin(RecordBatchStreamAdapter::new(
                Arc::clone(&self.schema),
                stream,
            )));
        }
        if let Some(remote) = config.get_extension::<RemoteTablesExtension>() {
            // Outside the agents the scan is one partition per node.
            let Some(node) = self.spec.nodes.get(partition) else {
                return Ok(Box::pin(RecordBatchStreamAdapter::new(
                    Arc::clone(&self.schema),
                    futures::stream::empty(),
                )));
            };
            let mut spec = self.spec.clone();
            spec.partitions = 1;
            return remote.0.read(node, spec.ticket(), Arc::clone(&self.schema));
        }
        exec_err!(
            "SondeScanExec of {} has neither the node's store nor a way to reach it",
            self.spec.table
        )
    }
}

/// A scan as the coordinator sees it before distribution: one partition
/// per holder, read remotely; split into per-node variants by the planner.
pub fn coordinator_scan(spec: ScanSpec, schema: SchemaRef) -> SondeScanExec {
    let partitions = spec.nodes.len();
    SondeScanExec::new(ScanSpec { partitions, ..spec }, schema)
}

/// How a [`SondeScanExec`] crosses the network: its spec as JSON and its
/// output schema as an Arrow IPC schema message.
#[derive(Debug, Default, Clone, Copy)]
pub struct SondeScanCodec;

#[derive(Serialize, Deserialize)]
struct EncodedScan {
    spec: ScanSpec,
    schema: Vec<u8>,
}

impl PhysicalExtensionCodec for SondeScanCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        _ctx: &TaskContext,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if !inputs.is_empty() {
            return exec_err!("a SondeScanExec has no inputs");
        }
        let encoded: EncodedScan =
            serde_json::from_slice(buf).map_err(|e| DataFusionError::External(Box::new(e)))?;
        let schema = Schema::try_from(IpcMessage(encoded.schema.into()))?;
        Ok(Arc::new(SondeScanExec::new(encoded.spec, Arc::new(schema))))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let Some(scan) = node.downcast_ref::<SondeScanExec>() else {
            return exec_err!(
                "only SondeScanExec is encoded by Sonde, not {}",
                node.name()
            );
        };
        let IpcMessage(schema) =
            SchemaAsIpc::new(&scan.schema, &IpcWriteOptions::default()).try_into()?;
        let encoded = EncodedScan {
            spec: scan.spec.clone(),
            schema: schema.to_vec(),
        };
        serde_json::to_writer(buf, &encoded).map_err(|e| DataFusionError::External(Box::new(e)))
    }
}
