"""metainr: meta-learned neural fields that fit a new signal of a class in a few steps."""
from .data import ImageDataset, faces, image_folder, load_dataset, patches
from .device import resolve_device
from .errors import CheckpointMismatch, MetaINRError, TrainingDiverged
from .fields import (FieldConfig, FourierMLP, PositionalMLP, Siren, build_field, count_parameters, density,
                     magnitude_prune, narrow_width, random_prune)
from .fit import FitResult, fit
from .meta import (FOMAML, GRADNCP, MAML, ContextConfig, GradNCP, GradientRescaling, Learner, MAMLConfig, MetaSGD,
                   Reptile, ReptileConfig, TestRule, TransINR, TransINRConfig, build_learner, context_scores)
from .metrics import mean_psnr, psnr, ssim
from .tasks import TASKS, Batch, CTConfig, CTTask, ImageConfig, ImageTask, Task, build_task, register_task
from .train import (PruneConfig, PruneRounds, TrainConfig, iterative_pruning, load_learner, meta_train,
                    save_checkpoint, task_from_meta)

__version__ = "0.1.0"

__all__ = [
    "ImageDataset", "faces", "image_folder", "load_dataset", "patches",
    "resolve_device",
    "CheckpointMismatch", "MetaINRError", "TrainingDiverged",
    "FieldConfig", "FourierMLP", "PositionalMLP", "Siren", "build_field", "count_parameters", "density",
    "magnitude_prune", "narrow_width", "random_prune",
    "FitResult", "fit",
    "FOMAML", "GRADNCP", "MAML", "ContextConfig", "GradNCP", "GradientRescaling", "Learner", "MAMLConfig", "MetaSGD",
    "Reptile", "ReptileConfig", "TestRule", "TransINR", "TransINRConfig", "build_learner", "context_scores",
    "mean_psnr", "psnr", "ssim",
    "TASKS", "Batch", "CTConfig", "CTTask", "ImageConfig", "ImageTask", "Task", "build_task", "register_task",
    "PruneConfig", "PruneRounds", "TrainConfig", "iterative_pruning", "load_learner", "meta_train",
    "save_checkpoint", "task_from_meta",
]
