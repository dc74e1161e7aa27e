//! Cluster queries: the scan node sonde-query plans over every agent's
//! tables, its codec, and the agent's worker that runs a node's stages.

mod scan;
mod worker;

pub use self::{
    scan::{
        LocalTables, RemoteTables, RemoteTablesExtension, ScanSpec, SondeScanCodec, SondeScanExec,
        coordinator_scan,
    },
    worker::{WORKER_VERSION, agent_worker, check_stage},
};
