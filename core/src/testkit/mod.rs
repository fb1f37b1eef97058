//! Conformance suites and the in-process transport (feature `testkit`).
//!
//! - [`store`]: the Store conformance suite; every store implementation calls `store::run_all`.
//! - [`protocol`]: the protocol conformance suite; every transport calls `protocol::run_all` with a harness.
//! - [`inproc`]: the in-process transport, which takes the same path as network transports.

pub mod inproc;
pub mod protocol;
pub mod store;
