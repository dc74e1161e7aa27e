//! The agent's side of cluster queries: a datafusion-distributed worker
//! that runs the stages sonde-query sends to this node, and nothing else.
//!
//! Each query gets its own session with the node's store
//! ([`LocalTables`]), the scan codec and a memory pool of the agent's
//! per-query budget. Before a decoded stage is registered,
//! [`check_stage`] refuses any plan whose leaves are not [`SondeScanExec`]s
//! of this node (no file scans, no in-memory data, no network boundaries
//! that would make the agent dial other addresses).

use std::sync::Arc;

use datafusion::{
    common::{
        DataFusionError, Result,
        tree_node::{TreeNode, TreeNodeRecursion},
    },
    execution::{
        SessionState,
        disk_manager::{DiskManagerBuilder, DiskManagerMode},
        runtime_env::RuntimeEnvBuilder,
    },
    physical_plan::ExecutionPlan,
    prelude::SessionConfig,
};
use datafusion_distributed::{
    DistributedExt, NetworkBoundaryExt, Worker, WorkerPlanRewriteEvent,
    WorkerPlanRewriteEventResponse, WorkerQueryContext, WorkerSessionBuilder,
};

use super::scan::{LocalTables, SondeScanCodec, SondeScanExec};
use probe_store::TableSource;

/// The plan dialect a worker speaks, reported by `GetWorkerInfo`. The
/// coordinator sends plans only to workers reporting exactly its own:
/// DataFusion's plan encoding and Sonde's scan encoding both change
/// between builds.
pub const WORKER_VERSION: &str = concat!(
    "sonde/",
    env!("CARGO_PKG_VERSION"),
    "+datafusion-55+datafusion-distributed-4.0.0+scan-1"
);

/// The worker for node `node` over `source`, each query bounded to
/// `memory_limit` bytes.
pub fn agent_worker(node: String, source: Arc<dyn TableSource>, memory_limit: usize) -> Worker {
    Worker::from_session_builder(AgentSessions {
        tables: Arc::new(LocalTables { node, source }),
        memory_limit,
    })
    .with_version(WORKER_VERSION)
}

struct AgentSessions {
    tables: Arc<LocalTables>,
    memory_limit: usize,
}

#[tonic::async_trait]
impl WorkerSessionBuilder for AgentSessions {
    async fn build_session_state(&self, ctx: WorkerQueryContext) -> Result<SessionState> {
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(self.memory_limit, 1.0)
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .build_arc()?;
        let node = self.tables.node.clone();
        let mut builder = ctx
            .builder
            .with_runtime_env(runtime)
            .with_distributed_user_codec(SondeScanCodec)
            .with_distributed_worker_plan_rewrite_handler(
                move |event: WorkerPlanRewriteEvent<'_>| {
                    check_stage(&event.plan, &node)?;
                    Ok(WorkerPlanRewriteEventResponse::new(event.plan))
                },
            );
        builder
            .config()
            .get_or_insert_with(SessionConfig::new)
            .set_extension(Arc::clone(&self.tables));
        Ok(builder.build())
    }
}

/// Refuses a stage unless every leaf is a scan of this node's tables.
pub fn check_stage(plan: &Arc<dyn ExecutionPlan>, node: &str) -> Result<()> {
    let mut refusal = None;
    plan.apply(|p| {
        let reason = if p.is_network_boundary() {
            Some(format!(
                "{} reads from other workers; an agent runs only stages over its own tables",
                p.name()
            ))
        } else if let Some(scan) = p.downcast_ref::<SondeScanExec>() {
            (scan.spec().nodes.as_slice() != [node]).then(|| {
                format!(
                    "the scan of {} is for node(s) {:?}",
                    scan.spec().table,
                    scan.spec().nodes
                )
            })
        } else if p.children().is_empty() {
            Some(format!(
                "leaf {} is not a Sonde scan of this node's tables",
                p.name()
            ))
        } else {
            None
        };
        match reason {
            Some(reason) => {
                refusal = Some(reason);
                Ok(TreeNodeRecursion::Stop)
            }
            None => Ok(TreeNodeRecursion::Continue),
        }
    })?;
    match refusal {
        Some(reason) => Err(DataFusionError::Plan(format!(
            "plan refused by the agent of node {node}: {reason}"
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use arrow_schema::{DataType, Field, Schema};
    use datafusion::physical_plan::{empty::EmptyExec, limit::GlobalLimitExec};

    use super::*;
    use crate::flight::cluster::ScanSpec;

    fn scan(nodes: &[&str]) -> Arc<dyn ExecutionPlan> {
        let schema = Arc::new(Schema::new(vec![Field::new("pod", DataType::Utf8, true)]));
        Arc::new(SondeScanExec::new(
            ScanSpec {
                table: "shop.opens".to_owned(),
                nodes: nodes.iter().map(|n| (*n).to_owned()).collect(),
                columns: Some(vec!["pod".to_owned()]),
                since: None,
                until: None,
                limit: None,
                partitions: 1,
            },
            schema,
        ))
    }

    #[test]
    fn only_scans_of_this_node_pass() {
        let own = Arc::new(GlobalLimitExec::new(scan(&["node-a"]), 0, Some(5)));
        assert!(check_stage(&(own as Arc<dyn ExecutionPlan>), "node-a").is_ok());

        let other = check_stage(&scan(&["node-b"]), "node-a").expect_err("another node's scan");
        assert!(
            other.to_string().contains("node(s) [\"node-b\"]"),
            "{other}"
        );

        let empty: Arc<dyn ExecutionPlan> = Arc::new(EmptyExec::new(Arc::new(Schema::empty())));
        let leaf = check_stage(&empty, "node-a").expect_err("not a Sonde scan");
        assert!(
            leaf.to_string()
                .contains("plan refused by the agent of node node-a: leaf EmptyExec"),
            "{leaf}"
        );
    }
}
