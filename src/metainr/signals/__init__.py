"""Signal types: coordinates, observations and how to compare a field with them."""
from .image import grid_coords, image_to_values, values_to_image

__all__ = ["grid_coords", "image_to_values", "values_to_image"]
