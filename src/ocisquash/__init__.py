"""ocisquash: compile OCI and Docker container images into flattened squashfs images."""

__version__ = "0.1.0"
