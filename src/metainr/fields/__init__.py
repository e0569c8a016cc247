"""Fields: coordinate networks describing one signal each."""
from .config import FieldConfig
from .linear import RWF, Linear
from .mlp import FIELDS, Field, FourierMLP, PositionalMLP, Siren, build_field, count_parameters

__all__ = ["FieldConfig", "RWF", "Linear", "FIELDS", "Field", "FourierMLP", "PositionalMLP", "Siren",
           "build_field", "count_parameters"]
