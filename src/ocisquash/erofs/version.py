"""The EROFS writer's format version, in a module of its own so that reading it is cheap
(a cached compile needs it for its cache key but never writes an image)."""

#: Bump when the bytes written for the same input and options change (a cache key).
FORMAT_VERSION = "erofs-15"
