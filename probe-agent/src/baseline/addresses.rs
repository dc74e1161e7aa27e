//! Local and remote addresses of a process's TCP sockets, from `/proc`:
//! the descriptor names the socket's inode, and the process's network
//! namespace's `net/tcp` and `net/tcp6` tables name its addresses.
//!
//! Tables are read once per network namespace per round ([`AddressBook::
//! next_round`]), however many connections of that namespace are looked
//! up; a socket opened after its table was read makes the table be read
//! again, once per round.

use std::{
    collections::{HashMap, HashSet},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// A socket's two ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ends {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

pub struct AddressBook {
    proc: PathBuf,
    /// Network namespace inode → socket inode → ends.
    tables: HashMap<u64, HashMap<u64, Ends>>,
    /// Namespaces read again this round already.
    reread: HashSet<u64>,
}

impl AddressBook {
    pub fn new(proc: &Path) -> Self {
        Self {
            proc: proc.to_owned(),
            tables: HashMap::new(),
            reread: HashSet::new(),
        }
    }

    /// Forgets the tables read: the next lookups read them afresh.
    pub fn next_round(&mut self) {
        self.tables.clear();
        self.reread.clear();
    }

    /// The ends of descriptor `fd` of process `pid`, if it is a TCP socket
    /// that is still open.
    pub fn lookup(&mut self, pid: u32, fd: u32) -> Option<Ends> {
        let process = self.proc.join(pid.to_string());
        let link = std::fs::read_link(process.join("fd").join(fd.to_string())).ok()?;
        let inode = socket_inode(link.to_str()?)?;
        let netns = std::fs::metadata(process.join("ns/net")).ok()?.ino();
        if let Some(ends) = self.tables.get(&netns).and_then(|t| t.get(&inode)) {
            return Some(*ends);
        }
        if self.tables.contains_key(&netns) && !self.reread.insert(netns) {
            return None;
        }
        let mut table = HashMap::new();
        for (file, v6) in [("net/tcp", false), ("net/tcp6", true)] {
            if let Ok(text) = std::fs::read_to_string(process.join(file)) {
                parse_table(&text, v6, &mut table);
            }
        }
        let found = table.get(&inode).copied();
        self.tables.insert(netns, table);
        found
    }
}

/// The inode of a `socket:[N]` descriptor link.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The rows of a `/proc/net/tcp` or `tcp6` table into `out`, by inode.
fn parse_table(text: &str, v6: bool, out: &mut HashMap<u64, Ends>) {
    for line in text.lines().skip(1) {
        let mut columns = line.split_whitespace();
        let (Some(_slot), Some(local), Some(remote)) =
            (columns.next(), columns.next(), columns.next())
        else {
            continue;
        };
        // st tx:rx tr:tm retrnsmt uid timeout inode
        let Some(inode) = columns.nth(6).and_then(|i| i.parse::<u64>().ok()) else {
            continue;
        };
        if let (Some(local), Some(remote)) = (parse_address(local, v6), parse_address(remote, v6)) {
            out.insert(inode, Ends { local, remote });
        }
    }
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6): the address
/// as the kernel prints it, 32-bit words in host order.
fn parse_address(text: &str, v6: bool) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = ip.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    if v6 {
        if ip.len() != 32 {
            return None;
        }
        let mut octets = [0; 16];
        for i in 0..4 {
            octets[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
        }
        let ip = Ipv6Addr::from(octets);
        Some(match ip.to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, port)),
            None => SocketAddr::from((ip, port)),
        })
    } else {
        if ip.len() != 8 {
            return None;
        }
        Some(SocketAddr::from((Ipv4Addr::from(word(0)?), port)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernels_tables() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 20 4 30 10 -1\n   1: garbage\n";
        let mut table = HashMap::new();
        parse_table(tcp, false, &mut table);
        assert_eq!(
            table.get(&4242),
            Some(&Ends {
                local: "127.0.0.1:8080".parse().expect("address"),
                remote: "127.0.0.1:54321".parse().expect("address"),
            })
        );
        assert_eq!(table.len(), 1);
        // ::1 and ::ffff:127.0.0.1 as tcp6 prints them.
        assert_eq!(
            parse_address("00000000000000000000000001000000:0050", true),
            Some("[::1]:80".parse().expect("address"))
        );
        assert_eq!(
            parse_address("0000000000000000FFFF00000100007F:0050", true),
            Some("127.0.0.1:80".parse().expect("address"))
        );
        assert_eq!(socket_inode("socket:[77]"), Some(77));
        assert_eq!(socket_inode("pipe:[77]"), None);
    }

    #[test]
    fn finds_a_live_socket_of_this_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        use std::os::fd::AsRawFd as _;
        let mut book = AddressBook::new(Path::new("/proc"));
        let ends = book
            .lookup(std::process::id(), client.as_raw_fd() as u32)
            .expect("the client socket is in net/tcp");
        assert_eq!(ends.remote, listener.local_addr().expect("addr"));
        assert_eq!(ends.local, client.local_addr().expect("addr"));
    }
}
