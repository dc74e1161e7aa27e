//! Loopback ports for the components.

use std::{
    collections::HashSet,
    net::{Ipv4Addr, TcpListener},
    sync::{Mutex, OnceLock},
};

use crate::{Component, HarnessError};

/// Ports handed out by this process, so two components started at the same time
/// never get the same one between our probe and their bind.
fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(Default::default)
}

/// A port on 127.0.0.1 that is free now and that this process has not handed out before.
pub fn free_port() -> std::io::Result<u16> {
    for _ in 0..64 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let mut ports = handed_out().lock().unwrap_or_else(|e| e.into_inner());
        if ports.insert(port) {
            return Ok(port);
        }
    }
    Err(std::io::Error::other(
        "no fresh loopback port after 64 tries",
    ))
}

/// Fails with [`HarnessError::PortInUse`] if something already listens on the port.
pub(crate) fn ensure_free(component: Component, port: u16) -> Result<(), HarnessError> {
    match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
        Ok(_) => Ok(()),
        Err(_) => Err(HarnessError::PortInUse { component, port }),
    }
}

/// A port chosen by the caller, checked, or a fresh one.
pub(crate) fn port_for(component: Component, wanted: Option<u16>) -> anyhow::Result<u16> {
    let port = match wanted {
        Some(port) => port,
        None => free_port()?,
    };
    ensure_free(component, port)?;
    Ok(port)
}
