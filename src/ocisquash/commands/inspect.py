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
            "(entrypoint, cmd, env, working dir, user, labels). Layers are not downloaded."
        ),
        epilog=(
            "examples:\n"
            "  ocisquash inspect alpine:3.20\n"
            "  ocisquash inspect --json oci:./layout:v1 | jq .config.env\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", metavar="IMAGE", help="the image to inspect")
    p.add_argument("--json", action="store_true", help="print JSON on stdout")
    add_source_arguments(p)
    p.set_defaults(func=run)


def describe(image: Any) -> dict[str, Any]:
    """The JSON shape ``inspect --json`` prints for a resolved image of any source."""
    manifest = image.manifest()
    config = image.config()
    c = config.config
    index = getattr(image, "index", None)
    platform = image.platform or config.platform
    return {
        "reference": image.reference,
        "digest": str(image.digest),
        "mediaType": manifest.media_type,
        "platform": str(platform),
        "index": None if index is None else {
            "digest": str(index.digest),
            "mediaType": index.media_type,
            "manifests": [
                {"digest": str(d.digest), "mediaType": d.media_type, "size": d.size,
                 "platform": str(d.platform) if d.platform is not None else None}
                for d in index.manifests
            ],
        },
        "layers": [
            {"digest": str(d.digest), "size": d.size, "mediaType": d.media_type}
            for d in manifest.layers
        ],
        "size": sum(d.size for d in manifest.layers),
        "config": {
            "digest": str(manifest.config.digest),
            "mediaType": manifest.config.media_type,
            "created": config.created or None,
            "entrypoint": list(c.entrypoint) if c.entrypoint is not None else None,
            "cmd": list(c.cmd) if c.cmd is not None else None,
            "env": list(c.env),
            "workingDir": c.working_dir,
            "user": c.user,
            "labels": dict(c.labels),
            "exposedPorts": list(c.exposed_ports),
            "volumes": list(c.volumes),
            "stopSignal": c.stop_signal,
        },
    }


def _text(info: dict[str, Any]) -> str:
    from ..progress import human_size

    cfg = info["config"]
    lines = [
        f"Reference:   {info['reference']}",
        f"Digest:      {info['digest']}",
        f"Media type:  {info['mediaType']}",
        f"Platform:    {info['platform']}",
    ]
    if info["index"] is not None:
        idx = info["index"]
        lines.append(f"Index:       {idx['digest']} ({idx['mediaType']})")
        for m in idx["manifests"]:
            mark = "*" if m["digest"] == info["digest"] else " "
            lines.append(f"  {mark} {m['platform'] or '(no platform)':<16} {m['digest']}")
    lines.append(f"Layers:      {len(info['layers'])}, {human_size(info['size'])}")
    for i, layer in enumerate(info["layers"], 1):
        lines.append(f"  {i:>3}  {layer['digest']}  {human_size(layer['size']):>10}  "
                     f"{layer['mediaType']}")
    lines.append(f"Config:      {cfg['digest']}")
    if cfg["created"]:
        lines.append(f"Created:     {cfg['created']}")
    lines.append(f"Entrypoint:  {json.dumps(cfg['entrypoint'])}")
    lines.append(f"Cmd:         {json.dumps(cfg['cmd'])}")
    lines.append(f"WorkingDir:  {cfg['workingDir'] or '(none)'}")
    lines.append(f"User:        {cfg['user'] or '(none)'}")
    lines.append("Env:" if cfg["env"] else "Env:         (none)")
    lines.extend(f"  {e}" for e in cfg["env"])
    lines.append("Labels:" if cfg["labels"] else "Labels:      (none)")
    lines.extend(f"  {k}={v}" for k, v in cfg["labels"].items())
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..sources.open import open_source
    from ._common import platform_from_args, source_options_from_args

    options = source_options_from_args(args)
    image = open_source(args.image, options=options).resolve(platform_from_args(args))
    info = describe(image)
    if args.json:
        json.dump(info, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(_text(info))
    return 0
