"""``metainr zoo``: the packaged meta-learned inits (``--init zoo:NAME``) and how they score."""
from __future__ import annotations

import argparse
import json

from ..zoo import PREFIX, zoo_entries, zoo_path
from .common import Selection

COLUMNS = ("name", "task", "learner", "field", "params", "bytes", "init PSNR", "random PSNR", "steps")


def add_parser(sub: argparse._SubParsersAction, sel: Selection) -> None:
    p = sub.add_parser("zoo", help="list the packaged meta-learned inits (use one as --init zoo:NAME)",
                       description="List the meta-learned inits that ship with metainr: held-out PSNR after the "
                                   "test-time steps 'metainr fit' takes by default, from the init and from a random "
                                   "init of the same field (the task's random rule, the same steps). Use one as "
                                   f"--init {PREFIX}NAME, or in Python as load_learner('{PREFIX}NAME').")
    p.add_argument("name", nargs="?", default=None, help="show one entry in full, with its file")
    p.add_argument("--json", action="store_true", help="print the entries as one JSON list on stdout")


def rows(entries: list[dict]) -> list[list[str]]:
    """The table of ``entries`` as text cells, in the order of :data:`COLUMNS`."""
    return [[e["name"], e["task"], e["learner"], f"{e['field']['kind']} {e['field']['width']}x{e['field']['depth']}",
             f"{e['params']:,}", f"{e['bytes'] / 1024:.0f} KB", f"{e['psnr']:.2f} dB", f"{e['random_psnr']:.2f} dB",
             str(e["steps"])] for e in entries]


def run_zoo(args: argparse.Namespace, sel: Selection) -> int:
    entries = zoo_entries()
    if args.name is not None:
        path = zoo_path(args.name)  # a one-line error naming the available ones
        entry = {**next(e for e in entries if e["name"] == args.name), "path": str(path)}
        print(json.dumps(entry, indent=None if args.json else 2))
        return 0
    if args.json:
        print(json.dumps(entries))
        return 0
    table = [list(COLUMNS), *rows(entries)]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    for r in table:
        print("  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    print(f"\nheld-out PSNR after 'steps' test-time steps; use one with --init {PREFIX}NAME "
          f"(e.g. metainr fit --init {PREFIX}{entries[0]['name'] if entries else 'faces'} FILE)")
    return 0
