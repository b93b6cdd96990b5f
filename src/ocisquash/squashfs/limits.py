"""The block sizes squashfs allows, in a module of their own: ``options`` checks them when
a cached compile builds its cache key, which should not import ``format``'s enums and
structures."""

#: a block size is a power of two from 4 KiB to 1 MiB
MIN_BLOCK_SIZE = 4096
MAX_BLOCK_SIZE = 1 << 20
