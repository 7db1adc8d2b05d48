//! Lab operations: build (up), teardown (down), faults, pods, the saved state, doctor.

pub mod build;
pub mod doctor;
pub mod fault;
pub mod pods;
pub mod policy;
pub mod state;
pub mod teardown;
