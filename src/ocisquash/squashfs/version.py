"""The writer's format version, in a module of its own so that reading it is cheap.

A cached compile needs this number for its cache key but never writes a squashfs;
``ocisquash.compile`` imports it from here, without the writer, its compression
threads and compressors (see ``tests/compile/test_warm_imports.py``).
"""

#: Bump when the bytes written for the same input and options change (a cache key).
FORMAT_VERSION = "3"
