#![doc = include_str!("../README.md")]

pub mod auth;
pub mod broker;
pub mod id;
pub mod model;
pub mod push;
pub mod status;
pub mod store;
#[cfg(feature = "testkit")]
pub mod testkit;
