"""Image sources: registries, OCI layouts, OCI archives and ``docker save`` archives."""
