"""Datasets of signals: user folders, embedded defaults, deterministic splits."""
from .images import DATASETS, ImageDataset, faces, image_folder, load_dataset, load_image, patches

__all__ = ["DATASETS", "ImageDataset", "faces", "image_folder", "load_dataset", "load_image", "patches"]
