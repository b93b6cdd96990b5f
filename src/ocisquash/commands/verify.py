"""``ocisquash verify OUT``: check an image against its dm-verity hash tree in user space."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="check an image against its dm-verity hash tree",
        description=(
            "Check every block of OUT against its dm-verity hash tree (OUT.verity, else the "
            "tree appended to OUT) and the root hash (OUT.roothash, or --root-hash), as "
            "'veritysetup verify' does, without device-mapper. On failure, name the first "
            "block that does not match and its byte offset."
        ),
    )
    parser.add_argument("image", metavar="OUT", type=Path, help="the image to check")
    parser.add_argument("--root-hash", metavar="HEX",
                        help="the root hash to check against (default: OUT.roothash)")
    parser.add_argument("--cert", metavar="CERT.pem", type=Path,
                        help="also check that OUT.roothash.p7s signs the root hash with "
                             "this certificate's key")
    parser.add_argument("--hash-offset", metavar="BYTES", type=int,
                        help="byte offset of a hash tree appended to OUT (default: "
                             "OUT.verity if it exists, else found after the squashfs or EROFS data)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--quiet", "-q", action="store_true", help="print nothing on success")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..verity import verify_image

    result = verify_image(args.image, root_hash=args.root_hash, hash_offset=args.hash_offset,
                          cert=args.cert)
    where = (f"the hash tree at byte {result.hash_offset}" if result.hash_offset is not None
             else str(result.hash_file))
    if args.json:
        json.dump({
            "image": str(result.image),
            "root_hash": result.root_hash,
            "data_blocks": result.data_blocks,
            "hash_offset": result.hash_offset,
            "hash_file": str(result.hash_file) if result.hash_file else None,
            "signature_checked": result.signature_checked,
        }, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif not args.quiet:
        signed = ", signature good" if result.signature_checked else ""
        print(f"{result.image}: {result.data_blocks} blocks match {where}, "
              f"root hash {result.root_hash}{signed}")
    return 0
