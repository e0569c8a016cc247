"""Fitting a user's file in one library call (fit_from_checkpoint): the same fit `metainr fit` runs,
from a checkpoint and from a random init, for any task (NeRV rows switched for video)."""
import json

import pytest
from PIL import Image

from metainr import FieldConfig, fit_from_checkpoint
from metainr.data.clips import pans, write_gif
from metainr.data.images import faces


@pytest.fixture
def face(tmp_path):
    image = (faces("test", resolution=8).images[0, ..., 0].numpy() * 255).round().astype("uint8")
    Image.fromarray(image).save(tmp_path / "face.png")
    return tmp_path / "face.png"


def _cli_psnr(cli, *argv):
    code, out, err = cli("fit", *argv, "--json")
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1])["final_psnr"]


def test_from_a_checkpoint_it_is_the_fit_the_cli_reports(cli, tmp_path, face):
    code, _, err = cli("meta-train", "--data", "faces", "--resolution", "8", "--width", "8", "--depth", "3",
                       "--steps", "3", "--batch-size", "2", "--run", tmp_path / "run")
    assert code == 0, err
    ckpt = tmp_path / "run" / "checkpoint.safetensors"
    fitted = fit_from_checkpoint(ckpt, face, steps=3)
    assert fitted.steps == 3 and fitted.task.name == "image" and fitted.rule.optimizer == "sgd"
    assert abs(float(fitted.result.psnr[0, -1]) - _cli_psnr(cli, face, "--init", ckpt, "--steps", "3")) < 1e-3
    code, out, err = cli("fit", face, "--init", ckpt, "--json", "--out", tmp_path / "d.png")
    assert code == 0, err
    assert fit_from_checkpoint(ckpt, face).steps == json.loads(out.strip().splitlines()[-1])["steps"][-1]


def test_from_random_it_is_the_fit_the_cli_reports(cli, face):
    fitted = fit_from_checkpoint("random", face, 5, task="image", field=FieldConfig(width=16, depth=3))
    assert fitted.rule.optimizer == "adam" and fitted.field.params["head.weight"].shape == (1, 16)
    cli_psnr = _cli_psnr(cli, face, "--init", "random", "--steps", "5", "--width", "16", "--depth", "3")
    assert abs(float(fitted.result.psnr[0, -1]) - cli_psnr) < 1e-3


def test_a_random_nerv_fit_of_a_clip_uses_frame_rows(tmp_path):
    write_gif(tmp_path / "clip.gif", pans("test", 1, 4, 8, 8)[0])
    fitted = fit_from_checkpoint("random", tmp_path / "clip.gif", 2, task="video",
                                 field=FieldConfig(kind="nerv", width=8, depth=4))
    assert fitted.task.config.rows == "frames" and fitted.batch.values.shape == (1, 4, 8 * 8 * 3)
    with pytest.raises(ValueError, match="needs a task"):
        fit_from_checkpoint("random", tmp_path / "clip.gif")
