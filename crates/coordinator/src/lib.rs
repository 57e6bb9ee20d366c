//! The Runwarden coordinator: the REST API for script tasks, the store of
//! tasks, jobs, results and scripts, and the link that agents dial.
//!
//! A client posts a script task naming peers; the coordinator validates it,
//! creates one job per peer and sends each job over that peer's agent link.
//! Agents report the job's start and result back over the same link. State
//! lives behind [`storage::Storage`]; this crate ships an in-memory store.
//!
//! Start one with [`server::RunningCoordinator::start`].

pub mod api;
pub mod audit;
pub mod auth;
pub mod body;
pub mod config;
pub mod error;
pub mod lang;
pub mod link;
pub mod peers;
pub mod reaper;
pub mod secrets;
pub mod server;
pub mod state;
pub mod storage;
pub mod tasks;
pub mod tls;
pub mod validate;
