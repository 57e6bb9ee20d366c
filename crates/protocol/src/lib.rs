//! Types that cross a process boundary in Runwarden.
//!
//! - [`api`]: the JSON bodies of the REST API. Field names follow the
//!   original script task API exactly, including its spellings (`creater`,
//!   `execWay`, `peerId` in task listings but `peerid` elsewhere).
//! - [`status`]: job and task statuses and the machine-readable outcome code
//!   of a finished job (`resCmd.code`).
//! - [`output`]: how captured stdout and stderr bytes are carried in JSON.
//! - [`interpreter`]: how execWay 0 passes inline code to each interpreter.
//! - [`link`]: the messages that an agent and the coordinator exchange over
//!   the agent's WebSocket.
//! - [`secret`]: secret environment values and the redaction of stored and
//!   shown requests.
//!
//! This crate holds data only. Validation lives with the component that
//! enforces it: the coordinator checks requests at submit time, and the agent
//! checks again what only the peer can know (users, paths, scripts).

pub mod access;
pub mod api;
pub mod interpreter;
pub mod link;
pub mod output;
pub mod secret;
pub mod status;

/// Version of the agent link protocol. The coordinator rejects an agent whose
/// `Hello` names another version, because message shapes may differ.
///
/// Version 2 added `content.secretEnv` to `RunJob`. An agent of version 1
/// would ignore it and run the job without its secret variables.
pub const LINK_PROTOCOL_VERSION: u32 = 2;
