"""Fitted fields as files (save_field / load_field): exact round trips, plain and compact, with the
task they were fitted for; strict refusals in one line; the CLI's --save-field files load in Python
and reproduce the fit the CLI reported."""
import json

import pytest
import torch

from metainr import FittedField, Siren, build_field, load_field, magnitude_prune, save_field
from metainr.data.images import faces
from metainr.errors import MetaINRError
from metainr.fields import FieldConfig
from metainr.metrics import psnr
from metainr.disk import load_tensors, save_tensors
from metainr.tasks import ImageTask


def _field(**kw):
    return Siren(in_dim=2, out_dim=1, width=16, depth=3, **kw)


def test_save_then_load_gives_the_same_function_task_and_info(tmp_path):
    field = _field()
    params = {n: p.detach() + 0.01 * torch.randn_like(p) for n, p in field.named_parameters()}
    size = save_field(tmp_path / "f.safetensors", field, params, ImageTask(resolution=8, channels=1), steps=7)
    assert size == (tmp_path / "f.safetensors").stat().st_size
    back = load_field(tmp_path / "f.safetensors")
    coords = torch.rand(50, 2) * 2 - 1
    expected = torch.func.functional_call(field, params, (coords,))
    torch.testing.assert_close(back(coords), expected, rtol=0, atol=0)
    assert back.task.spec() == ImageTask(resolution=8, channels=1).spec() and back.info["steps"] == 7


def test_a_compact_sparse_field_keeps_its_function_and_task(tmp_path):
    field = build_field(FieldConfig(kind="siren", in_dim=2, out_dim=1, width=16, depth=3, sparse=True))
    magnitude_prune(field, 0.7)
    params = {n: p.detach() for n, p in field.named_parameters()}
    save_field(tmp_path / "c.safetensors", field, params, ImageTask(channels=1), compact=True)
    back = load_field(tmp_path / "c.safetensors")
    coords = torch.rand(40, 2) * 2 - 1
    torch.testing.assert_close(back(coords), torch.func.functional_call(field, params, (coords,)))
    assert back.task.name == "image"


def test_refusals_are_one_line(tmp_path):
    field = _field()
    save_tensors(tmp_path / "wrong.safetensors", {"x": torch.zeros(3)}, {"field": field.config.to_dict()})
    save_tensors(tmp_path / "ckpt.safetensors", {"x": torch.zeros(3)}, {"learner": {"name": "maml"}})
    save_tensors(tmp_path / "none.safetensors", {"x": torch.zeros(3)}, {})
    for name, match in (("wrong", "do not match"), ("ckpt", "load_learner"), ("none", "not a fitted field"),
                        ("missing", "not found")):
        with pytest.raises(MetaINRError, match=match) as info:
            load_field(tmp_path / f"{name}.safetensors")
        assert "\n" not in str(info.value)


def test_cli_save_field_loads_in_python_and_reproduces_the_reported_fit(cli, tmp_path):
    from PIL import Image

    image = (faces("test", resolution=16).images[0, ..., 0].numpy() * 255).round().astype("uint8")
    Image.fromarray(image).save(tmp_path / "face.png")
    code, out, err = cli("fit", tmp_path / "face.png", "--init", "random", "--steps", "20", "--width", "16",
                         "--depth", "3", "--save-field", tmp_path / "f.safetensors", "--json")
    assert code == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    fitted = load_field(tmp_path / "f.safetensors")
    assert isinstance(fitted, FittedField) and fitted.info["steps"] == 20
    batch = fitted.task.read(tmp_path / "face.png")
    recon = fitted.reconstruct(batch)
    assert abs(float(psnr(recon[None], batch.reference)) - report["final_psnr"]) < 1e-3
    _, meta = load_tensors(tmp_path / "f.safetensors")
    assert meta["task"]["name"] == "image" and meta["file"] == str(tmp_path / "face.png")
