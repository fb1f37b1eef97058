#![doc = include_str!("../README.md")]

pub mod auth;
pub mod broker;
pub mod config;
mod detach;
pub mod driver;
pub mod engine;
pub mod hub;
pub mod id;
pub mod layer;
pub mod metered_store;
pub mod metrics;
pub mod model;
pub mod protocol;
pub mod push;
pub mod session;
pub mod status;
pub mod store;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod trace_context;
pub mod transport;

pub use auth::{Auth, Authorizer};
pub use broker::Broker;
pub use config::{HubConfig, Limits};
pub use hub::Hub;
pub use push::PushProvider;
pub use status::{Code, Status};
pub use store::Store;
pub use transport::Transport;
