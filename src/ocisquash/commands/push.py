"""``ocisquash push``: publish a compiled image to the registry as an OCI 1.1 artifact."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..compile import CompiledImage
    from ..digest import Digest
    from ..publish import Published
    from ..sources.options import SourceOptions


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from ._common import add_source_arguments, add_writer_arguments
    from ._verity import add_verity_arguments

    p = sub.add_parser(
        "push",
        help="publish a compiled image to the registry, for other hosts to fetch",
        description=(
            "Compile IMAGE (or take it from the cache) and push the compiled image to "
            "IMAGE's repository, or to REPO, as an OCI 1.1 artifact whose subject is the "
            "image's manifest. Other hosts then fetch it with 'compile --use-published' "
            "instead of compiling. The artifact is listed by the registry's referrers API, "
            "or on registries without it in the index at the tag sha256-<hex>. Blobs the "
            "repository holds are not sent again."
        ),
        epilog=(
            "examples:\n"
            "  ocisquash push registry.example:5000/app:1\n"
            "  ocisquash push registry.example:5000/app:1 --verity --to "
            "registry.example:5000/app-compiled\n"
            "  ocisquash compile registry.example:5000/app:1 --use-published   # elsewhere\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", metavar="IMAGE", help="the image to compile and publish")
    p.add_argument("--to", metavar="REPO",
                   help="the repository to publish to (HOST[:PORT]/NAME); default: IMAGE's")
    p.add_argument("--format", choices=("squashfs", "erofs"), default="squashfs",
                   help="squashfs (default) or EROFS")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    add_source_arguments(p)
    add_writer_arguments(
        p, compression_help="compressor (default: zstd level 5)",
        time_help="image timestamp (default: $SOURCE_DATE_EPOCH, else the image's config date)")
    add_verity_arguments(p)
    p.set_defaults(func=run)


def push_target(image: str, to: str | None, result: CompiledImage) -> tuple[object, list[str]]:
    """The reference of the repository to publish to, and the repositories of the same
    registry its blobs may be mounted from."""
    from ..errors import UsageError
    from ..reference import RegistrySpec, parse_image_spec, parse_reference

    spec = parse_image_spec(image)
    source = spec.reference if isinstance(spec, RegistrySpec) else None
    if to is None:
        if source is None:
            raise UsageError(f"{image} is not in a registry, so it has no repository to "
                             "publish to", hint="name one with --to HOST[:PORT]/NAME")
        return source, []
    target = parse_reference(to.removeprefix("docker://"))
    same = source is not None and source.registry == target.registry \
        and source.repository != target.repository
    return target, [source.repository] if same and source is not None else []


def publish(image: str, to: str | None, result: CompiledImage,
            sopts: SourceOptions) -> Published:
    from ..publish import push_compiled

    target, mount_from = push_target(image, to, result)
    return push_compiled(result, target, sopts, mount_from=mount_from)  # type: ignore[arg-type]


def describe(published: Published, subject: Digest) -> str:
    """One line for stderr."""
    from ..publish import fallback_tag

    where = ("listed by the registry's referrers API" if published.listed == "referrers"
             else f"listed in the index at tag {fallback_tag(subject)}")
    what = (f"{published.sent / 1e6:.1f} MB sent" if published.sent or published.wrote_manifest
            else "nothing new sent")
    return f"published {published.artifact} to {published.repository} ({what}); {where}"


def run(args: argparse.Namespace) -> int:
    from ..compile import DEFAULT_COMPRESSION, DEFAULT_ZSTD_LEVEL, compile_image
    from ._common import (
        close_progress,
        erofs_options_from_args,
        source_options_from_args,
        writer_options_from_args,
    )
    from ._verity import verity_options_from_args

    wopts = erofs_options_from_args(args) if args.format == "erofs" else \
        writer_options_from_args(args, default_compression=DEFAULT_COMPRESSION,
                                 default_level=DEFAULT_ZSTD_LEVEL)
    verity = verity_options_from_args(args)
    sopts = source_options_from_args(args)
    try:
        result = compile_image(args.image, None, platform=args.platform, format=args.format,
                               writer_options=wopts, source_options=sopts,
                               progress=sopts.progress, verity=verity)
        published = publish(args.image, args.to, result, sopts)
    finally:
        close_progress(sopts)
    if args.json:
        from ..jsonout import SCHEMA_VERSION, write

        write({"schema_version": SCHEMA_VERSION, "reference": result.reference,
               "digest": str(result.digest), "source": result.source,
               **published.to_json()}, sys.stdout)
    elif not args.quiet:
        print(describe(published, result.digest), file=sys.stderr)
    return 0
