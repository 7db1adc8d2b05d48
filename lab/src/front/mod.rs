//! The front ends: the command layer, the CLI and scenarios.

pub mod command;
pub mod cli;
pub mod scenario;
