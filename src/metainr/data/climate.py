"""Scalar fields on the sphere: the ERA5 lat-lon grid, procedural temperature-like maps
(``climate``) and users' grids (.npy / NetCDF files and folders of them).

Grids follow the ERA5 convention: H rows of latitude from +90 to -90 degrees inclusive
(``lat_i = 90 - i * 180 / (H - 1)``) and W columns of longitude ``lon_j = j * 360 / W``; a map is
(H, W), row 0 the north pole. A file's grid is taken to cover the sphere this way whatever its
coordinate values say (they only orient it: north up, longitudes from 0 east).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import MetaINRError, not_found
from ..limits import check_pixels, check_signals
from .files import folder_files, read_npy

SPLITS = ("train", "val", "test")
GRID_SUFFIXES = (".npy", ".nc")
NETCDF_HINT = "reading NetCDF needs the netcdf extra: pip install 'metainr[netcdf]'"


# -- the grid -------------------------------------------------------------------------------------
def lat_lon(height: int, width: int, device: torch.device | str | None = None,
            dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Latitudes (H,) from pi/2 to -pi/2 inclusive and longitudes (W,) from 0, in radians."""
    if height < 2 or width < 1:
        raise ValueError(f"a lat-lon grid needs height >= 2 and width >= 1, got {height}x{width}")
    i = torch.arange(height, device=device, dtype=torch.float64)
    j = torch.arange(width, device=device, dtype=torch.float64)
    lat = math.pi / 2 - i * (math.pi / (height - 1))
    return lat.to(dtype), (j * (2 * math.pi / width)).to(dtype)


def sphere_points(height: int, width: int, device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32) -> Tensor:
    """(H * W, 3) unit vectors (cos lat cos lon, cos lat sin lon, sin lat), row-major over (lat, lon)."""
    lat, lon = lat_lon(height, width, device, torch.float64)
    lat, lon = lat[:, None].expand(height, width), lon[None, :].expand(height, width)
    xyz = torch.stack([lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()], dim=-1)
    return xyz.reshape(-1, 3).to(dtype)


def area_weights(height: int, width: int, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """(H, W) cell areas cos(lat) dlat dlon in steradians (they sum to about 4 pi)."""
    lat, _ = lat_lon(height, width, device, torch.float64)
    cell = lat.cos().clamp(min=0) * (math.pi / (height - 1)) * (2 * math.pi / width)
    return cell[:, None].expand(height, width).to(dtype).contiguous()


# -- procedural maps ------------------------------------------------------------------------------
def _real_harmonics(max_degree: int, lat: np.ndarray, lon: np.ndarray, min_degree: int = 1) -> np.ndarray:
    """(K, *lat.shape) real orthonormal spherical harmonics of degrees min_degree..max_degree."""
    from scipy import special

    polar, azimuth = np.pi / 2 - lat, lon
    out = []
    for n in range(min_degree, max_degree + 1):
        for m in range(0, n + 1):
            if hasattr(special, "sph_harm_y"):
                y = special.sph_harm_y(n, m, polar, azimuth)
            else:  # scipy < 1.15: sph_harm(m, n, azimuth, polar)
                y = special.sph_harm(m, n, azimuth, polar)
            out.append(y.real if m == 0 else np.sqrt(2) * y.real)
            if m:
                out.append(np.sqrt(2) * y.imag)
    return np.stack(out)


def _smooth_noise(rng: np.random.Generator, basis: np.ndarray, degrees: np.ndarray, count: int,
                  slope: float) -> np.ndarray:
    """(count, *grid) random fields sum_k c_k Y_k with c_k ~ N(0, degree^-slope), unit std on average."""
    coeffs = rng.standard_normal((count, len(basis))) * degrees[None, :] ** (-slope / 2)
    fields = np.tensordot(coeffs, basis, axes=1)
    return fields / max(float(fields.std()), 1e-12)


def _degrees(max_degree: int, min_degree: int = 1) -> np.ndarray:
    """The degree of each function of :func:`_real_harmonics` (K,)."""
    return np.concatenate([np.full(2 * n + 1, n, dtype=np.float64) for n in range(min_degree, max_degree + 1)])


def climate_maps(count: int, height: int = 46, width: int = 90, seed: int = 0, world: int = 0) -> Tensor:
    """(count, H, W) temperature-like maps in about [0.05, 0.95], deterministic in ``seed``.

    Every map is of one planet (its continents and mountains come from ``world``, like ERA5 maps
    all being of the Earth) at a random season: a latitude gradient (warm equator, cold poles)
    whose thermal equator shifts with the season, a larger seasonal swing and an elevation-like
    cooling over land, and smooth weather anomalies (random spherical harmonics of degrees 1-4).
    Everything is a function of the point in 3D, so there is no seam at lon 0/360 and no pole artefact.
    """
    check_signals(count, "climate (count)")
    check_pixels(height * width, f"climate maps ({height}x{width})")
    lat_t, lon_t = lat_lon(height, width, dtype=torch.float64)
    lat, lon = np.meshgrid(lat_t.numpy(), lon_t.numpy(), indexing="ij")
    geo = np.random.default_rng([world, 7])
    relief_basis = _real_harmonics(8, lat, lon)
    relief = _smooth_noise(geo, relief_basis, _degrees(8), 2, slope=1.5)
    land = 1 / (1 + np.exp(-(relief[0] - 0.5) / 0.15))  # about 30% land, soft coasts
    elevation = np.clip(relief[1], 0, None) * land

    rng = np.random.default_rng([seed, 11])
    season = rng.uniform(-1, 1, (count, 1, 1))  # +1: northern summer
    shift = np.radians(12.0) * season  # thermal equator, degrees north
    temp = 28.0 - 58.0 * (1 - np.cos(lat[None] - shift))  # 28 C at the thermal equator, -30 at the poles
    temp = temp + land * (12.0 * season * np.sin(lat)[None] - 4.0 * np.abs(np.sin(lat))[None])
    temp = temp - 9.0 * elevation[None]
    anomaly = _smooth_noise(rng, _real_harmonics(4, lat, lon), _degrees(4), count, slope=1.0)
    temp = temp + 4.0 * anomaly
    values = 0.05 + 0.9 * (temp + 45.0) / 80.0  # -45 .. 35 C -> 0.05 .. 0.95
    return torch.from_numpy(np.clip(values, 0.05, 0.95)).float()


# -- users' grids ---------------------------------------------------------------------------------
def read_grid(path: str | Path, variable: str = "") -> np.ndarray:
    """One (H, W) float64 grid of a ``.npy`` (2-D) or NetCDF file (``variable`` at index 0 of
    every dim but lat/lon, e.g. the first time step), row 0 north. One-line MetaINRError on failure."""
    return read_grids(path, variable, every_step=False)[0]


def read_grids(path: str | Path, variable: str = "", every_step: bool = True) -> np.ndarray:
    """The (T, H, W) float64 grids of a file, row 0 north: a ``.npy`` holds one (2-D); a NetCDF
    variable one per step of its time dim (``every_step``; else the first) at index 0 of every
    other dim (e.g. the first pressure level). The whole file's samples are checked against
    ``max_pixels`` before it is read. One-line MetaINRError on failure."""
    file = Path(path)
    if file.suffix.lower() == ".nc":
        grids = _read_netcdf(file, variable, every_step)
    elif file.suffix.lower() == ".npy":
        grid = read_npy(file, "grid")
        if grid.dtype == np.bool_ or np.iscomplexobj(grid):
            raise MetaINRError(f"grid {file} holds {grid.dtype} values: need real numbers")
        if grid.ndim != 2 or min(grid.shape) < 2:
            raise MetaINRError(f"grid {file} must be a 2-D (lat, lon) array of at least 2x2, got shape {grid.shape}")
        grids = grid[None]
    else:
        raise MetaINRError(f"grid {file} is neither .npy nor .nc")
    if min(grids.shape[1:]) < 2:
        raise MetaINRError(f"grid {file} must be at least 2x2 (lat, lon), got {grids.shape[1]}x{grids.shape[2]}")
    grids = np.asarray(grids, dtype=np.float64)
    if not np.isfinite(grids).all():
        raise MetaINRError(f"grid {file} holds NaN or infinite values")
    return grids


TIME_DIMS = ("time", "valid_time", "t")
"""names of the dim whose steps are separate signals (else the first dim that is not lat/lon)"""


def _read_netcdf(file: Path, variable: str, every_step: bool) -> np.ndarray:
    """The (T, lat, lon) slices of a NetCDF variable, north up and longitudes from 0 east."""
    try:
        import xarray
    except ImportError:
        raise MetaINRError(NETCDF_HINT) from None
    if not file.is_file():
        raise not_found(file, "grid file")
    try:
        with xarray.open_dataset(file) as ds:
            candidates = [n for n, v in ds.data_vars.items() if _lat_lon_dims(v.dims)]
            if not variable:
                if len(candidates) != 1:
                    raise MetaINRError(f"{file} holds {len(candidates)} variables on lat/lon "
                                       f"{sorted(map(str, candidates))}: choose one with --variable")
                variable = str(candidates[0])
            if variable not in ds.data_vars:
                raise MetaINRError(f"{file} has no variable {variable!r}; variables on lat/lon: "
                                   f"{sorted(map(str, candidates))}")
            da = ds[variable]
            dims = _lat_lon_dims(da.dims)
            if not dims:
                raise MetaINRError(f"variable {variable!r} of {file} has no lat/lon dims (it has {list(da.dims)})")
            lat, lon = dims
            others = [d for d in da.dims if d not in dims]
            step = next((d for d in others if str(d).lower() in TIME_DIMS), others[0] if others else None)
            steps = int(da.sizes[step]) if step is not None and every_step else 1
            check_signals(steps, f"{file} ({step} steps)")
            check_pixels(steps * int(da.sizes[lat]) * int(da.sizes[lon]),
                         f"grid {file} ({steps} x {da.sizes[lat]}x{da.sizes[lon]})")
            keep = {d: 0 for d in others if d != step or not every_step}
            da = da.isel(keep)
            if step is not None and every_step:
                da = da.transpose(step, lat, lon)
            else:
                da = da.transpose(lat, lon).expand_dims("_step")
            grids = np.asarray(da.values, dtype=np.float64)
            if lat in da.coords and da.sizes[lat] > 1 and float(da[lat][0]) < float(da[lat][-1]):
                grids = grids[:, ::-1]
            if lon in da.coords and da.sizes[lon] > 1:
                order = np.argsort(np.mod(np.asarray(da[lon].values, dtype=np.float64), 360.0), kind="stable")
                grids = grids[:, :, order]
            return np.ascontiguousarray(grids)
    except MetaINRError:
        raise
    except Exception as exc:  # netCDF4/h5 raise many kinds; a user's file must give one line
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise MetaINRError(f"cannot read NetCDF {file}: {reason[:300]}") from None


def _lat_lon_dims(dims: tuple) -> tuple[str, str] | None:
    """The (latitude, longitude) dim names among ``dims`` (lat/latitude, lon/longitude), or None."""
    names = {str(d).lower(): d for d in dims}
    lat = next((names[n] for n in ("lat", "latitude") if n in names), None)
    lon = next((names[n] for n in ("lon", "longitude") if n in names), None)
    return (lat, lon) if lat is not None and lon is not None else None


def normalize(grid: np.ndarray, vmin: float = 0.0, vmax: float = 0.0) -> Tensor:
    """(H, W) grid -> float32 tensor in [0, 1]: (x - vmin) / (vmax - vmin), clipped; vmin = vmax = 0:
    the grid's own min and max (a constant grid becomes 0.5)."""
    if vmin == 0.0 and vmax == 0.0:
        vmin, vmax = float(grid.min()), float(grid.max())
        if vmax <= vmin:
            return torch.full(grid.shape, 0.5)
    return torch.from_numpy(np.clip((grid - vmin) / (vmax - vmin), 0.0, 1.0)).float()


def grid_files(folder: str | Path) -> list[Path]:
    """The .npy / .nc files of a folder, sorted by name (MetaINRError when there are none)."""
    return folder_files(folder, GRID_SUFFIXES, "grids")


def load_climate(source: str, split: str, height: int = 0, width: int = 0, count: int = 400, val_count: int = 16,
                 variable: str = "", vmin: float = 0.0, vmax: float = 0.0) -> Tensor:
    """Maps (n, H, W) in [0, 1] of ``source`` for ``split`` (train | val | test).

    ``climate``: ``count`` (train) or ``val_count`` (val, test) procedural maps at height x width
    (0: 46x90), disjoint seeds per split. A file or a folder of .npy / .nc files: every grid (a
    .npy holds one, a NetCDF file one per time step; all of one size, else MetaINRError), in file
    then time order; ``train`` all but the last 10%, ``val`` that last 10% (needs 10 grids or
    more), ``test`` all; a single grid serves every split. Grids are not resized: ``height`` /
    ``width``, when set, must match them.
    """
    if split not in SPLITS:
        raise MetaINRError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if source == "climate":
        n = count if split == "train" else val_count
        return climate_maps(n, height or 46, width or 90, seed=1 + SPLITS.index(split))
    path = Path(source)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = grid_files(path)
    else:
        raise MetaINRError(f"dataset not found: {source!r} is neither 'climate' nor a file or folder")
    maps: list[Tensor] = []
    for f in files:
        for grid in read_grids(f, variable):
            want = maps[0].shape if maps else (height or grid.shape[0], width or grid.shape[1])
            if grid.shape != tuple(want):
                raise MetaINRError(f"{f} is {grid.shape[0]}x{grid.shape[1]} but the grids must be "
                                   f"{want[0]}x{want[1]} (grids are not resized)")
            maps.append(normalize(grid, vmin, vmax))
            check_signals(len(maps), f"dataset {path}")
    n_val = len(maps) // 10
    if len(maps) > 1:
        if split == "val" and not n_val:
            raise MetaINRError(f"{path} holds {len(maps)} grids: too few to hold back validation grids "
                               "(10 or more are needed)")
        maps = maps[:-n_val] if split == "train" and n_val else maps[-n_val:] if split == "val" else maps
    return torch.stack(maps)
