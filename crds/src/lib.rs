//! Sonde API types (see docs/api.md).
