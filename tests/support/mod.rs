//! Helpers shared by the integration tests: the built binary, temp dirs, real servers.

pub mod etcd;
