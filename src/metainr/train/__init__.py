"""The trainer: the outer loop, checkpoints and callbacks (validation, pruning rounds)."""
from .checkpoint import checkpoint_tensors, load_learner, restore, save_checkpoint, task_from_meta
from .config import TrainConfig
from .loop import Callback, RunState, batch_indices, meta_train, read_metrics, validate
from .pruning import PruneConfig, PruneRounds, iterative_pruning

__all__ = ["TrainConfig", "meta_train", "validate", "read_metrics", "batch_indices", "Callback", "RunState",
           "save_checkpoint", "load_learner", "restore", "checkpoint_tensors", "task_from_meta", "PruneConfig",
           "PruneRounds", "iterative_pruning"]
