//! Write-ahead log in Prometheus's on-disk format.
