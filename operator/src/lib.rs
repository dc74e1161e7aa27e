//! Sonde operator.
