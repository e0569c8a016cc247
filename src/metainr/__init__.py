"""metainr: meta-learned neural fields that fit a new signal of a class in a few steps.

The public names below are imported on first use (PEP 562), so ``import metainr`` and the
``metainr`` command start without loading torch until something needs it.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "data": ["ImageDataset", "faces", "image_folder", "load_dataset", "patches"],
    "device": ["resolve_device"],
    "errors": ["CheckpointMismatch", "MetaINRError", "TrainingDiverged"],
    "fields": ["FieldConfig", "FourierMLP", "NeRV", "PositionalMLP", "Siren", "build_field", "count_parameters",
               "density", "magnitude_prune", "narrow_width", "random_prune"],
    "field_files": ["FittedField", "load_field", "save_field"],
    "fit": ["FitResult", "fit", "holdout_split"],
    "guard": ["Candidate", "GuardReport", "guarded_fit"],
    "limits": ["Limits", "use_limits"],
    "meta": ["FOMAML", "GRADNCP", "MAML", "ContextConfig", "GradNCP", "GradientRescaling", "Learner", "MAMLConfig",
             "MetaSGD", "Reptile", "ReptileConfig", "TestRule", "TransINR", "TransINRConfig", "build_learner",
             "context_scores"],
    "metrics": ["mean_psnr", "psnr", "ssim"],
    "tasks": ["TASKS", "AudioConfig", "AudioTask", "Batch", "CTConfig", "CTTask", "ImageConfig", "ImageTask",
              "SDF2DConfig", "SDF2DTask", "SDF3DConfig", "SDF3DTask", "SphereConfig", "SphereTask", "Task",
              "VideoConfig", "VideoTask", "build_task", "register_task"],
    "start": ["Fitted", "Start", "fit_from_checkpoint"],
    "store": ["FieldStore", "decode", "encode", "store_info"],
    "train": ["PruneConfig", "PruneRounds", "TrainConfig", "iterative_pruning", "load_learner", "meta_train",
              "save_checkpoint", "task_from_meta"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [name for names in _EXPORTS.values() for name in names]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'metainr' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


class _Package(types.ModuleType):
    """Keeps an exported name that is also a submodule's name (``metainr.fit``) bound to the
    exported object: the import system binds a submodule on its package once it is loaded."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _WHERE.get(name) == name and hasattr(value, name):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
