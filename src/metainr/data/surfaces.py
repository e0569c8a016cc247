"""Triangle surfaces of signed distance grids and meshes: marching cubes (scikit-image), points
drawn uniformly by area, and the symmetric Chamfer distance (scipy's k-d tree)."""
from __future__ import annotations

import numpy as np


def grid_surface(values: np.ndarray, level: float = 0.5) -> tuple[np.ndarray, np.ndarray] | None:
    """Marching cubes (scikit-image) of a (G, G, G) value grid over [-1, 1]^3 at ``level``:
    (vertices (V, 3) in coordinates, matching the grid's axis order; faces (F, 3)), or None when
    the level is not crossed."""
    from skimage.measure import marching_cubes

    values = np.asarray(values, dtype=np.float32)
    if not (values.min() < level < values.max()):
        return None
    g = values.shape[0]
    verts, faces, _, _ = marching_cubes(values, level=level, spacing=(2.0 / (g - 1),) * 3)
    return verts - 1.0, faces.astype(np.int64)


def surface_points(vertices: np.ndarray, faces: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """``count`` points (count, 3) drawn uniformly by area on a triangle mesh."""
    tri = vertices[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(faces), size=count, p=area / area.sum()) if area.sum() > 0 else rng.integers(
        0, len(faces), count)
    u, w = rng.random((2, count, 1))
    flip = (u + w) > 1
    u, w = np.where(flip, 1 - u, u), np.where(flip, 1 - w, w)
    t = tri[pick]
    return t[:, 0] + u * (t[:, 1] - t[:, 0]) + w * (t[:, 2] - t[:, 0])


def chamfer_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric Chamfer distance of two point sets (N, 3), (M, 3): the mean over both of the
    nearest-neighbour Euclidean distance to the other set, averaged over the two directions."""
    from scipy.spatial import cKDTree

    if len(a) == 0 or len(b) == 0:
        return float("inf")
    da, _ = cKDTree(b).query(a)
    db, _ = cKDTree(a).query(b)
    return 0.5 * (float(da.mean()) + float(db.mean()))
