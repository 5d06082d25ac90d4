//! KV store layer: the `KvStore` trait and its etcd, embedded and in-memory implementations.
