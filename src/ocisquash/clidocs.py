"""The man page and the shell completion, generated from the argument parser.

Both are built from ``cli.build_parser()`` when asked for (``ocisquash man``,
``ocisquash completion bash``), so they list exactly the commands and options this
version has and cannot fall behind it.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
from collections.abc import Iterator
from pathlib import Path

#: options whose value is a path (completed as file names)
_PATH_METAVARS = {"DIR", "FILE", "OUT", "PATH", "MOUNTPOINT", "IMAGE_FILE"}


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
              ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str]]:
    """(command path, parser, one-line help) of every command and action, depth first."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, child in action.choices.items():
                if child.prog.split()[-1] != name:
                    continue  # an alias
                yield (*path, name), child, helps.get(name, "")
                yield from _commands(child, (*path, name))


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.help is not argparse.SUPPRESS]


def _positionals(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not a.option_strings
            and not isinstance(a, argparse._SubParsersAction)]


def _help(action: argparse.Action) -> str:
    text = action.help or ""
    if "%(" in text:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            text = text % {**vars(action), "default": action.default}
    return text


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


# -- man page ---------------------------------------------------------------------------------

def _roff(text: str) -> str:
    """``text`` safe in a roff line: backslashes, hyphens, and a leading dot or quote."""
    out = text.replace("\\", "\\e").replace("-", "\\-")
    lines = []
    for line in out.splitlines() or [""]:
        lines.append("\\&" + line if line[:1] in (".", "'") else line)
    return "\n".join(lines)


def _option_head(action: argparse.Action) -> str:
    flags = ", ".join(f"\\fB{_roff(f)}\\fR" for f in action.option_strings)
    if _takes_value(action):
        metavar = action.metavar or (
            "{" + ",".join(map(str, action.choices)) + "}" if action.choices else
            action.dest.upper())
        flags += f" \\fI{_roff(str(metavar))}\\fR"
    return flags


def manpage(parser: argparse.ArgumentParser, version: str, exit_status: str) -> str:
    """The ``ocisquash(1)`` man page, in roff (``man -l``)."""
    out = [
        f'.TH OCISQUASH 1 "" "ocisquash {_roff(version)}" "User Commands"',
        ".SH NAME",
        "ocisquash \\- " + _roff((parser.description or "").split(". ")[0].rstrip(".")),
        ".SH SYNOPSIS",
        ".B ocisquash",
        "[\\fIGLOBAL OPTIONS\\fR] \\fICOMMAND\\fR [\\fIOPTIONS\\fR] [\\fIARGUMENTS\\fR]",
        ".SH DESCRIPTION",
        _roff(parser.description or ""),
        ".PP",
        "The global options may come before or after the command.",
        ".SH GLOBAL OPTIONS",
    ]
    for action in _options(parser):
        out += [".TP", _option_head(action), _roff(_help(action))]
    out.append(".SH COMMANDS")
    for path, sub, summary in _commands(parser):
        args = " ".join(f"\\fI{_roff(str(a.metavar or a.dest.upper()))}\\fR"
                        for a in _positionals(sub))
        out += [f".SS \"ocisquash {' '.join(path)}\" {args}".rstrip(),
                _roff(sub.description or summary)]
        for action in _options(sub):
            if action.dest == "help":
                continue
            out += [".TP", _option_head(action), _roff(_help(action))]
    out += [".SH EXIT STATUS", ".TP"]
    entries: list[list[str]] = []
    for line in exit_status.splitlines()[1:]:
        code, _, text = line.strip().partition(" ")
        if code.isdigit():
            entries.append([code, text.strip()])
        elif entries:
            entries[-1][1] += " " + line.strip()
    for i, (code, text) in enumerate(entries):
        out += ([".TP"] if i else []) + [f"\\fB{code}\\fR", _roff(text)]
    out += [
        ".SH ENVIRONMENT",
        ".TP", "\\fBSOURCE_DATE_EPOCH\\fR", "image timestamp when \\fB\\-\\-mkfs\\-time\\fR is not given",
        ".TP", "\\fBXDG_CACHE_HOME\\fR", "the cache is \\fI$XDG_CACHE_HOME/ocisquash\\fR",
        ".TP", "\\fBREGISTRY_AUTH_FILE\\fR, \\fBXDG_RUNTIME_DIR\\fR, \\fBDOCKER_CONFIG\\fR",
        "where registry credentials are read (and \\fBlogin\\fR writes them)",
        ".TP", "\\fBHTTPS_PROXY\\fR, \\fBHTTP_PROXY\\fR, \\fBNO_PROXY\\fR", "proxies, as curl and Go read them",
        ".SH SEE ALSO",
        ".BR mksquashfs (1),",
        ".BR unsquashfs (1),",
        ".BR skopeo (1),",
        ".BR containers\\-auth.json (5)",
    ]
    return "\n".join(out) + "\n"


# -- bash completion --------------------------------------------------------------------------

def bash_completion(parser: argparse.ArgumentParser) -> str:
    """A bash completion script for ``ocisquash`` (``source`` it, or put it in
    ``/etc/bash_completion.d/``)."""
    # bash keys: "T" is the top level, "T/cache/ls" the ls action of cache (no empty keys)
    subs: dict[str, list[str]] = {"T": []}
    opts: dict[str, list[str]] = {"T": [f for a in _options(parser) for f in a.option_strings]}
    valued: dict[str, list[str]] = {"T": [f for a in _options(parser) if _takes_value(a)
                                          for f in a.option_strings]}
    choices: dict[str, list[str]] = {}
    files: set[str] = set()
    pos_files: dict[str, bool] = {}
    pos_choices: dict[str, str] = {}

    def note(key: str, p: argparse.ArgumentParser) -> None:
        for a in _options(p):
            if a.choices and _takes_value(a):
                for f in a.option_strings:
                    choices[f"{key}|{f}"] = [str(c) for c in a.choices]
            elif _takes_value(a) and (a.type is Path or str(a.metavar) in _PATH_METAVARS):
                files.update(f"{key}|{f}" for f in a.option_strings)

    note("T", parser)
    for path, sub, _ in _commands(parser):
        key, parent = "/".join(("T", *path)), "/".join(("T", *path[:-1]))
        subs.setdefault(parent, []).append(path[-1])
        subs.setdefault(key, [])
        opts[key] = [f for a in _options(sub) for f in a.option_strings]
        valued[key] = [f for a in _options(sub) if _takes_value(a) for f in a.option_strings]
        pos_choices[key] = " ".join(str(c) for a in _positionals(sub) for c in a.choices or ())
        pos_files[key] = any(a.type is Path or str(a.metavar) in _PATH_METAVARS
                             for a in _positionals(sub))
        note(key, sub)

    def table(name: str, data: dict[str, str]) -> list[str]:
        lines = [f"    local -A {name}=("]
        lines += [f"        [{shlex.quote(k)}]={shlex.quote(v)}" for k, v in sorted(data.items())]
        return [*lines, "    )"]

    body = [
        "# bash completion for ocisquash, generated by 'ocisquash completion bash'",
        "_ocisquash() {",
        *table("subs", {k: " ".join(v) for k, v in subs.items()}),
        *table("opts", {k: " ".join(v) for k, v in opts.items()}),
        *table("valued", {k: " " + " ".join(v) + " " for k, v in valued.items()}),
        *table("choices", {k: " ".join(v) for k, v in choices.items()}),
        *table("files", dict.fromkeys(sorted(files), "1")),
        *table("posfiles", {k: "1" for k, v in pos_files.items() if v}),
        *table("poschoices", {k: v for k, v in pos_choices.items() if v}),
        '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="" path="T" w i skip=0',
        '    ((COMP_CWORD > 0)) && prev="${COMP_WORDS[COMP_CWORD-1]}"',
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        w="${COMP_WORDS[i]}"',
        "        if ((skip)); then skip=0; continue; fi",
        '        if [[ "$w" == -* ]]; then',
        '            [[ "${valued[$path]} ${valued[T]}" == *" $w "* ]] && skip=1',
        "            continue",
        "        fi",
        '        if [[ " ${subs[$path]} " == *" $w "* ]]; then',
        '            path="$path/$w"',
        "        fi",
        "    done",
        '    if [[ "$prev" == -* && "${valued[$path]} ${valued[T]}" == *" $prev "* ]]; then',
        '        if [[ -n "${choices[$path|$prev]}${choices[T|$prev]}" ]]; then',
        '            COMPREPLY=($(compgen -W "${choices[$path|$prev]}${choices[T|$prev]}" -- "$cur"))',
        '        elif [[ -n "${files[$path|$prev]}${files[T|$prev]}" ]]; then',
        '            COMPREPLY=($(compgen -f -- "$cur"))',
        "        else",
        "            COMPREPLY=()",
        "        fi",
        "        return 0",
        "    fi",
        '    if [[ "$cur" == -* ]]; then',
        '        COMPREPLY=($(compgen -W "${opts[$path]} ${opts[T]}" -- "$cur"))',
        '    elif [[ -n "${subs[$path]}" ]]; then',
        '        COMPREPLY=($(compgen -W "${subs[$path]}" -- "$cur"))',
        '    elif [[ -n "${poschoices[$path]}" ]]; then',
        '        COMPREPLY=($(compgen -W "${poschoices[$path]}" -- "$cur"))',
        '    elif [[ -n "${posfiles[$path]}" ]]; then',
        '        COMPREPLY=($(compgen -f -- "$cur"))',
        "    fi",
        "    return 0",
        "}",
        "complete -o default -F _ocisquash ocisquash",
    ]
    return "\n".join(body) + "\n"
