"""The zoo: meta-learned inits that ship with the package, one per bundled class of signals.

Each is a normal metainr checkpoint (no optimizer state) in ``inits/NAME.safetensors``; the
manifest ``inits/zoo.json`` says how it was trained and how it scores on held-out data (written by
``benchmarks/zoo.py``). Anywhere a checkpoint path is accepted, ``zoo:NAME`` names one:
``load_learner("zoo:faces")``, ``metainr fit --init zoo:faces photo.png``.

Nothing here imports torch: ``metainr zoo`` lists the manifest without loading a model.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import MetaINRError

PREFIX = "zoo:"
"""what a checkpoint argument starts with to name a zoo entry"""
INITS = Path(__file__).resolve().parent / "inits"
"""the folder of the packaged checkpoints and their manifest"""


def zoo_entries() -> list[dict[str, Any]]:
    """The manifest's entries, in order: name, task, data, learner, field {kind, width, depth},
    params, bytes, steps (test-time steps of the scores), psnr (held-out, from the init), random_psnr
    (a random init of the same field, the task's random rule, the same steps), and how it was
    trained (outer_steps, outer_lr, batch_size, seconds, cpu_seconds, seed, threads)."""
    path = INITS / "zoo.json"
    try:
        return list(json.loads(path.read_text())["entries"])
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError) as exc:
        raise MetaINRError(f"the zoo's manifest {path} is damaged ({exc}); reinstall metainr") from None


def zoo_names() -> list[str]:
    """Names of the zoo's inits."""
    return [e["name"] for e in zoo_entries()]


def zoo_path(name: str) -> Path:
    """The packaged checkpoint of zoo entry ``name`` (one-line :class:`MetaINRError` naming the
    available ones when there is no such entry)."""
    names = zoo_names()
    path = INITS / f"{name}.safetensors"
    if name not in names or not path.is_file():
        raise MetaINRError(f"no zoo init named {name!r}; available: {', '.join(names) or 'none (the zoo is empty)'}")
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint argument as a file path: ``zoo:NAME`` -> the packaged file, anything else as given."""
    text = str(path)
    return zoo_path(text[len(PREFIX):]) if text.startswith(PREFIX) else Path(path)


__all__ = ["INITS", "PREFIX", "resolve_checkpoint", "zoo_entries", "zoo_names", "zoo_path"]
