//! Loopback ports for the components.
//!
//! Ports are drawn at random below the kernel's ephemeral range
//! (`net.ipv4.ip_local_port_range`). A port the kernel handed out for `bind(0)` is
//! also the kind it hands to every outgoing connection, so between our probe and the
//! component's own bind a client socket of any test running beside it could take it.
//! Below the range only an explicit bind can, and the random draw makes two test
//! processes picking the same port unlikely; this process never hands one out twice.

use std::{
    collections::HashSet,
    hash::{BuildHasher, RandomState},
    net::{Ipv4Addr, TcpListener},
    sync::{Mutex, OnceLock},
};

use crate::{Component, HarnessError};

/// Where random ports are drawn from when the ephemeral range leaves no room below it.
const FALLBACK: (u16, u16) = (20_000, 32_767);

/// The lowest port drawn from.
const FLOOR: u16 = 10_000;

/// Ports handed out by this process, so two components started at the same time
/// never get the same one between our probe and their bind.
fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(Default::default)
}

/// The ports to draw from: from [`FLOOR`] up to just below the ephemeral range.
fn drawable() -> (u16, u16) {
    static RANGE: OnceLock<(u16, u16)> = OnceLock::new();
    *RANGE.get_or_init(|| {
        let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok());
        match ephemeral_low {
            Some(low) if low > FLOOR + 1_000 => (FLOOR, low - 1),
            _ => FALLBACK,
        }
    })
}

/// A port on 127.0.0.1 that is free now, lies outside the kernel's ephemeral range
/// and that this process has not handed out before.
pub fn free_port() -> std::io::Result<u16> {
    let (low, high) = drawable();
    let span = u64::from(high - low) + 1;
    let random = RandomState::new();
    for attempt in 0u64..256 {
        let port = low + u16::try_from(random.hash_one(attempt) % span).unwrap_or(0);
        let mut ports = handed_out().lock().unwrap_or_else(|e| e.into_inner());
        if ports.contains(&port) || TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err() {
            continue;
        }
        ports.insert(port);
        return Ok(port);
    }
    Err(std::io::Error::other(format!(
        "no free loopback port in {low}-{high} after 256 tries"
    )))
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
    match wanted {
        Some(port) => {
            ensure_free(component, port)?;
            Ok(port)
        }
        None => Ok(free_port()?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_fresh_and_below_the_ephemeral_range() {
        let (low, high) = drawable();
        let ports: Vec<u16> = (0..200)
            .map(|_| free_port().expect("a free port"))
            .collect();
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "a port was handed out twice");
        assert!(ports.iter().all(|p| (low..=high).contains(p)), "{ports:?}");
        for port in ports {
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("handed-out port is free");
        }
    }
}
