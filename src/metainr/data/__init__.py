"""Datasets of signals: user folders, embedded defaults, procedural generators, deterministic splits."""
from .box_objects import BoxObject, box_objects, chair, render_views, table
from .cameras import PosedViews, camera_rays, focal_from_fov, look_at_sphere, orbit_cameras, rays_to_query
from .images import (DATASETS, ImageDataset, faces, grid_coords, image_folder, image_to_values, load_dataset,
                     load_image, patches, values_to_image)
from .meshes import MeshObject, mesh_objects, read_obj, render_mesh_views
from .nerf_synthetic import nerf_synthetic

__all__ = ["DATASETS", "ImageDataset", "faces", "grid_coords", "image_folder", "image_to_values", "load_dataset",
           "load_image", "patches", "values_to_image", "BoxObject", "box_objects", "chair", "render_views", "table",
           "PosedViews", "camera_rays", "focal_from_fov", "look_at_sphere", "orbit_cameras", "rays_to_query",
           "nerf_synthetic", "MeshObject", "mesh_objects", "read_obj", "render_mesh_views"]
