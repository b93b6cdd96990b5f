"""An image's config as an OCI runtime-spec ``config.json``, by the image-spec's
conversion rules (``conversion.md``).

What becomes what:

* ``Entrypoint`` + ``Cmd`` → ``process.args`` ("the converter MUST append the value of
  Config.Cmd to the value of Config.Entrypoint");
* ``Env`` → ``process.env`` verbatim, plus ``PATH`` (the default every container engine
  uses) and ``HOME`` (the user's, from ``/etc/passwd``) when the image sets neither: "it
  SHOULD NOT add entries that have variable names present in Config.Env";
* ``WorkingDir`` → ``process.cwd`` (``/`` when unset);
* ``User`` → ``process.user``, resolved as runc's ``libcontainer/user`` does (below);
* ``os``, ``architecture``, ``variant``, ``os.version``, ``os.features``, ``author``,
  ``created``, ``StopSignal`` and ``ExposedPorts`` → the ``org.opencontainers.image.*``
  annotations the spec names; ``Labels`` → annotations, and a label wins over an
  implicit annotation of the same key ("the value specified in Config.Labels MUST take
  precedence");
* ``Volumes`` → ``mounts``: a tmpfs at each, as the spec's optional field asks ("provide
  mounts for these locations such that application data is not written to the
  container's root filesystem"); the root is read-only, so a volume is where the
  workload may write.

The rest is runc's own default (``runc spec``): its mounts, namespaces, masked and
read-only paths, three capabilities, ``noNewPrivileges``, and a device cgroup that
denies all but runc's defaults; ``terminal`` is off, so the bundle runs from scripts
as ``docker run`` without ``-t`` does.

**Where user names come from.** A name in ``User`` is looked up in ``/etc/passwd`` and
``/etc/group`` *of the compiled image*, by :class:`~ocisquash.squashfs.reader.SquashfsReader`
or :class:`~ocisquash.erofs.reader.ErofsReader` reading the finished image, never the
host's files. Reading the image we wrote (rather than catching those files as they
stream into the writer) gives the same answer on a cache hit, where no writer runs,
and for any squashfs or EROFS image a caller names; it sees the
tree after every whiteout, hardlink and symlink is applied, which is what the runtime
will see; and it costs a few metadata blocks, not a copy kept in the cache entry.

User resolution, as runc: ``user[:group]``; a numeric user is always a uid (its
``passwd`` entry, if any, gives the gid and home), a name must be in ``/etc/passwd``; a
numeric group is a gid, a group name must be in ``/etc/group``; without a group the
user's primary gid applies and every group listing the user by name becomes an
additional gid. "If Config.User does not correspond to a user in the container's
context, the converter MUST return an error": :class:`RuntimeConfigError`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import RuntimeConfigError
from .model import ImageConfig

log = logging.getLogger(__name__)

#: runtime-spec version of the config written (runc 1.1 reads 1.0.x).
OCI_VERSION = "1.0.2"
#: The PATH container engines give a Linux container whose image sets none.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: runc's uid and gid range ("Must be inside valid uid range").
MAX_ID = 2**31 - 1
#: The rootfs directory of a bundle, relative to its config.json.
ROOTFS = "rootfs"

#: The annotations conversion.md names for fields without a runtime counterpart.
ANNOTATION_OS = "org.opencontainers.image.os"
ANNOTATION_ARCH = "org.opencontainers.image.architecture"
ANNOTATION_VARIANT = "org.opencontainers.image.variant"
ANNOTATION_OS_VERSION = "org.opencontainers.image.os.version"
ANNOTATION_OS_FEATURES = "org.opencontainers.image.os.features"
ANNOTATION_AUTHOR = "org.opencontainers.image.author"
ANNOTATION_CREATED = "org.opencontainers.image.created"
ANNOTATION_STOP_SIGNAL = "org.opencontainers.image.stopSignal"
ANNOTATION_EXPOSED_PORTS = "org.opencontainers.image.exposedPorts"


@dataclass(frozen=True)
class ExecUser:
    """Who the workload runs as."""

    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()
    #: from ``/etc/passwd``; None when the user has no entry there
    home: str | None = None


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


def _fields(data: bytes) -> Iterable[list[str]]:
    """The colon-separated fields of each line, as runc reads them: blank lines and
    comments skipped, whitespace around a line trimmed."""
    for raw in data.decode("utf-8", "replace").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            yield line.split(":")


def _id(text: str) -> int | None:
    """A decimal id as runc parses it, or None."""
    return int(text) if text.isascii() and text.isdigit() else None


def parse_passwd(data: bytes) -> list[PasswdEntry]:
    """The entries of an ``/etc/passwd`` (``name:password:uid:gid:gecos:home:shell``).
    A field that is missing or not a number reads as empty or 0, as in runc."""
    out = []
    for f in _fields(data):
        f += [""] * (7 - len(f))
        out.append(PasswdEntry(f[0], _id(f[2]) or 0, _id(f[3]) or 0, f[5]))
    return out


def parse_group(data: bytes) -> list[GroupEntry]:
    """The entries of an ``/etc/group`` (``name:password:gid:member,member``)."""
    out = []
    for f in _fields(data):
        f += [""] * (4 - len(f))
        members = tuple(m for m in f[3].split(",") if m)
        out.append(GroupEntry(f[0], _id(f[2]) or 0, members))
    return out


def _in_range(value: int, what: str, spec: str) -> int:
    if value > MAX_ID:
        raise RuntimeConfigError(f"{what} {value} of user {spec!r} is out of range 0..{MAX_ID}")
    return value


def resolve_user(spec: str, passwd: bytes | None, group: bytes | None) -> ExecUser:
    """``Config.User`` as uid, gid, additional gids and home, from the image's
    ``/etc/passwd`` and ``/etc/group`` (None when the image has no such file)."""
    user_arg, _, group_arg = spec.partition(":")
    uid_arg = _id(user_arg)
    users = parse_passwd(passwd) if passwd is not None else []
    if user_arg == "":
        matched = [u for u in users if u.uid == 0]
    elif uid_arg is not None:
        matched = [u for u in users if u.uid == uid_arg]  # a number is always a uid
    else:
        matched = [u for u in users if u.name == user_arg]
    hint = "the image's User must name an entry of the image's own /etc/passwd and /etc/group"
    uid, gid, home, name = 0, 0, None, ""
    if matched:
        # First match wins, as in runc.
        uid, gid, home, name = matched[0].uid, matched[0].gid, matched[0].home, matched[0].name
    elif user_arg:
        if uid_arg is None:
            where = "the image's /etc/passwd" if passwd is not None else \
                "the image, which has no /etc/passwd"
            raise RuntimeConfigError(f"user {user_arg!r} is not in {where}", hint=hint)
        uid = _in_range(uid_arg, "uid", spec)

    additional: tuple[int, ...] = ()
    groups = parse_group(group) if group is not None else []
    if group_arg:
        gid_arg = _id(group_arg)
        found = [g for g in groups if (g.gid == gid_arg if gid_arg is not None
                                       else g.name == group_arg)]
        if found:
            gid = found[0].gid
        elif gid_arg is None:
            where = "the image's /etc/group" if group is not None else \
                "the image, which has no /etc/group"
            raise RuntimeConfigError(f"group {group_arg!r} is not in {where}", hint=hint)
        else:
            gid = _in_range(gid_arg, "gid", spec)
    elif name:
        # Supplementary groups only in the implicit form ("SHOULD NOT modify
        # process.user.additionalGids ... if Config.User specifies a group").
        additional = tuple(g.gid for g in groups if name in g.members)
    return ExecUser(uid, gid, additional, home)


def _env(image_env: Iterable[str], user: ExecUser) -> list[str]:
    env = list(image_env)  # verbatim, as the spec requires
    names = {item.partition("=")[0] for item in env}
    if "PATH" not in names:
        env.insert(0, f"PATH={DEFAULT_PATH}")
    if "HOME" not in names and user.home:
        env.append(f"HOME={user.home}")
    return env


def _annotations(config: ImageConfig) -> dict[str, str]:
    try:
        raw = json.loads(config.raw)
    except ValueError:  # ImageConfig.parse accepted it, so this does not happen
        raw = {}
    if not isinstance(raw, dict):
        raw = {}
    c = config.config
    implicit: dict[str, Any] = {
        ANNOTATION_OS: config.os,
        ANNOTATION_ARCH: config.architecture,
        ANNOTATION_VARIANT: config.variant,
        ANNOTATION_OS_VERSION: raw.get("os.version"),
        ANNOTATION_OS_FEATURES: raw.get("os.features"),
        ANNOTATION_AUTHOR: raw.get("author"),
        ANNOTATION_CREATED: config.created,
        ANNOTATION_STOP_SIGNAL: c.stop_signal,
        # "the list of values that correspond to the keys defined for
        # Config.ExposedPorts (string, comma-separated values)"
        ANNOTATION_EXPOSED_PORTS: ",".join(sorted(c.exposed_ports)),
    }
    out: dict[str, str] = {}
    for key, value in implicit.items():
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        if isinstance(value, str) and value:
            out[key] = value
    out.update(dict(c.labels))  # the labels win
    return dict(sorted(out.items()))


def _default_mounts() -> list[dict[str, Any]]:
    """runc's default mounts (``runc spec``)."""
    return [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620",
                     "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
    ]


#: Mount points the default mounts need in the image: on a read-only root a runtime
#: cannot create them. The others lie on the /dev tmpfs or in sysfs.
REQUIRED_DIRS = ("/proc", "/dev", "/sys")


@dataclass(frozen=True)
class Volume:
    """A tmpfs for one of the image's volumes, owned as its directory in the image is
    (``docker run`` copies a volume's owner and mode from the image the same way), so
    that a volume the image gives its user is writable by that user."""

    path: str
    mode: int = 0o755
    uid: int = 0
    gid: int = 0


def build_runtime_config(config: ImageConfig, user: ExecUser,
                         volumes: Iterable[Volume] = ()) -> dict[str, Any]:
    """The runtime-spec config of ``config`` run as ``user``, with a tmpfs at each of
    ``volumes``."""
    c = config.config
    args = [*(c.entrypoint or ()), *(c.cmd or ())]
    if not args:
        # The runtime-spec requires an argument; "sh" is runc's and umoci's default.
        args = ["sh"]
    caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    process: dict[str, Any] = {
        "terminal": False,
        "user": {"uid": user.uid, "gid": user.gid},
        "args": args,
        "env": _env(c.env, user),
        "cwd": c.working_dir or "/",
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": True,
    }
    if user.additional_gids:
        process["user"]["additionalGids"] = list(user.additional_gids)
    mounts = _default_mounts()
    for v in sorted(volumes, key=lambda v: v.path):
        mounts.append({"destination": v.path, "type": "tmpfs", "source": "tmpfs",
                       "options": ["rw", "nosuid", "nodev", f"mode={v.mode & 0o7777:o}",
                                   f"uid={v.uid}", f"gid={v.gid}"]})
    return {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": ROOTFS, "readonly": True},
        "mounts": mounts,
        "annotations": _annotations(config),
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": t} for t in
                           ("pid", "network", "ipc", "uts", "mount", "cgroup")],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
            ],
        },
    }


def runtime_config(config: ImageConfig, image: str | Path | None) -> dict[str, Any]:
    """The runtime-spec ``config.json`` of ``config`` whose root filesystem is the
    squashfs or EROFS ``image`` (told apart by their magic): user names resolved from
    the image's own ``/etc/passwd`` and ``/etc/group``, a tmpfs on each volume the image
    has a directory for.

    With ``image=None`` (a tar output, say) only a numeric ``User`` can be converted,
    and volumes are mounted unchecked. Raises :class:`RuntimeConfigError` when the user
    or group is not in the image.
    """
    c = config.config
    if image is None:
        if any(_id(part) is None for part in c.user.split(":") if part):
            raise RuntimeConfigError(
                f"user {c.user!r} is a name, and there is no image to look it up in",
                hint="compile to a squashfs or EROFS file (not a tar, not stdout) to write "
                     "a runtime config")
        return build_runtime_config(config, resolve_user(c.user, None, None),
                                    [Volume(v) for v in c.volumes])

    from .erofs.reader import ErofsReader
    from .imagereader import image_format
    from .squashfs.reader import SquashfsReader

    try:
        erofs = image_format(image) == "erofs"
    except OSError:
        erofs = False  # the squashfs reader says why it cannot open it
    reader: ErofsReader | SquashfsReader = ErofsReader(image) if erofs else SquashfsReader(image)
    with reader:
        passwd = reader.read_file("/etc/passwd")
        group = reader.read_file("/etc/group")
        user = resolve_user(c.user, passwd, group)
        volumes = []
        for volume in c.volumes:
            st = reader.stat(volume)
            if st is not None and st.directory:
                volumes.append(Volume(volume, st.mode, st.uid, st.gid))
            else:
                # A runtime cannot create the mount point on a read-only root.
                log.warning("volume %s is not a directory in the image; no tmpfs is "
                            "mounted there", volume)
        for needed in REQUIRED_DIRS:
            if not reader.is_dir(needed):
                log.warning("the image has no %s directory: a runtime cannot mount it on "
                            "the read-only root", needed)
    return build_runtime_config(config, user, volumes)


def write_file(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all, as ``ocisquash.output`` writes
    every output (a random temporary name beside it, renamed)."""
    from .output import write_file as write_output

    write_output(path, data)


def write_bundle(directory: str | Path, runtime: dict[str, Any]) -> Path:
    """Write an OCI runtime bundle: ``DIR/config.json`` and an empty ``DIR/rootfs``
    on which the image is to be mounted. Returns the config's path."""
    from .errors import OutputError

    bundle = Path(directory)
    try:
        (bundle / ROOTFS).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot write the bundle {bundle}: {e.strerror or e}") from e
    path = bundle / "config.json"
    write_file(path, (json.dumps(runtime, indent=2) + "\n").encode())
    return path


__all__ = [
    "DEFAULT_PATH",
    "ExecUser",
    "Volume",
    "build_runtime_config",
    "parse_group",
    "parse_passwd",
    "resolve_user",
    "runtime_config",
    "write_bundle",
    "write_file",
]
