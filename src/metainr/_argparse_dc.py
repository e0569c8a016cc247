"""Generate argparse options from frozen config dataclasses (help text = the field docstrings)."""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
from typing import Any


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal right after each field) of a dataclass."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
                docs[node.target.id] = str(nxt.value.value)
    return docs


def add_config_args(parser: argparse.ArgumentParser, cls: type, group: str,
                    rename: dict[str, str] | None = None, skip: tuple[str, ...] = (),
                    choices: dict[str, list[str]] | None = None) -> None:
    """Add one ``--option`` per dataclass field, stored as ``{group}.{field}`` in the namespace.

    ``rename`` maps field names to option names, ``skip`` leaves fields out, and ``choices``
    restricts string fields to registry names (argparse then rejects others in one line).
    """
    choices = choices or {}
    rename = rename or {}
    docs = field_docs(cls)
    grp = parser.add_argument_group(group)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + rename.get(f.name, f.name).replace("_", "-")
        kwargs: dict[str, Any] = {"dest": f"{group}.{f.name}", "default": None,
                                  "help": f"{docs.get(f.name, '')} (default: {f.default})"}
        if f.type in (bool, "bool"):
            grp.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            typ = {"int": int, "float": float, "str": str}.get(str(f.type), f.type)
            if f.name in choices:
                grp.add_argument(flag, type=typ, choices=choices[f.name], **kwargs)
            else:
                grp.add_argument(flag, type=typ, metavar=f.name.upper(), **kwargs)


def config_from_args(args: argparse.Namespace, cls: type, group: str, base: Any | None = None) -> Any:
    """Build ``cls`` from the options given on the command line, on top of ``base`` or the defaults."""
    given = given_options(args, cls, group)
    return dataclasses.replace(base, **given) if base is not None else cls(**given)


def given_options(args: argparse.Namespace, cls: type, group: str) -> dict[str, Any]:
    """The options of ``group`` that were set explicitly on the command line."""
    return {f.name: getattr(args, f"{group}.{f.name}") for f in dataclasses.fields(cls)
            if getattr(args, f"{group}.{f.name}", None) is not None}
