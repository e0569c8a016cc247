import numpy as np
import pytest
import torch
from PIL import Image

from metainr import MetaINRError, faces, image_folder, patches
from metainr.data.images import PATCH_TEST_PHOTOS, PATCH_TRAIN_PHOTOS
from metainr.data import grid_coords, image_to_values, values_to_image


def test_grid_coords_span_minus_one_to_one_in_ij_order():
    c = grid_coords(3, 4)
    assert c.shape == (12, 2)
    assert c[0].tolist() == [-1.0, -1.0] and c[-1].tolist() == [1.0, 1.0]
    assert c[1].tolist() == [-1.0, pytest.approx(-1 / 3)]  # second pixel moves along the width axis
    img = torch.rand(2, 3, 4, 3)
    torch.testing.assert_close(values_to_image(image_to_values(img), 3, 4), img)


def test_faces_split_is_fixed_disjoint_and_in_range():
    train, test = faces("train"), faces("test")
    assert len(train) == 80 and len(test) == 20 and train.shape == (25, 25, 1)
    assert torch.equal(faces("test").images, test.images)
    flat_train = {tuple(x.flatten()[:20].tolist()) for x in train.images}
    assert not any(tuple(x.flatten()[:20].tolist()) in flat_train for x in test.images)
    assert 0.0 <= float(train.images.min()) and float(train.images.max()) <= 1.0


def test_patches_come_from_different_photos_and_are_deterministic():
    assert not set(PATCH_TRAIN_PHOTOS) & set(PATCH_TEST_PHOTOS)
    a = patches("test", 16, count=5, seed=3)
    assert a.images.shape == (5, 16, 16, 3)
    assert torch.equal(a.images, patches("test", 16, count=5, seed=3).images)
    assert not torch.equal(a.images, patches("test", 16, count=5, seed=4).images)


def test_image_folder_resizes_and_centre_crops(tmp_path):
    arr = np.zeros((40, 80, 3), dtype=np.uint8)
    arr[:, 20:60] = 255  # a white centre band exactly as wide as the centre crop
    Image.fromarray(arr).save(tmp_path / "b.png")
    Image.fromarray(arr[..., 0]).save(tmp_path / "a.jpg")
    ds = image_folder(tmp_path, resolution=20)
    assert ds.images.shape == (2, 20, 20, 3)
    assert float(ds.images[1].mean()) == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("bad", [0, -4])
def test_bad_resolution_is_rejected(bad, tmp_path):
    with pytest.raises(MetaINRError, match="resolution must be a positive integer"):
        faces("train", resolution=bad)
    with pytest.raises(MetaINRError, match="resolution"):
        image_folder(tmp_path, resolution=bad)


def test_empty_folder_and_corrupt_image_are_clear_errors(tmp_path):
    with pytest.raises(MetaINRError, match="no images"):
        image_folder(tmp_path, resolution=8)
    (tmp_path / "broken.png").write_bytes(b"\\x89PNG garbage")
    with pytest.raises(MetaINRError, match="cannot read image"):
        image_folder(tmp_path, resolution=8)
    with pytest.raises(MetaINRError, match="not found"):
        image_folder(tmp_path / "missing", resolution=8)
