"""Datasets of signals: user folders, embedded defaults, procedural generators, deterministic splits."""
from .images import (DATASETS, ImageDataset, faces, grid_coords, image_folder, image_to_values, load_dataset,
                     load_image, patches, values_to_image)

__all__ = ["DATASETS", "ImageDataset", "faces", "grid_coords", "image_folder", "image_to_values", "load_dataset",
           "load_image", "patches", "values_to_image"]
