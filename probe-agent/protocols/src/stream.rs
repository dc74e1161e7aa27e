//! Types shared by the protocol parsers: which way bytes moved and which
//! end of the connection the traced process is.

/// Which way the traced process moved the bytes of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The traced process wrote or sent them.
    Egress,
    /// The traced process read or received them.
    Ingress,
}

impl Direction {
    /// The other direction of the same connection.
    pub fn reverse(self) -> Self {
        match self {
            Direction::Egress => Direction::Ingress,
            Direction::Ingress => Direction::Egress,
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Direction::Egress => 0,
            Direction::Ingress => 1,
        }
    }
}

/// Which end of the connection the traced process is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Role {
    /// It connected: it writes requests and reads responses.
    Client,
    /// It accepted: it reads requests and writes responses.
    Server,
    /// Not known (the connection was already open when tracing began); the
    /// parser infers it from the first message it sees.
    #[default]
    Unknown,
}
