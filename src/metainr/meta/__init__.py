"""Meta-learners: each maps (init params, a task's batch) to an outer gradient.

Learners are registered by name; ``gradncp`` is a preset (MAML + the gradnorm context policy +
the bootstrap correction + test-time rescaling, the paper's settings), not a learner of its own.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from torch import nn

from .base import Learner, TestRule
from .batching import BATCHING, activation_mb, field_evaluations, hessian_vector_product
from .context import (GRADNCP, POLICIES, ContextConfig, ContextPolicy, GradientRescaling, bootstrap_correction,
                      closed_form_scores, context_scores, general_scores, kept_count, select_context)
from .maml import FOMAML, MAML, MAMLConfig, MetaSGD
from .reptile import Reptile, ReptileConfig
from .transinr import TransINR, TransINRConfig

LEARNERS: dict[str, tuple[type[Learner], dict[str, Any]]] = {
    "maml": (MAML, {}),
    "fomaml": (MAML, {"first_order": True}),
    "metasgd": (MAML, {"meta_sgd": True}),
    "reptile": (Reptile, {}),
    "transinr": (TransINR, {}),
}
"""name -> (class, config defaults over the class's config)"""

PRESETS: dict[str, tuple[str, ContextConfig]] = {"gradncp": ("maml", GRADNCP)}
"""name -> (learner, context): named combinations"""


def learner_names() -> list[str]:
    """Every name ``build_learner`` accepts."""
    return sorted([*LEARNERS, *PRESETS])


def resolve(name: str) -> tuple[type[Learner], dict[str, Any], ContextConfig]:
    """(class, config defaults, default context) of a learner or preset name."""
    context = ContextConfig()
    if name in PRESETS:
        name, context = PRESETS[name]
    if name not in LEARNERS:
        raise ValueError(f"unknown learner {name!r}; choose from {learner_names()}")
    cls, defaults = LEARNERS[name]
    return cls, defaults, context


def build_learner(field: nn.Module, name: str = "maml", config: Any = None, context: ContextConfig | None = None,
                  **options: Any) -> Learner:
    """The learner ``name`` (or preset) around ``field``; ``options`` override its config and context."""
    cls, defaults, preset_context = resolve(name)
    if config is None:
        # the learner's defaults, then the options given (applied by the learner with its context's)
        own = {f.name for f in dataclasses.fields(cls.Config)}
        config = cls.Config(**{**defaults, **{k: v for k, v in options.items() if k in own}})
    return cls(field, config, context if context is not None else preset_context, **options)


def learner_from_spec(field: nn.Module, spec: Mapping[str, Any]) -> Learner:
    """Rebuild a learner from :meth:`Learner.spec` (what checkpoints store)."""
    cls, _, _ = resolve(spec["name"])
    return cls(field, cls.Config.from_dict(spec["config"]), ContextConfig.from_dict(spec["context"]))


def GradNCP(field: nn.Module, **options: Any) -> MAML:
    """MAML with GradNCP's context policy, bootstrap correction and test-time rescaling; ``options``
    override any of the paper's settings (e.g. ``inner_steps=16``, ``keep_ratio=0.25``)."""
    return build_learner(field, "gradncp", **options)  # type: ignore[return-value]


__all__ = ["LEARNERS", "PRESETS", "POLICIES", "GRADNCP", "BATCHING", "Learner", "TestRule", "MAML", "MAMLConfig",
           "FOMAML", "MetaSGD", "Reptile", "ReptileConfig", "TransINR", "TransINRConfig", "GradNCP", "ContextConfig",
           "ContextPolicy", "GradientRescaling", "bootstrap_correction", "closed_form_scores", "context_scores",
           "general_scores", "kept_count", "select_context", "build_learner", "learner_from_spec",
           "learner_names", "resolve", "activation_mb", "field_evaluations", "hessian_vector_product"]
