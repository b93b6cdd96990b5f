"""Text printed for a human: control characters shown, never sent to the terminal.

Registry error bodies, image labels, environment values, commands and file names
all come from outside. Written raw to a terminal, an escape sequence in them could
move the cursor, rewrite earlier lines or set the window title, and forge what the
user reads. Everything ocisquash prints for a human goes through :func:`printable`;
``--json`` output stays exact (JSON escapes control characters itself).
"""

from __future__ import annotations

import re

# C0 controls (tab included: it moves the cursor), DEL, C1 controls (0x9b is CSI on some
# terminals), and the Unicode line and paragraph separators and bidirectional overrides,
# which reorder what is shown.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def printable(text: object) -> str:
    """``text`` as a string with every control character written as ``\\xNN``
    (``\\uNNNN``), so that it prints as one visible line."""
    s = str(text)
    if _UNSAFE.search(s) is None:
        return s
    return _UNSAFE.sub(_escape, s)
