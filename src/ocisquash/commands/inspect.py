"""``ocisquash inspect IMAGE``: what an image is made of, without downloading its layers."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from ._common import add_source_arguments

    p = sub.add_parser(
        "inspect",
        help="show an image's digest, platforms, layers and config",
        description=(
            "Show IMAGE's manifest digest and media type, the platforms of its index, "
            "its layers (size, media type) and the runtime settings of its config "
            "(entrypoint, cmd, env, working dir, user, labels), and the compiled images "
            "published for it with 'ocisquash push'. Layers are not downloaded."
        ),
        epilog=(
            "examples:\n"
            "  ocisquash inspect alpine:3.20\n"
            "  ocisquash inspect --json oci:./layout:v1 | jq .config.env\n"
            "\nThe JSON schema is described in docs/json.md.\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", metavar="IMAGE", help="the image to inspect")
    p.add_argument("--json", action="store_true", help="print JSON on stdout")
    add_source_arguments(p)
    p.set_defaults(func=run)


def describe(image: Any, reference: str | None = None) -> dict[str, Any]:
    """The JSON document ``inspect --json`` prints for a resolved image of any source
    (docs/json.md); ``reference`` is the one the user typed."""
    from ..jsonout import SCHEMA_VERSION, layers, runtime_config

    manifest = image.manifest()
    config = image.config()
    index = getattr(image, "index", None)
    platform = image.platform or config.platform
    return {
        "schema_version": SCHEMA_VERSION,
        "reference": reference if reference is not None else image.reference,
        "digest": str(image.digest),
        "media_type": manifest.media_type,
        "platform": str(platform),
        "index": None if index is None else {
            "digest": str(index.digest),
            "media_type": index.media_type,
            "manifests": [
                {"digest": str(d.digest), "media_type": d.media_type, "size": d.size,
                 "platform": str(d.platform) if d.platform is not None else None}
                for d in index.manifests
            ],
        },
        "layers": layers(manifest),
        "size": sum(d.size for d in manifest.layers),
        "config_digest": str(manifest.config.digest),
        "config_media_type": manifest.config.media_type,
        "config": runtime_config(config),
        "published": _published(image),
    }


def _published(image: Any) -> list[dict[str, Any]] | None:
    """The compiled images ``ocisquash push`` published for a registry image (None for
    other sources); a registry that cannot list them is a warning, not a failure."""
    import logging

    from ..errors import OcisquashError
    from ..publish import listed

    client = getattr(getattr(image, "source", None), "client", None)
    if client is None:
        return None
    try:
        return listed(client, image.digest)
    except OcisquashError as e:
        logging.getLogger(__name__).warning("cannot list the published compiles: %s", e)
        return []


def _text(info: dict[str, Any]) -> str:
    from ..progress import human_size
    from ..terminal import printable as p

    cfg = info["config"]
    lines = [
        f"Reference:   {p(info['reference'])}",
        f"Digest:      {info['digest']}",
        f"Media type:  {p(info['media_type'])}",
        f"Platform:    {p(info['platform'])}",
    ]
    if info["index"] is not None:
        idx = info["index"]
        lines.append(f"Index:       {idx['digest']} ({p(idx['media_type'])})")
        for m in idx["manifests"]:
            mark = "*" if m["digest"] == info["digest"] else " "
            lines.append(f"  {mark} {p(m['platform'] or '(no platform)'):<16} {m['digest']}")
    lines.append(f"Layers:      {len(info['layers'])}, {human_size(info['size'])}")
    for i, layer in enumerate(info["layers"], 1):
        lines.append(f"  {i:>3}  {layer['digest']}  {human_size(layer['size']):>10}  "
                     f"{p(layer['media_type'])}")
    lines.append(f"Config:      {info['config_digest']}")
    if cfg["created"]:
        lines.append(f"Created:     {cfg['created']}")
    # json.dumps writes control characters as \uNNNN escapes already
    lines.append(f"Entrypoint:  {p(json.dumps(cfg['entrypoint']))}")
    lines.append(f"Cmd:         {p(json.dumps(cfg['cmd']))}")
    lines.append(f"WorkingDir:  {p(cfg['working_dir'] or '(none)')}")
    lines.append(f"User:        {p(cfg['user'] or '(none)')}")
    if cfg["exposed_ports"]:
        lines.append(f"Ports:       {p(' '.join(cfg['exposed_ports']))}")
    if cfg["volumes"]:
        lines.append(f"Volumes:     {p(' '.join(cfg['volumes']))}")
    if cfg["stop_signal"]:
        lines.append(f"StopSignal:  {p(cfg['stop_signal'])}")
    lines.append("Env:" if cfg["env"] else "Env:         (none)")
    lines.extend(f"  {p(e)}" for e in cfg["env"])
    lines.append("Labels:" if cfg["labels"] else "Labels:      (none)")
    lines.extend(f"  {p(k)}={p(v)}" for k, v in cfg["labels"].items())
    if info["published"] is not None:
        lines.append("Published:" if info["published"] else "Published:   (none)")
        for a in info["published"]:
            root = f", root hash {p(a['root_hash'])}" if a["root_hash"] else ""
            lines.append(f"  {a['artifact']}  {p(str(a['format']))} (format "
                         f"{p(str(a['format_version']))}, options "
                         f"{p(str(a['options_key'])[:12])}{root})")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..sources.open import open_source
    from ._common import platform_from_args, source_options_from_args

    options = source_options_from_args(args)
    image = open_source(args.image, options=options).resolve(platform_from_args(args))
    info = describe(image, args.image)
    if args.json:
        from ..jsonout import write

        write(info, sys.stdout)
    else:
        print(_text(info))
    return 0
