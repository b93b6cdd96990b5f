"""The ``--verity`` options ``compile`` and ``pack`` share."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..verity import VerityInfo, VerityOptions


def add_verity_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--verity``, ``--verity=append``, ``--verity-salt``, ``--verity-sign``,
    ``--verity-cert``."""
    g = parser.add_argument_group(
        "dm-verity",
        "The image is padded to a whole number of 4096-byte blocks and hashed into a "
        "dm-verity tree (format 1, sha256, 4096-byte blocks), as 'veritysetup format' "
        "would. The salt and UUID are derived from the image and the output options, so "
        "the same image and options give the same root hash on every host.")
    g.add_argument("--verity", dest="verity", action="store_const", const="sidecar",
                   help="write OUT.verity (the hash tree) and OUT.roothash beside OUT "
                        "(a name ending in .raw loses it first, as systemd looks for them)")
    g.add_argument("--verity=append", dest="verity", action="store_const", const="append",
                   help="append the hash tree to OUT itself (at the offset printed, for "
                        "'veritysetup --hash-offset') and write OUT.roothash")
    g.add_argument("--verity-salt", metavar="HEX",
                   help="the salt to use instead of the derived one")
    g.add_argument("--verity-sign", metavar="KEY.pem", type=Path,
                   help="sign the root hash into OUT.roothash.p7s (PKCS#7, DER) with this "
                        "private key (RSA or EC, unencrypted)")
    g.add_argument("--verity-cert", metavar="CERT.pem", type=Path,
                   help="the certificate of the --verity-sign key")


def verity_options_from_args(args: argparse.Namespace) -> VerityOptions | None:
    """The ``VerityOptions`` asked for, or None without ``--verity``."""
    from ..errors import UsageError

    if args.verity is None:
        for flag, value in (("--verity-salt", args.verity_salt),
                            ("--verity-sign", args.verity_sign),
                            ("--verity-cert", args.verity_cert)):
            if value is not None:
                raise UsageError(f"{flag} needs --verity")
        return None
    # Imported only here: a compile without --verity does not load the module.
    from ..verity import VerityOptions, parse_salt

    options = VerityOptions(
        mode=args.verity,
        salt=parse_salt(args.verity_salt) if args.verity_salt is not None else None,
        sign_key=args.verity_sign,
        sign_cert=args.verity_cert,
    )
    options.check()
    return options


def describe(info: VerityInfo) -> str:
    """One line about the hash tree written."""
    where = (f"appended at byte {info.hash_offset} (veritysetup --hash-offset={info.hash_offset})"
             if info.hash_offset is not None else f"in {info.hash_file}")
    signed = ", root hash signed" if info.signed else ""
    return (f"dm-verity: root hash {info.root_hash}, {info.data_blocks} data blocks, "
            f"hash tree {where}{signed}")
