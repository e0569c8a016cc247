"""Generate argparse options from frozen config dataclasses (help text = the field docstrings).

Every field of a config becomes one ``--option`` stored as ``{group}.{field}`` (None unless the
user gave it), so a command builds each config from its defaults, a preset, then what was given.
We keep argparse rather than tyro: tyro reports a bad option as a multi-line rich panel while our
contract is one ``metainr: error:`` line, and our options depend on the ``--task`` / ``--learner``
/ ``--init`` chosen first (a two-phase parse that argparse's ``parse_known_args`` gives directly).
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import math
import re
import textwrap
import types
import typing
from typing import Any, Callable, Iterable, Mapping

OPTION_NAMES: dict[str, str] = {}
"""dest (``{group}.{field}``) -> the option a user types for it, as the parser last built named it"""
POSITIVE_FIELDS = frozenset({"resolution", "count", "val_count"})
"""Sizes: in some configs 0 means "automatic", never a value a user types, so a user who gives one
gives a positive integer (a field's ``metadata={"positive": True}`` asks for the same)."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``metainr: error: ...``, exit code 2)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)  # options depend on the task: no prefix guessing
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:  # one line, not usage + error
        self.exit(2, f"metainr: error: {message} (see '{self.prog} --help')\n")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def finite_float(text: str) -> float:
    """argparse type: a finite number (NaN and infinities are refused, never silently used)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def step_list(text: str) -> list[int]:
    """argparse type: comma-separated non-negative step counts, sorted and deduplicated."""
    try:
        steps = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"steps must be comma-separated integers, got {text!r}") from None
    if not steps or steps[0] < 0:
        raise argparse.ArgumentTypeError(f"steps must be non-negative integers, got {text!r}")
    return steps


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal right after each field) of a dataclass and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
                    docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def doc_choices(doc: str, default: Any) -> list[str] | None:
    """The choices a docstring lists as ``a | b (note) | c ...`` (None unless ``default`` is one)."""
    text = re.sub(r"\([^()]*\)", " ", doc)
    parts = text.split("|")
    if len(parts) < 2:
        return None
    words = [parts[0].split()[-1:] or [""], *[p.split() for p in parts[1:-1]], parts[-1].split()[:1] or [""]]
    if any(len(w) != 1 for w in words[1:-1]):
        return None
    choices = [w[0].rstrip(",;:.") for w in words]
    if not all(re.fullmatch(r"[A-Za-z0-9_][\w.-]*", c) for c in choices) or default not in choices:
        return None
    return choices


def _list_of(item: Callable[[str], Any], name: str) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        try:
            return tuple(item(v) for v in text.split(",") if v.strip())
        except (ValueError, argparse.ArgumentTypeError):
            raise argparse.ArgumentTypeError(f"expected comma-separated {name}s, got {text!r}") from None
    return parse


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _option_kwargs(f: dataclasses.Field, tp: Any, doc: str, positive: bool) -> dict[str, Any]:
    """type / action / choices of one field's option."""
    tp = _strip_optional(tp)
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(tp) is typing.Literal:
        values = list(typing.get_args(tp))
        return {"type": type(values[0]), "choices": values}
    if typing.get_origin(tp) is tuple:
        args = [a for a in typing.get_args(tp) if a is not Ellipsis] or [str]
        item = args[0] if args[0] in (int, float) else str
        return {"type": _list_of(finite_float if item is float else item, item.__name__), "metavar": f.name.upper()}
    if tp is int:
        return {"type": positive_int if positive else int, "metavar": f.name.upper()}
    if tp is float:
        return {"type": finite_float, "metavar": f.name.upper()}
    choices = doc_choices(doc, f.default) if tp is str else None
    return {"type": str, "choices": choices} if choices else {"type": str, "metavar": f.name.upper()}


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation that does not resolve: fall back on the default's type
        return {f.name: type(f.default) if f.default is not dataclasses.MISSING else str
                for f in dataclasses.fields(cls)}


def add_config_args(parser: argparse.ArgumentParser, cls: type, group: str, *,
                    rename: Mapping[str, str] | None = None, skip: Iterable[str] = (),
                    choices: Mapping[str, list[str]] | None = None, base: Any = None,
                    taken: set[str] | None = None, title: str | None = None) -> None:
    """Add one ``--option`` per field of dataclass ``cls``, stored as ``{group}.{field}``.

    ``rename`` maps field names to option names, ``skip`` leaves fields out, ``choices`` restricts
    string fields (argparse then rejects others in one line; without it, a ``Literal`` type or a
    docstring listing ``a | b | c`` gives the choices). ``base`` (an instance or a mapping) is
    shown as the default in the help. ``taken`` holds the option names already used by this
    parser: a field whose name is taken becomes ``--{group}-{name}``; the new names are added.
    """
    rename, choices, skip = dict(rename or {}), dict(choices or {}), set(skip)
    docs, hints = field_docs(cls), _hints(cls)
    grp = parser.add_argument_group(title or group)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        name = rename.get(f.name, f.name).replace("_", "-")
        if taken is not None and name in taken:
            name = f"{group}-{name}"
        if taken is not None:
            taken.add(name)
        default = _default_of(f, base)
        doc = docs.get(f.name, "")
        kwargs = _option_kwargs(f, hints.get(f.name, str), doc,
                                f.name in POSITIVE_FIELDS or bool(f.metadata.get("positive")))
        if f.name in choices:
            kwargs.pop("metavar", None)
            kwargs["choices"] = list(choices[f.name])
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        OPTION_NAMES[f"{group}.{f.name}"] = f"--{name}"
        grp.add_argument(f"--{name}", dest=f"{group}.{f.name}", default=None,
                         help=f"{doc} (default: {shown})".replace("%", "%%"), **kwargs)


def _default_of(f: dataclasses.Field, base: Any) -> Any:
    if isinstance(base, Mapping) and f.name in base:
        return base[f.name]
    if base is not None and not isinstance(base, Mapping):
        return getattr(base, f.name)
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]


def given_options(args: argparse.Namespace, cls: type, group: str) -> dict[str, Any]:
    """The options of ``group`` that were set explicitly on the command line."""
    return {f.name: getattr(args, f"{group}.{f.name}") for f in dataclasses.fields(cls)
            if getattr(args, f"{group}.{f.name}", None) is not None}


def config_from_args(args: argparse.Namespace, cls: type, group: str, base: Mapping[str, Any] | None = None,
                     **fixed: Any) -> Any:
    """``cls`` from its defaults, then ``base`` (preset values), then the options given, then
    ``fixed`` (see :func:`checked_config`: a bad option is a :class:`BadOption`)."""
    return checked_config(cls, group, base, given_options(args, cls, group), fixed)


def option_name(group: str, name: str) -> str:
    """The option a user types for field ``name`` of ``group``."""
    return OPTION_NAMES.get(f"{group}.{name}", f"--{name.replace('_', '-')}")


def checked_config(cls: type, group: str, base: Mapping[str, Any] | None = None,
                   given: Mapping[str, Any] | None = None, fixed: Mapping[str, Any] | None = None,
                   make: Callable[[dict[str, Any]], Any] | None = None) -> Any:
    """``make({**base, **given, **fixed})`` (default ``cls(**...)``). When that raises ValueError
    and the config builds without the options ``given`` (what a user typed), the options are at
    fault: :class:`BadOption` (exit code 2) naming them and why. Otherwise the ValueError is
    raised as it is (the base, e.g. a checkpoint's config, is at fault)."""
    from ..errors import BadOption

    build = make or (lambda values: cls(**values))
    base, given, fixed = dict(base or {}), dict(given or {}), dict(fixed or {})
    try:
        return build({**base, **given, **fixed})
    except ValueError as exc:
        error = exc
    if given and _builds(build, {**base, **fixed}):
        culprits = [k for k in given if not _builds(build, {**base, k: given[k], **fixed})] or list(given)
        names = ", ".join(f"{option_name(group, k)} {_shown(given[k])}" for k in culprits)
        raise BadOption(f"{names}: {' '.join(str(error).split())}") from None
    raise error


def _builds(build: Callable[[dict[str, Any]], Any], values: dict[str, Any]) -> bool:
    try:
        build(values)
    except ValueError:
        return False
    return True


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
