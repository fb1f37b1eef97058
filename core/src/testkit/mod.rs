//! Conformance suites and the in-process transport (feature `testkit`).

pub mod store;
