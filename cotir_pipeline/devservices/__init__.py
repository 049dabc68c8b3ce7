"""Local development services (real Ceph radosgw S3, ...) for tests and developers."""
