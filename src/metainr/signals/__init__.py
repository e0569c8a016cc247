"""Signal types: coordinates, observations and how to compare a field with them."""
from .ct import RayIntegral, circle_mask, parallel_beam_rays, radon, render, sinogram_to_values, values_to_sinogram
from .image import grid_coords, image_to_values, values_to_image

__all__ = ["grid_coords", "image_to_values", "values_to_image",
           "RayIntegral", "circle_mask", "parallel_beam_rays", "radon", "render", "sinogram_to_values",
           "values_to_sinogram"]
