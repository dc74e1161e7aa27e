//! How a cluster query is split: the distributed planner's hooks.
//!
//! - A [`SondeScanExec`] wants one task per node that holds its table, and
//!   is split into one variant per node (a `DistributedLeafExec`).
//! - A stage that holds such a leaf is routed task by task to the agents
//!   of those nodes; every other stage (merges, final aggregates, sorts)
//!   goes to the worker inside sonde-query itself, never to an agent.
//! - A scan the planner left undistributed (one node, nothing to merge)
//!   is read by sonde-query over the agent's plain Flight table path, with
//!   the same projection, time range and limit.

use std::sync::Arc;

use arrow_flight::{Ticket, decode::FlightRecordBatchStream, error::FlightError};
use arrow_schema::SchemaRef;
use datafusion::{
    common::{
        DataFusionError, Result, exec_err,
        tree_node::{TreeNode, TreeNodeRecursion},
    },
    execution::{
        SendableRecordBatchStream, SessionState, SessionStateBuilder,
        disk_manager::{DiskManagerBuilder, DiskManagerMode},
        runtime_env::RuntimeEnvBuilder,
    },
    physical_plan::{
        ExecutionPlan, Partitioning, coalesce_partitions::CoalescePartitionsExec,
        repartition::RepartitionExec, sorts::sort_preserving_merge::SortPreservingMergeExec,
        stream::RecordBatchStreamAdapter,
    },
    prelude::SessionConfig,
};
use datafusion_distributed::{
    BroadcastExec, DesiredTaskCountEvent, DesiredTaskCountEventResponse, DistributedExt,
    DistributedLeafExec, NetworkBoundaryExt, RouteTasksEvent, RouteTasksEventResponse,
    ScaleUpLeafNodeEvent, ScaleUpLeafNodeEventResponse, SessionStateBuilderExt, Worker,
    WorkerQueryContext, WorkerResolver,
};
use futures::{StreamExt, TryStreamExt};
use probe_serve::{
    cluster::{RemoteTables, RemoteTablesExtension, SondeScanCodec, SondeScanExec},
    flight::TableTicket,
};
use url::Url;

use crate::agents::{AgentDirectory, Connections};

/// The address of the worker inside sonde-query. Stages routed here run in
/// process; nothing ever dials it.
pub fn local_worker_url() -> Url {
    // A constant, valid URL.
    #[allow(clippy::unwrap_used, reason = "a constant, valid URL")]
    Url::parse("http://sonde-query.local.invalid/").unwrap()
}

/// The worker inside sonde-query: it runs the stages without a leaf,
/// reading the node stages from the agents.
pub fn local_worker(connections: Connections) -> Worker {
    Worker::from_session_builder(move |ctx: WorkerQueryContext| {
        let connections = connections.clone();
        async move {
            Ok(ctx
                .builder
                .with_distributed_user_codec(SondeScanCodec)
                .with_distributed_channel_resolver(connections)
                .build())
        }
    })
}

/// Every agent is a worker the planner may size stages by.
struct AgentWorkers(AgentDirectory);

impl WorkerResolver for AgentWorkers {
    fn get_urls(&self) -> Result<Vec<Url>, DataFusionError> {
        Ok(self.0.snapshot().into_values().collect())
    }
}

/// Reads an undistributed scan from the agent's Flight table path.
struct FlightTables {
    directory: AgentDirectory,
    connections: Connections,
}

impl RemoteTables for FlightTables {
    fn read(
        &self,
        node: &str,
        ticket: TableTicket,
        schema: SchemaRef,
    ) -> Result<SendableRecordBatchStream> {
        let Some(url) = self.directory.url(node) else {
            return exec_err!("node {node} has no agent any more");
        };
        let mut client = self
            .connections
            .flight(&url)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let node = node.to_owned();
        let stream = futures::stream::once(async move {
            let response =
                client
                    .do_get(Ticket::new(ticket.to_json()))
                    .await
                    .map_err(|status| {
                        DataFusionError::Execution(format!(
                            "node {node}: reading {} from its agent failed: {status}",
                            ticket.table
                        ))
                    })?;
            let batches = FlightRecordBatchStream::new_from_flight_data(
                response.into_inner().map_err(FlightError::from),
            )
            .map_err(|e| DataFusionError::External(Box::new(e)));
            Ok::<_, DataFusionError>(batches)
        })
        .try_flatten()
        .boxed();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// The session one query plans and runs in.
pub fn query_session(
    directory: &AgentDirectory,
    connections: &Connections,
    local: &Worker,
    memory_limit: usize,
    config: SessionConfig,
) -> Result<SessionState> {
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_limit(memory_limit, 1.0)
        .with_disk_manager_builder(
            DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
        )
        .build_arc()?;
    let config = config.with_extension(Arc::new(RemoteTablesExtension(Arc::new(FlightTables {
        directory: directory.clone(),
        connections: connections.clone(),
    }))));
    let route_directory = directory.clone();
    Ok(SessionStateBuilder::new()
        .with_default_features()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_distributed_planner()
        .with_distributed_worker_resolver(AgentWorkers(directory.clone()))
        .with_distributed_channel_resolver(connections.clone())
        .with_distributed_user_codec(SondeScanCodec)
        .with_distributed_local_worker_context(local.to_local_worker_context(local_worker_url()))
        .with_distributed_desired_task_count_handler(one_task_per_node)
        .with_distributed_scale_up_leaf_node_handler(split_by_node)
        .with_distributed_route_tasks_handler(move |event: RouteTasksEvent<'_>| {
            route_to_nodes(&route_directory, event)
        })
        .build())
}

/// A scan wants one task per node; a node above a stage boundary (a merge
/// or the consumer of a shuffle) runs in one task, here: several tasks
/// would all land on this process's one worker.
fn one_task_per_node(
    event: DesiredTaskCountEvent,
) -> Option<Result<DesiredTaskCountEventResponse>> {
    if let Some(scan) = event.plan.downcast_ref::<SondeScanExec>() {
        return Some(Ok(DesiredTaskCountEventResponse::desired(
            scan.spec().nodes.len().max(1),
        )));
    }
    above_stage_boundary(event.plan).then(|| Ok(DesiredTaskCountEventResponse::maximum(1)))
}

/// Whether the planner will put a network boundary between `plan` and the
/// scans below it: above a hash repartition or a broadcast, or at a node
/// that gathers partitions.
fn above_stage_boundary(plan: &Arc<dyn ExecutionPlan>) -> bool {
    if plan.is::<CoalescePartitionsExec>() || plan.is::<SortPreservingMergeExec>() {
        return true;
    }
    plan.children().into_iter().any(|child| {
        let shuffled = child
            .downcast_ref::<RepartitionExec>()
            .is_some_and(|r| matches!(r.partitioning(), Partitioning::Hash(..)));
        shuffled || child.is::<BroadcastExec>() || above_stage_boundary(child)
    })
}

fn split_by_node(event: ScaleUpLeafNodeEvent) -> Option<Result<ScaleUpLeafNodeEventResponse>> {
    let scan = event.plan.downcast_ref::<SondeScanExec>()?;
    let nodes = &scan.spec().nodes;
    if event.task_count != nodes.len() {
        return Some(exec_err!(
            "table {} is on {} nodes but its stage got {} tasks; every node's agent must be \
             a worker",
            scan.spec().table,
            nodes.len(),
            event.task_count
        ));
    }
    let partitions = event.session_config.target_partitions().max(1);
    let variants = nodes.iter().map(|node| {
        let mut variant = scan.for_node(node);
        variant = SondeScanExec::new(
            probe_serve::cluster::ScanSpec {
                partitions,
                ..variant.spec().clone()
            },
            variant.schema(),
        );
        Arc::new(variant) as Arc<dyn ExecutionPlan>
    });
    Some(
        DistributedLeafExec::try_new(Arc::clone(event.plan), variants)
            .map(|leaf| ScaleUpLeafNodeEventResponse::new(Arc::new(leaf))),
    )
}

/// The nodes a stage's tasks read, in task order, if it holds a scan.
fn stage_nodes(plan: &Arc<dyn ExecutionPlan>) -> Result<Option<Vec<String>>> {
    let mut found: Option<Vec<String>> = None;
    let mut conflict = false;
    plan.apply(|p| {
        if p.is_network_boundary() {
            return Ok(TreeNodeRecursion::Jump);
        }
        let nodes = if let Some(leaf) = p.downcast_ref::<DistributedLeafExec>() {
            leaf.variants()
                .iter()
                .map(|v| {
                    v.downcast_ref::<SondeScanExec>()
                        .and_then(|s| s.spec().nodes.first().cloned())
                })
                .collect::<Option<Vec<_>>>()
        } else if let Some(scan) = p.downcast_ref::<SondeScanExec>() {
            Some(scan.spec().nodes.clone())
        } else {
            return Ok(TreeNodeRecursion::Continue);
        };
        match (&found, nodes) {
            (_, None) => conflict = true,
            (None, Some(nodes)) => found = Some(nodes),
            (Some(seen), Some(nodes)) if *seen == nodes => {}
            (Some(_), Some(_)) => conflict = true,
        }
        Ok(TreeNodeRecursion::Jump)
    })?;
    if conflict {
        return exec_err!(
            "a stage reads tables of different node sets; such a query cannot be placed on \
             the agents"
        );
    }
    Ok(found)
}

fn route_to_nodes(
    directory: &AgentDirectory,
    event: RouteTasksEvent<'_>,
) -> Option<Result<RouteTasksEventResponse>> {
    let nodes = match stage_nodes(event.plan) {
        Ok(nodes) => nodes,
        Err(e) => return Some(Err(e)),
    };
    let Some(nodes) = nodes else {
        // No leaf: a merge. It runs here, never on an agent.
        return Some(Ok(RouteTasksEventResponse::new(vec![
            local_worker_url();
            event.task_count
        ])));
    };
    if nodes.len() != event.task_count {
        return Some(exec_err!(
            "a stage over {} nodes got {} tasks",
            nodes.len(),
            event.task_count
        ));
    }
    let urls = nodes
        .iter()
        .map(|node| {
            directory.url(node).ok_or_else(|| {
                DataFusionError::Execution(format!("node {node}: its agent went away"))
            })
        })
        .collect::<Result<Vec<_>>>();
    Some(urls.map(RouteTasksEventResponse::new))
}
