"""Fields: coordinate networks describing one signal each, and their sparsity masks."""
from .config import FieldConfig
from .linear import RWF, Linear
from .nerv import NeRV
from .mlp import FIELDS, FRAME_FIELDS, Field, FourierMLP, PositionalMLP, Siren, build_field, count_parameters
from .sparsity import (density, magnitude_prune, masked_layers, named_masked_layers, narrow_width, nonzero_parameters,
                       random_prune)

__all__ = ["FieldConfig", "RWF", "Linear", "FIELDS", "FRAME_FIELDS", "Field", "NeRV", "FourierMLP", "PositionalMLP", "Siren",
           "build_field", "count_parameters", "density", "magnitude_prune", "masked_layers", "named_masked_layers",
           "narrow_width", "nonzero_parameters", "random_prune"]
