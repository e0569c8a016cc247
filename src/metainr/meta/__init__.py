"""Meta-learners: each maps (init params, a batch of signals) to an outer gradient."""
from ..fields import Field
from .base import Learner, LearnerConfig, TestRule
from .gradncp import GradNCP, context_scores, select_context
from .maml import FOMAML, MAML, MetaSGD
from .reptile import Reptile
from .transinr import TRANSINR_DEFAULTS, TransINR

LEARNERS = {"maml": MAML, "fomaml": MAML, "metasgd": MAML, "reptile": Reptile, "transinr": TransINR,
            "gradncp": GradNCP}
# learner-specific defaults over LearnerConfig's, applied by the CLI before the user's options
LEARNER_PRESETS: dict[str, dict] = {"transinr": TRANSINR_DEFAULTS}


def build_learner(field: Field, config: LearnerConfig) -> Learner:
    """The learner a config names, around ``field``; unknown kinds raise a clear ValueError."""
    if config.kind not in LEARNERS:
        raise ValueError(f"unknown learner {config.kind!r}; choose from {sorted(LEARNERS)}")
    return LEARNERS[config.kind](field, config)


__all__ = ["LEARNERS", "LEARNER_PRESETS", "Learner", "LearnerConfig", "TestRule", "MAML", "FOMAML", "MetaSGD",
           "Reptile", "TransINR", "GradNCP", "context_scores", "select_context", "build_learner"]
