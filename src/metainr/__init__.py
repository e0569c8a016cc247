"""metainr: meta-learned neural fields that fit a new signal of a class in a few steps."""
from .data import ImageDataset, faces, image_folder, load_dataset, patches
from .errors import CheckpointMismatch, MetaINRError, TrainingDiverged
from .fields import FieldConfig, FourierMLP, PositionalMLP, Siren, build_field, count_parameters
from .fit import FitResult, fit
from .meta import FOMAML, MAML, Learner, LearnerConfig, MetaSGD, Reptile, build_learner
from .metrics import mean_psnr, psnr, ssim
from .train import TrainConfig, load_learner, meta_train, save_checkpoint

__version__ = "0.1.0"

__all__ = [
    "ImageDataset", "faces", "image_folder", "load_dataset", "patches",
    "CheckpointMismatch", "MetaINRError", "TrainingDiverged",
    "FieldConfig", "FourierMLP", "PositionalMLP", "Siren", "build_field", "count_parameters",
    "FitResult", "fit",
    "FOMAML", "MAML", "Learner", "LearnerConfig", "MetaSGD", "Reptile", "build_learner",
    "mean_psnr", "psnr", "ssim",
    "TrainConfig", "load_learner", "meta_train", "save_checkpoint",
]
