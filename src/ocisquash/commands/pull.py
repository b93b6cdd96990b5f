"""``ocisquash pull IMAGE``: manifest, config and layers into the local blob store."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from ._common import add_source_arguments

    p = sub.add_parser(
        "pull",
        help="download an image's manifest, config and layers into the cache",
        description=(
            "Fetch IMAGE's manifest, config and layers into the blob store, verifying "
            "every blob against its digest. Interrupted downloads resume. For local "
            "sources (oci:, oci-archive:, docker-archive:) the layers are read and "
            "verified in place. Prints NAME@DIGEST of the platform's manifest."
        ),
        epilog=(
            "examples:\n"
            "  ocisquash pull alpine:3.20\n"
            "  ocisquash pull --platform linux/arm64 127.0.0.1:5000/app:1.0\n"
            "  echo \"$TOKEN\" | ocisquash pull --username me --password-stdin ghcr.io/me/app\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", metavar="IMAGE", help="the image to pull")
    p.add_argument("--json", action="store_true",
                   help="print a JSON summary on stdout instead of NAME@DIGEST "
                        "(schema: docs/json.md)")
    add_source_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..sources.open import open_source
    from ..sources.registry import RegistryImage, pull
    from ._common import close_progress, platform_from_args, source_options_from_args

    options = source_options_from_args(args)
    image = open_source(args.image, options=options).resolve(platform_from_args(args))
    try:
        if isinstance(image, RegistryImage):
            pull(image)
        else:
            # Local blobs are already on disk: reading them through runs the digest checks.
            for layer in image.layers():
                with layer.open() as stream:
                    while stream.read(1 << 20):
                        pass
    finally:
        close_progress(options)
    manifest = image.manifest()
    size = sum(d.size for d in manifest.layers) + manifest.config.size
    platform = image.platform or image.config().platform
    pinned = f"{image.reference.split('@')[0]}@{image.digest}"
    if args.json:
        from ..jsonout import SCHEMA_VERSION, layers, runtime_config, write

        write({
            "schema_version": SCHEMA_VERSION,
            "reference": args.image,
            "pinned": pinned,
            "digest": str(image.digest),
            "platform": str(platform),
            "layers": layers(manifest),
            "size": size,
            "config_digest": str(manifest.config.digest),
            "config": runtime_config(image.config()),
        }, sys.stdout)
        return 0
    if not args.quiet:
        from ..terminal import printable

        print(f"pulled {printable(image.reference)} ({printable(platform)}): "
              f"{len(manifest.layers)} layers, {size / 1e6:.1f} MB", file=sys.stderr)
    print(pinned)
    return 0
