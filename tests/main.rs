//! The one integration-test binary: modules per feature, shared helpers in `support`.

mod kv;
mod support;
