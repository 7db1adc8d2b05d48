//! What the user wrote and every decision made from it, pure: topology, plan, names, paths, fault specs, errors.

pub mod error;
pub mod faultspec;
pub mod identity;
pub mod names;
pub mod netpol;
pub mod paths;
pub mod plan;
pub mod spanned;
pub mod topology;
