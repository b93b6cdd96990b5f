"""Merge an image's layers into one tree by the OCI image-spec rules, streaming, top-down.

No root filesystem is built on disk. Layers are read from the top (last) to the
bottom, each once, and an in-memory map remembers which paths the layers above have
decided. An entry of a lower layer reaches the sink only if it survives:

* no upper layer has whited it out (``.wh.NAME``), nor one of its ancestors;
* no strict ancestor is opaque in an upper layer (``.wh..wh..opq`` hides the *lower*
  layers' children of its directory; a layer's own children stay, whatever their
  order in its tar — so markers are held until the end of their layer, and applied
  only to the layers below);
* no strict ancestor was decided as a non-directory by an upper layer;
* the path itself was not decided by an upper layer — except a directory over a
  directory, which merges: the upper directory's metadata wins, but a directory the
  upper layers only created implicitly (as the parent of something) takes the
  metadata of the first lower layer that lists it, as overlayfs and umoci do.

A layer that puts a non-directory where an upper layer has a directory loses that
entry, but still removes everything below it from the layers further down (the
upper directory is treated as opaque from there on). Directories a layer creates
only as parents of its entries exist even when those entries are hidden.

Within one layer the last entry for a path wins (the sink replaces it); a directory
made after a non-directory of the same name starts empty. Whiteout entries never
reach the sink. Only surviving files' data goes to the sink; hidden files are
skipped in the decompressed stream (those of at most ``SMALL_FILE`` bytes, which the
layer reader hands over whole, are dropped).

These rules are checked against ``umoci unpack`` by a table of named cases and by
random layer stacks (tests/flatten/test_differential.py).

Hard links point at an earlier entry of the same layer, by name. When the target's
name is hidden by an upper layer but a link survives, the target's data was skipped;
the flattener then reads that one layer a second time (rare) and adds the data under
the first surviving name, the other names as hard links to it.

Symlinks are stored, never followed. A path is always taken literally, so nothing
can be written outside the image:

* an entry beneath a non-directory that the *same* layer created before it (``etc ->
  /`` then ``etc/passwd``) is refused with ``UnsafeLayerError``: extracting such a tar
  would write through the symlink, and real layers never contain this;
* an entry beneath a path that a *lower* layer holds as a symlink stays where its
  path says, and the directory wins over the lower symlink (Docker and umoci would
  write through the symlink, into its target). This is recorded in the report's
  fidelity issues as ``symlink-replaced-by-directory``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Literal, Protocol

from .entry import EntryMeta
from .errors import ErofsError, LayerError, LimitExceededError, SquashfsError, UnsafeLayerError
from .layers import Member, TarEntry, TarStream, layer_context, read_layer
from .rules import DEFAULT_LIMITS, Fidelity, FidelityIssue, Limits, check_layer_count
from .sources.base import Layer

#: metadata of a directory that exists only because a layer needs it as a parent
#: (the squashfs writer's and TarSink's default too)
IMPLICIT_DIR_META = EntryMeta(mode=0o755)
#: files of at most this many bytes reach the sink as ``bytes``, not as a stream: most
#: files are small, and the stream object and its reads cost more than the copy
#: (figures: ``bench/README.md``)
SMALL_FILE = 64 << 10
WHITEOUT_PREFIX = b".wh."
OPAQUE_MARKER = b".wh..wh..opq"
#: entries the first pass gathers for a layer's index before handing them over
GATHERED = 4096


class TreeSink(Protocol):
    """Where the flattened tree goes; ``SquashfsWriter`` and ``TarSink`` implement it.

    Paths are bytes relative to the root (the root is ``b""``). Missing parents are
    created implicitly with default metadata; ``add_directory`` on an existing
    directory updates its metadata and keeps its children; adding any other existing
    path replaces what was there.
    """

    def add_directory(self, path: bytes, meta: EntryMeta) -> None: ...

    def add_file(self, path: bytes, meta: EntryMeta, data: BinaryIO | bytes,
                 size: int | None = None) -> None: ...

    def add_symlink(self, path: bytes, meta: EntryMeta, target: bytes) -> None: ...

    def add_device(self, path: bytes, meta: EntryMeta, kind: Literal["char", "block"],
                   major: int, minor: int) -> None: ...

    def add_fifo(self, path: bytes, meta: EntryMeta) -> None: ...

    def add_socket(self, path: bytes, meta: EntryMeta) -> None: ...

    def add_hardlink(self, path: bytes, target: bytes) -> None:
        """Make ``path`` another name of the already added non-directory ``target``."""
        ...

    def exists(self, path: bytes) -> bool: ...


class LayerReplay(Protocol):
    """A layer's members given again without reading the layer (see ``LayerIndexes``)."""

    def members(self, fidelity: Fidelity | None) -> Iterator[Member]:
        """``(entry, data)`` as ``read_layer`` yields them; ``fidelity`` gets the notes
        the layer's reader made (None: a second pass, which notes nothing)."""
        ...


class LayerIndexes(Protocol):
    """What a compile knows of layers applied before, and learns of these ones: a layer
    may be *replayed* instead of read (its entries, and data the sink already holds
    elsewhere), and each layer applied is *recorded* (``squashfs/layerindex.py``)."""

    def replay(self, layer: Layer, hidden: Callable[[bytes], bool]) -> LayerReplay | None:
        """The replay of ``layer``, or None to read it. ``hidden(path)`` says whether the
        layer's pass leaves the data of a file at ``path`` unread: a whiteout marker, or
        a non-directory the layers above hide, as far as they show before the layer is
        read (a replay may hold no data for a file that was hidden before)."""
        ...

    def start(self, layer: Layer, fidelity: Fidelity) -> Fidelity:
        """The first pass of ``layer`` begins; returns the record its reader notes into."""
        ...

    def reading(self, stream: TarStream) -> None:
        """The first pass reads the layer from ``stream`` (not called when it is
        replayed)."""
        ...

    def gather(self) -> list[TarEntry] | None:
        """The list the first pass appends every entry it reads to, in order (None: the
        layer's entries are not wanted); handed over by :meth:`gathered`."""
        ...

    def gathered(self) -> bool:
        """Take the entries in :meth:`gather`'s list (which it empties); False: no more
        are wanted (the layer is not recorded after all)."""
        ...

    def written(self, position: int) -> None:
        """The sink's last ``add_file`` held the data of the member at ``position``."""
        ...

    def end(self) -> None:
        """The first pass is over."""
        ...

    def stop(self) -> None:
        """Every pass of the layer is over."""
        ...


@dataclass(frozen=True, slots=True)
class FlattenReport:
    """What :func:`flatten` did."""

    layers: int
    #: tar entries read (first pass), whiteouts included
    entries: int
    #: regular files whose data went to the sink
    files: int
    #: bytes of file data that went to the sink
    bytes: int
    #: entries skipped because an upper layer hides them
    hidden: int
    #: whiteout and opaque markers read
    whiteouts: int
    #: layers read a second time to fetch hidden hard-link targets
    second_passes: int
    fidelity: tuple[FidelityIssue, ...] = ()
    #: layers replayed from a layer index instead of read
    replayed: int = 0


@dataclass(frozen=True, slots=True)
class FlattenProgress:
    """A progress event: ``phase`` is ``start``, ``done`` or ``second-pass`` of a layer."""

    phase: str
    #: 1-based, counted from the top layer down (the order they are read in)
    layer: int
    layers: int
    digest: str
    entries: int
    bytes: int


# Kinds of decided paths.
_DIR, _NONDIR, _WHITEOUT, _NONE = 0, 1, 2, 3


class _Decided:
    """What the layers read so far say about one path.

    ``layer`` is the index (bottom = 0) of the layer that decided it; ``_NONE`` means
    only a marker touched the path (an opaque directory the layer did not list).
    ``opaque``: lower layers' descendants are hidden. ``implicit``: a directory that
    exists only as a parent, whose metadata a lower layer may still supply.
    """

    __slots__ = ("implicit", "kind", "layer", "meta_layer", "opaque", "under")

    def __init__(self, kind: int, layer: int, implicit: bool = False,
                 meta_layer: int = -1) -> None:
        self.kind = kind
        self.layer = layer
        self.implicit = implicit
        self.opaque = False
        #: the layer whose entry gave a directory its metadata (-1: none yet)
        self.meta_layer = meta_layer
        #: the lowest layer that decided a path beneath this one (-1: none yet)
        self.under = -1


class _SharedNondir(_Decided):
    """The state of every non-directory one layer emitted, shared by all of them (one
    per layer): most entries of an image are such, and an object each cost 80 bytes per
    entry. Never changed in place: ``_LayerPass._own`` gives a path its own copy first."""

    __slots__ = ()


class _Inode:
    """A non-directory of the layer being read, as hard links see it.

    Names are appended to ``written`` and ``deferred`` and never removed: a name
    replaced later is skipped where the lists are read (``_LayerPass._holder``),
    because removing it from a long list on every replacement was quadratic."""

    __slots__ = ("deferred", "entry", "head", "written")

    def __init__(self, entry: TarEntry, written: list[bytes]) -> None:
        self.entry = entry
        #: sink paths that held this inode when they were written, in order
        self.written = written
        #: ``written[head]`` is the first that may still hold it
        self.head = 0
        #: link names that waited for the second pass (target data was skipped); None
        #: until there is one, as one such object exists per file of the layer
        self.deferred: list[bytes] | None = None


#: the metadata of a file inode known by name only; never written (see _inode_at)
_UNREAD_META = EntryMeta()
#: What ``_LayerPass._named`` gives for a file emitted under that one name, which
#: ``names`` does not hold (a name per file cost a million small files 95 MB)
_BARE_FILE = -1


def _parent(path: bytes) -> bytes:
    i = path.rfind(b"/")
    return path[:i] if i >= 0 else b""


def _show(path: bytes) -> str:
    return "/" + path.decode("utf-8", "backslashreplace")


def flatten(
    layers: Sequence[Layer],
    sink: TreeSink,
    *,
    limits: Limits = DEFAULT_LIMITS,
    progress: Callable[[FlattenProgress], None] | None = None,
    indexes: LayerIndexes | None = None,
) -> FlattenReport:
    """Apply ``layers`` (bottom first, as a manifest lists them) into ``sink``.

    ``indexes`` replays layers known from earlier compiles instead of reading them,
    and records the layers applied.

    Each layer is read, decompressed and verified once (twice for the rare layer
    whose hidden hard-link targets are needed). Raises ``LayerError`` (or its
    ``UnsafeLayerError``) for invalid or hostile layers, ``IntegrityError`` when a blob
    does not match its digests, ``LimitExceededError`` when a ``limits`` bound is hit.
    """
    return _Flattener(layers, sink, limits, progress, indexes).run()


class _Flattener:
    def __init__(self, layers: Sequence[Layer], sink: TreeSink, limits: Limits,
                 progress: Callable[[FlattenProgress], None] | None,
                 indexes: LayerIndexes | None = None) -> None:
        check_layer_count(len(layers), limits=limits)
        self.indexes = indexes
        self.replayed = 0
        self.layers = layers
        self.sink = sink
        self.limits = limits
        self.progress = progress
        self.fidelity = Fidelity()
        self.decided: dict[bytes, _Decided] = {b"": _Decided(_DIR, len(layers), implicit=True)}
        self.entries = self.files = self.bytes = self.hidden = self.whiteouts = 0
        self.second_passes = 0

    def run(self) -> FlattenReport:
        n = len(self.layers)
        for position, layer_index in enumerate(reversed(range(n))):
            layer = self.layers[layer_index]
            self._event("start", position, layer)
            _LayerPass(self, layer, layer_index).run()
            self._event("done", position, layer)
        return FlattenReport(n, self.entries, self.files, self.bytes, self.hidden,
                             self.whiteouts, self.second_passes, self.fidelity.issues(),
                             self.replayed)

    def _event(self, phase: str, position: int, layer: Layer) -> None:
        if self.progress is not None:
            self.progress(FlattenProgress(phase, position + 1, len(self.layers),
                                          str(layer.descriptor.digest), self.entries, self.bytes))


class _LayerPass:
    """Reads one layer against the decisions of the layers above it."""

    def __init__(self, f: _Flattener, layer: Layer, index: int) -> None:
        self.f = f
        self.sink = f.sink
        self.decided = f.decided
        self.layer = layer
        self.index = index
        self.context = layer_context(layer, index)
        self.whiteouts: list[bytes] = []
        self.opaques: list[bytes] = []
        #: this layer's non-directories by name, as tar extraction would see them; a
        #: name emitted and not linked to yet holds only what a link may need of its
        #: entry (an inode written under that one name: the entry), made an _Inode
        #: when a link finds it (see _inode_at). A file emitted under that one name is
        #: not here: the decisions and the sink tell it (see _named).
        self.names: dict[bytes, _Inode | TarEntry | int] = {}
        #: the decision of every non-directory this layer emits (see _SharedNondir)
        self.nondir = _SharedNondir(_NONDIR, index, meta_layer=index)
        #: link names waiting for the second pass → their inode
        self.deferred: dict[bytes, _Inode] = {}
        #: the names above, by directory (kept only once ``_forget_below`` needs it)
        self.kids: dict[bytes, set[bytes]] | None = None
        #: a directory whose ancestors (and itself) were all found decided, passable
        #: directories: its children need no walk up the tree. Entries directly under
        #: it cannot change that chain (see _entry), and any other parent replaces it.
        self.clear_parent: bytes | None = None
        #: the layer's replay, when it is replayed instead of read
        self.replay: LayerReplay | None = None

    # -- the first pass -----------------------------------------------------------

    def run(self) -> None:
        f = self.f
        limit = f.limits.max_entries
        indexes = f.indexes
        try:
            if indexes is None:
                members = read_layer(self.layer, limits=f.limits, fidelity=f.fidelity,
                                     index=self.index, small_files=SMALL_FILE)
            else:
                self.replay = indexes.replay(self.layer, self._hidden_above)
                fidelity = indexes.start(self.layer, f.fidelity)
                if self.replay is not None:
                    f.replayed += 1
                    members = self.replay.members(fidelity)
                else:
                    members = read_layer(self.layer, limits=f.limits, fidelity=fidelity,
                                         index=self.index, small_files=SMALL_FILE,
                                         progress=indexes.reading)
            # The first pass's entries, for the layer's index (None: not gathered).
            gather = indexes.gather() if indexes is not None else None
            # Where the files go, for the layer's index (None: not recorded, or no longer).
            written = indexes.written if indexes is not None else None
            decided, names, sink = self.decided, self.names, self.sink
            for entry, data in members:
                f.entries += 1
                if f.entries > limit:
                    raise LimitExceededError(f"more than {limit} entries in the image",
                                             context=self.context)
                if gather is not None:
                    gather.append(entry)
                    if len(gather) >= GATHERED and not indexes.gathered():  # type: ignore[union-attr]
                        gather = written = None
                path = entry.path
                i = path.rfind(b"/")
                parent = path[:i] if i >= 0 else b""
                if (entry.kind != "file" or not path or path[i + 1:i + 5] == WHITEOUT_PREFIX
                        or parent != self.clear_parent or path in decided) \
                        and self._entry(entry, data):
                    continue
                # A file no layer above decided, under decided parents (most entries):
                # what _emit, _write, _bind and _touch do for it, written out here, not in
                # a method (the main thread's time per entry bounds an image of many
                # small files: bench/README.md).
                assert data is not None
                if names:
                    names.pop(path, None)
                if self.deferred:
                    self.deferred.pop(path, None)
                size = entry.size
                sink.add_file(path, entry.meta, data, size)
                if written is not None:
                    written(entry.position)
                f.files += 1
                f.bytes += size
                if self.index:
                    decided[path] = self.nondir
                above = decided.get(parent)
                if above is None or above.under != self.index:
                    self._touch(path)
            if indexes is not None:
                indexes.end()
            self._second_pass()
            if indexes is not None:
                indexes.stop()
        except (SquashfsError, ErofsError) as e:
            # The writer names the path; which layer holds it is the reader's to say.
            raise e.with_context(self.context) from None
        self._apply_markers()

    def _read_again(self) -> Iterator[Member]:
        """The layer's members once more (no fidelity notes: the first pass made them)."""
        if self.replay is not None:
            return self.replay.members(None)
        f = self.f
        return read_layer(self.layer, limits=f.limits, index=self.index,
                          small_files=SMALL_FILE)

    def _hidden_above(self, path: bytes) -> bool:
        """Whether this layer's pass leaves the data of a file at ``path`` unread (see
        ``LayerIndexes.replay``): a whiteout or opaque marker (never read, whatever the
        layers above decided), or a non-directory the layers above hide before this
        layer's pass, by a decision of the path itself (anything but a bare opaque
        marker) or of an ancestor (``_visible``). Nothing this layer does can make
        visible what they hide."""
        if path[path.rfind(b"/") + 1:].startswith(WHITEOUT_PREFIX):
            return True
        node = self.decided.get(path)
        if node is not None and node.layer > self.index and node.kind != _NONE:
            return True
        try:
            return self._visible(path) is None
        except UnsafeLayerError:
            return False

    def _entry(self, e: TarEntry, data: BinaryIO | bytes | None) -> bool:
        """Apply one entry; False leaves it to the caller: a file no layer above decided,
        whose parents are decided (``clear_parent`` is then its parent)."""
        path = e.path
        base = path[path.rfind(b"/") + 1:]
        if base.startswith(WHITEOUT_PREFIX):
            self._marker(path, base)
            return True
        if not path and e.kind != "dir":
            raise UnsafeLayerError(f"the layer replaces the root directory with a {e.kind}",
                                   context=self.context)
        parent = path[:len(path) - len(base) - 1] if len(base) < len(path) else b""
        missing: list[bytes] | None
        if parent == self.clear_parent and path:
            # An entry directly under the cached parent touches only its own node,
            # whiteout lists applied after the layer, and its own subtree: the chain
            # above stays decided and passable.
            missing = []
        else:
            missing = self._visible(path)
            self.clear_parent = parent if missing == [] and path else None
        if missing is None:
            self._keep_parents(path)
            self.f.hidden += 1
            self._shadow(e)
            return True
        node = self.decided.get(path)
        if node is None and e.kind == "file" and not missing:
            return False  # the first pass's loop adds it (see run)
        if node is None:
            self._emit(e, data)
            if e.kind == "dir":
                self.decided[path] = _Decided(_DIR, self.index, meta_layer=self.index)
            elif self.index:
                self.decided[path] = self.nondir
            # The bottom layer's non-directories hide nothing below it, so they are not
            # decided: ``names`` knows them for this layer (see _visible), and a later
            # entry of the same path finds none and replaces it in the sink.
            self._touch(path)
        elif node.layer > self.index:  # decided by an upper layer
            if node.kind == _DIR and e.kind == "dir":
                if node.implicit or node.meta_layer == self.index:
                    # An upper layer only needed the directory; its metadata comes from
                    # the first layer below that lists it (its last entry, if several).
                    self.sink.add_directory(path, e.meta)
                    node.implicit, node.meta_layer = False, self.index
            elif node.kind == _NONE:
                self._emit(e, data)
                node.kind, node.layer = (_DIR if e.kind == "dir" else _NONDIR), self.index
                node.meta_layer = self.index
                self._touch(path)
            else:
                self._create_parents(missing)
                if node.kind == _DIR and e.kind != "dir":
                    # This layer puts a non-directory where an upper layer has a
                    # directory: the directory wins, but nothing from below this
                    # layer's entry survives under it.
                    if node.implicit and e.kind == "symlink":
                        self.f.fidelity.note("symlink-replaced-by-directory", path)
                    self.whiteouts.append(path)
                    self._note_clobbered_own_entries(path)
                self.f.hidden += 1
                self._shadow(e)
                return True
        else:  # the same layer lists the path again: the last entry wins
            if node.kind == _DIR and e.kind == "dir":
                self.sink.add_directory(path, e.meta)
                node.implicit = False
            else:
                if node.kind == _DIR:
                    self._forget_below(path)
                elif e.kind == "dir":
                    # The layer replaced what was below with a non-directory first: the
                    # directory it makes now starts empty, like an opaque one.
                    self.opaques.append(path)
                self._emit(e, data)
                node = self._own(path, node)
                node.kind, node.implicit = (_DIR if e.kind == "dir" else _NONDIR), False
        for parent in missing:
            self.decided[parent] = _Decided(_DIR, self.index, implicit=True)
        if missing:
            self._touch(missing[-1])
        return True

    def _own(self, path: bytes, node: _Decided) -> _Decided:
        """``path``'s decision, made its own object when it was the shared one."""
        if type(node) is _SharedNondir:
            node = self.decided[path] = _Decided(node.kind, node.layer,
                                                 meta_layer=node.meta_layer)
        return node

    def _keep_parents(self, path: bytes) -> None:
        """``path`` is hidden by an ancestor's decision; the directories above it that
        this layer creates (as its parents) and nothing hides still exist."""
        if self.decided[b""].opaque:
            return  # an upper layer's opaque marker at its root: nothing below survives
        parts = path.split(b"/")[:-1]
        missing: list[bytes] = []
        for i in range(1, len(parts) + 1):
            p = b"/".join(parts[:i])
            node = self.decided.get(p)
            if node is None:
                missing.append(p)
                continue
            if node.kind == _NONE:  # an upper opaque marker: the directory exists, empty
                missing.append(p)
                break
            if node.kind != _DIR or node.opaque:
                break
        self._create_parents(missing[::-1])

    def _create_parents(self, missing: list[bytes]) -> None:
        """Make the directories ``missing`` (deepest first) exist, with default
        metadata a lower layer may still replace."""
        if not missing:
            return
        self.sink.add_directory(missing[0], IMPLICIT_DIR_META)
        for p in missing:
            node = self.decided.get(p)
            if node is None:
                self.decided[p] = _Decided(_DIR, self.index, implicit=True)
            else:
                node.kind, node.layer, node.implicit = _DIR, self.index, True
        self._touch(missing[-1])

    def _note_clobbered_own_entries(self, path: bytes) -> None:
        """This layer replaced its own directory ``path`` by a non-directory, but an
        upper layer's directory stands there: the entries this layer already put
        beneath it stay (the sink cannot take them back), where extracting the layers
        in order would have dropped them. Layers never do this (the spec forbids
        duplicate names), so it is recorded rather than handled."""
        if self.decided[path].under == self.index:
            self.f.fidelity.note("same-layer-replacement-ignored", path)

    def _touch(self, path: bytes) -> None:
        """This layer decided ``path``: mark its ancestors (``_Decided.under``). A walk
        stops at an ancestor marked already, whose own ancestors are then marked too, so
        each node is marked once per layer. Ancestors not decided yet are this layer's
        parents about to be made, which it marks itself."""
        index, decided = self.index, self.decided
        while path:
            path = _parent(path)
            node = decided.get(path)
            if node is None:
                continue
            if node.under == index:
                return
            node.under = index

    def _visible(self, path: bytes) -> list[bytes] | None:
        """``None`` when an upper layer hides ``path`` through an ancestor; else the
        ancestors not decided yet (they become implicit directories)."""
        missing: list[bytes] = []
        own: bytes | None = None
        p = path
        while p:
            p = _parent(p)
            node = self.decided.get(p)
            if node is None:
                if own is None and self._named(p) is not None:
                    # This layer's non-directory not decided (the bottom layer's), or one
                    # it hid: an ancestor above then hides it, and ``path`` with it.
                    own = p
                elif own is None:
                    missing.append(p)
                continue
            if node.opaque or node.kind == _WHITEOUT:
                return None
            if node.kind == _NONDIR:
                if node.layer > self.index:
                    return None
                own = own or p
                break
        if own is not None:
            raise UnsafeLayerError(
                f"entry {_show(path)} lies beneath {_show(own)}, which this layer made a "
                "non-directory (a symlink?) before it",
                context=self.context,
                hint="extracting the layer would write through that entry; ocisquash "
                     "refuses such layers",
            )
        return missing

    def _marker(self, path: bytes, base: bytes) -> None:
        self.f.whiteouts += 1
        parent = _parent(path)
        if base == OPAQUE_MARKER:
            target, into = parent, self.opaques
        elif base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # other AUFS metadata (.wh..wh.plnk, …): not part of the tree
        else:
            name = base[len(WHITEOUT_PREFIX):]
            if name in (b"", b".", b".."):
                raise UnsafeLayerError(f"whiteout {_show(path)} names no file",
                                       context=self.context)
            target, into = (parent + b"/" + name if parent else name), self.whiteouts
        try:
            visible = self._visible(target) is not None
        except UnsafeLayerError:
            visible = False  # beneath this layer's own non-directory: nothing below to hide
        if visible:
            into.append(target)

    def _apply_markers(self) -> None:
        """Whiteouts and opaque markers act on the layers below only, so they take
        effect once their own layer is done."""
        for path in self.whiteouts:
            node = self.decided.get(path)
            if node is None:
                self.decided[path] = _Decided(_WHITEOUT, self.index)
            elif node.kind == _NONE:
                node.kind = _WHITEOUT
            elif node.kind == _DIR:
                # The lower directory is gone; what stays is this or an upper layer's,
                # with nothing from below.
                node.opaque = True
                node.implicit = False
        for path in self.opaques:
            node = self.decided.get(path)
            if node is None:
                node = self.decided[path] = _Decided(_NONE, self.index)
            node = self._own(path, node)
            node.opaque = True

    # -- writing entries and hard links -------------------------------------------

    def _emit(self, e: TarEntry, data: BinaryIO | bytes | None) -> None:
        path = e.path
        self._release(path)
        if e.kind == "dir":
            self.sink.add_directory(path, e.meta)
        elif e.kind == "hardlink":
            self._link(e)
        else:
            self._write(path, e, data)
            if e.kind != "file":  # a file is told by _named
                self._bind(path, e)

    def _write(self, path: bytes, e: TarEntry, data: BinaryIO | bytes | None) -> None:
        """Hand one non-directory, non-link entry to the sink under ``path``."""
        sink = self.sink
        if e.kind == "file":
            assert data is not None
            sink.add_file(path, e.meta, data, e.size)
            if self.f.indexes is not None:
                self.f.indexes.written(e.position)
            self.f.files += 1
            self.f.bytes += e.size
        elif e.kind == "symlink":
            sink.add_symlink(path, e.meta, e.linkname)
        elif e.kind == "char" or e.kind == "block":
            sink.add_device(path, e.meta, e.kind, e.devmajor, e.devminor)
        elif e.kind == "fifo":
            sink.add_fifo(path, e.meta)

    def _shadow(self, e: TarEntry) -> None:
        """Remember a hidden non-directory: a surviving hard link may need it."""
        if e.kind == "dir":
            return
        if e.kind == "hardlink":
            target = self._inode_at(e.linkname, e.position)
            if target is None:
                raise self._dangling(e)
            self._bind(e.path, target)
        else:
            self._bind(e.path, _Inode(e, []))

    def _dangling(self, e: TarEntry) -> LayerError:
        return LayerError(
            f"hard link {_show(e.path)} points to {_show(e.linkname)}, which is not an "
            "earlier non-directory entry of this layer",
            context=self.context,
            hint="ocisquash links only within one layer, as the image spec describes; "
                 "rebuild the layer with the link target in it",
        )

    def _link(self, e: TarEntry) -> None:
        inode = self._inode_at(e.linkname, e.position)
        if inode is None:
            raise self._dangling(e)
        path = e.path
        holder = self._holder(inode)
        self._bind(path, inode)
        if holder is not None:
            self.sink.add_hardlink(path, holder)
            inode.written.append(path)
            return
        t = inode.entry
        if t.kind == "file":
            # Its data was skipped: fetch it in a second pass.
            if inode.deferred is None:
                inode.deferred = []
            inode.deferred.append(path)
            self.deferred[path] = inode
            return
        # A hidden symlink, device or fifo carries everything in its header.
        self._write(path, t, None)
        inode.written.append(path)

    def _holds(self, path: bytes, inode: _Inode) -> bool:
        """Whether the sink's ``path`` holds ``inode`` (a name in its ``written`` list
        may have been replaced since, or now wait for the second pass)."""
        return self.names.get(path) is inode and path not in self.deferred

    def _holder(self, inode: _Inode) -> bytes | None:
        """The first name written with ``inode`` that still holds it, if any."""
        written = inode.written
        while inode.head < len(written):
            name = written[inode.head]
            if self._holds(name, inode):
                return name
            inode.head += 1
        return None

    def _inode_at(self, name: bytes, link: int) -> _Inode | None:
        """The inode ``name`` holds in this layer, if any, for the link at member
        position ``link``. A bare entry there (emitted under that one name only)
        becomes an _Inode written under it."""
        found = self._named(name)
        if found is None or isinstance(found, _Inode):
            return found
        if isinstance(found, int):
            # A file: the last non-directory member named ``name`` before the link, as
            # every later one would have replaced it here. Its data, and with it its
            # metadata, can only come from a second pass, which finds it (see
            # _second_pass); -1 - link stands for that position until then.
            found = TarEntry(name, "file", _UNREAD_META, position=-1 - link)
        inode = self.names[name] = _Inode(found, [name])
        return inode

    def _named(self, path: bytes) -> _Inode | TarEntry | int | None:
        """What ``names`` holds for ``path``, or _BARE_FILE for a file this layer emitted
        under that one name: a non-directory the sink has that this layer decided (the
        bottom layer decides nothing for the files it emits, and every upper layer
        decides whatever it emits) and ``names`` knows nothing more of."""
        found = self.names.get(path)
        if found is not None:
            return found
        node = self.decided.get(path)
        if node is None:
            mine = self.index == 0
        else:
            mine = node.kind == _NONDIR and node.layer == self.index
        return _BARE_FILE if mine and self.sink.exists(path) else None

    def _bind(self, path: bytes, inode: _Inode | TarEntry | int) -> None:
        self.names[path] = inode
        if self.kids is not None:
            self._index(path)

    def _index(self, path: bytes) -> None:
        kids = self.kids
        assert kids is not None
        while path:
            parent = _parent(path)
            known = kids.get(parent)
            if known is not None:
                known.add(path)
                return
            kids[parent] = {path}
            path = parent

    def _release(self, path: bytes) -> None:
        """``path`` is about to be replaced in the sink: it no longer holds its inode."""
        self.names.pop(path, None)
        self.deferred.pop(path, None)

    def _forget_below(self, path: bytes) -> None:
        """A directory of this layer is replaced: its subtree leaves the sink. The
        names are found through an index by directory, built the first time a layer
        does this (most never do), so that each name is visited once."""
        if self.kids is None:
            self.kids = {}
            for name in self.names:
                self._index(name)
        stack = [path]
        while stack:
            for name in self.kids.pop(stack.pop(), ()):
                self._release(name)
                stack.append(name)

    # -- the second pass ------------------------------------------------------------

    def _second_pass(self) -> None:
        if not self.deferred:
            return
        self._find_bare_files()
        wanted: dict[int, _Inode] = {}
        for inode in self.deferred.values():
            wanted[inode.entry.position] = inode
        f = self.f
        f.second_passes += 1
        if f.progress is not None:
            f.progress(FlattenProgress("second-pass", len(f.layers) - self.index,
                                       len(f.layers), str(self.layer.descriptor.digest),
                                       f.entries, f.bytes))
        for entry, data in self._read_again():
            wanted_inode = wanted.get(entry.position)
            if wanted_inode is None or data is None:
                continue
            inode = wanted_inode
            assert inode.deferred is not None
            # The names still waiting, in the order they were linked, each once.
            first, *rest = dict.fromkeys(
                n for n in inode.deferred if self.deferred.get(n) is inode)
            # The member read again gives the metadata: an inode made from a bare position
            # (``_inode_at``) has none of its own.
            self.sink.add_file(first, entry.meta, data, entry.size)
            if f.indexes is not None:
                f.indexes.written(entry.position)
            f.files += 1
            f.bytes += entry.size
            for name in rest:
                self.sink.add_hardlink(name, first)
        self.deferred.clear()

    def _find_bare_files(self) -> None:
        """Give the files the second pass needs that are known by name only (see
        _inode_at) their member positions, by reading the layer's headers once more.
        This takes a file whose data was written under its name, then linked to by a
        hidden link, then replaced, then linked to through the hidden name: in
        practice, never."""
        bare: dict[bytes, list[_Inode]] = {}
        for inode in {id(i): i for i in self.deferred.values()}.values():
            if inode.entry.position < 0:
                bare.setdefault(inode.entry.path, []).append(inode)
        if not bare:
            return
        found: dict[_Inode, int] = {}
        for entry, _ in self._read_again():
            inodes = bare.get(entry.path)
            if inodes is None or entry.kind == "dir":
                continue
            for inode in inodes:
                if entry.position < -1 - inode.entry.position:
                    found[inode] = entry.position
        for inodes in bare.values():
            for inode in inodes:
                inode.entry = inode.entry._replace(position=found[inode])


__all__ = [
    "FidelityIssue",
    "FlattenProgress",
    "FlattenReport",
    "LayerIndexes",
    "LayerReplay",
    "Limits",
    "TreeSink",
    "flatten",
]
