//! The front ends: the command layer, the CLI and scenarios.

pub mod cli;
pub mod command;
pub mod pcap;
pub mod scenario;
