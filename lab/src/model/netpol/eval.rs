//! What the Kubernetes semantics of NetworkPolicy say of one connection.
