"""``ocisquash cache``: list, remove, prune and verify compiled images and blobs."""

from __future__ import annotations

import argparse
import re
import sys
import time


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("cache", help="list, remove, prune or verify the cache",
                       description="Manage the cache of compiled images and verified blobs.")
    p.add_argument("--cache-dir", metavar="DIR", help="cache directory (default $XDG_CACHE_HOME/ocisquash)")
    csub = p.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    ls = csub.add_parser("ls", help="list compiled images")
    ls.add_argument("--json", action="store_true", help="print JSON (schema: docs/json.md)")
    rm = csub.add_parser("rm", help="remove compiled images by reference or digest")
    rm.add_argument("targets", nargs="+", metavar="IMAGE|DIGEST")
    pr = csub.add_parser("prune", help="remove old or excess entries")
    pr.add_argument("--max-size", metavar="SIZE", help="keep the newest entries within SIZE (e.g. 10G)")
    pr.add_argument("--older-than", metavar="AGE", help="remove entries older than AGE (e.g. 7d, 12h)")
    pr.add_argument("--blobs", action="store_true", help="also remove blobs no compiled image uses")
    ve = csub.add_parser("verify", help="re-hash every blob and compiled image")
    ve.add_argument("--repair", action="store_true",
                    help="remove what is damaged; record the images of a copied cache "
                         "(another inode) that still match their records")
    p.set_defaults(func=run)


def parse_age(text: str) -> float:
    from ..errors import UsageError

    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw]?)", text.strip())
    if not m:
        raise UsageError(f"invalid age {text!r}", hint="use a number with s, m, h, d or w")
    mult = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
    return float(m.group(1)) * mult


def run(args: argparse.Namespace) -> int:
    from ..cache import ImageCache
    from ..terminal import printable
    from ._common import parse_size

    cache = ImageCache(args.cache_dir)
    cmd = args.cache_command
    if cmd == "ls":
        entries, unchecked = cache.listing()
        if unchecked:
            print(f"ocisquash: {unchecked} compiled image(s) not listed: copied or moved here "
                  "(their files are not the ones their records name); a compile that uses "
                  "one checks it then\nhint: 'ocisquash cache verify --repair' checks them "
                  "all now", file=sys.stderr)
        if args.json:
            from ..jsonout import cache_entries, write

            write(cache_entries(entries), sys.stdout)
        else:
            for e in entries:
                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.created))
                r = e.record
                print(f"{e.key[:12]}  {printable(str(r.digest))[:19]}  "
                      f"{e.size / 1e6:9.1f} MB  {when}  {printable(r.format):8}  "
                      f"{printable(r.platform)}  {printable(r.reference)}")
        return 0
    if cmd == "rm":
        status = 0
        for t in args.targets:
            matched = cache.matching(t)
            if not matched:
                print(f"ocisquash: no cached image matches {printable(t)}", file=sys.stderr)
                status = 1
            for e in matched:
                cache.remove(e.key)
                print(f"removed {e.key[:12]} {printable(e.record.reference)}")
        return status
    if cmd == "prune":
        pruned = cache.prune(
            older_than=parse_age(args.older_than) if args.older_than else None,
            max_size=parse_size(args.max_size) if args.max_size else None,
            blobs=args.blobs)
        print(f"pruned {pruned.images} compiled image(s), {pruned.blobs} blob(s), "
              f"{pruned.temporary} leftover temporary file(s)")
        return 0
    if cmd == "verify":
        problems = cache.verify(repair=args.repair)
        for line in problems:
            print(f"ocisquash: {printable(line)}" + (" (removed)" if args.repair else ""),
                  file=sys.stderr)
        n_blobs = sum(1 for _ in cache.blobs.iter_blobs())
        print(f"verified {n_blobs} blob(s) and {len(cache.entries())} compiled image(s): "
              f"{len(problems)} problem(s)")
        return 1 if problems and not args.repair else 0
    return 2
