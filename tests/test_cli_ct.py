"""The one command line on CT: the same verbs as images, options from the CT task's config and
preset, GradNCP + Meta-SGD + RWF + sparse end to end at tiny sizes, fits of sinogram files."""
import json
import math

import numpy as np
import pytest
import torch

from metainr.data.ct import ellipse_phantoms
from metainr.tasks.ct_geometry import radon
from metainr.train import load_learner



def _save_sinogram(tmp_path, n_views=4, size=32):
    image = ellipse_phantoms(1, size, seed=9)[0]
    angles = torch.arange(n_views) * 180.0 / n_views
    np.save(tmp_path / "sino.npy", radon(image, angles).numpy())
    np.save(tmp_path / "ref.npy", image.numpy())
    return tmp_path / "sino.npy", tmp_path / "ref.npy"


def test_gradncp_metasgd_rwf_sparse_on_ct_runs_end_to_end(tmp_path, cli):
    run_dir = tmp_path / "R"
    code, _, err = cli("meta-train", "--task", "ct", "--learner", "metasgd", "--context", "gradnorm",
                       "--keep-ratio", "0.25", "--boot-steps", "5", "--rwf", "--prune-rounds", "3", "--run", run_dir,
                       "--resolution", "16", "--count", "8", "--val-count", "2", "--steps", "2", "--prune-steps", "1",
                       "--batch-size", "2", "--width", "8", "--depth", "3", "--eval-steps", "2", "--device", "cpu")
    assert code == 0, err
    assert "round 3: density 0.5" in err and "meta-training done:" in err
    rounds = sorted(run_dir.glob("round_*_density_*.safetensors"))
    assert [p.name[:8] for p in rounds] == ["round_00", "round_01", "round_02", "round_03"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["task"]["name"] == "ct" and config["task"]["resolution"] == 16 and config["data"]["source"]
    assert config["field"]["rwf"] is True and config["field"]["sparse"] is True and config["field"]["width"] == 8
    assert config["learner"]["name"] == "metasgd"
    assert config["learner"]["context"]["policy"] == "gradnorm" and config["learner"]["context"]["boot_steps"] == 5
    assert config["train"]["eval_steps"] == 2 and config["train"]["outer_lr"] == 1e-3  # the CT preset under the user
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 5 and all(math.isfinite(r["loss"]) for r in records)
    learner, meta = load_learner(rounds[-1])
    assert meta["task"]["name"] == "ct" and learner.policy.prunes and learner.field.config.out_dim == 1


def test_fit_from_a_meta_trained_ct_checkpoint_writes_png_npy_and_reports_psnr(tmp_path, cli):
    sino, ref = _save_sinogram(tmp_path)
    code, _, err = cli("meta-train", "--task", "ct", "--data", "ct-phantoms", "--resolution", 32, "--count", 20,
                       "--val-count", 2, "--run", tmp_path / "run", "--steps", 3, "--batch-size", 2, "--width", 16,
                       "--depth", 3, "--eval-steps", 2)
    assert code == 0, err
    ckpt = tmp_path / "run" / "checkpoint.safetensors"
    learner, meta = load_learner(ckpt)  # the task comes with the checkpoint; the field is an image field
    assert meta["task"]["name"] == "ct" and learner.name == "reptile" and learner.field.config.out_dim == 1
    assert learner.config.inner_steps == 12  # the CT preset's learner and options
    code, out, err = cli("fit", sino, "--init", ckpt, "--angles", "0:180:4", "--reference", ref,
                         "--out", tmp_path / "recon.png", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["task"] == "ct" and report["steps"] == [12]  # the longer of inner (12) and validation (2) steps
    assert math.isfinite(report["final_psnr"]) and report["final_ssim"] is not None
    assert report["holdout"] == 0.1 and 0 <= report["chosen_step"] <= 12  # CT from few views: held-out stopping
    assert report["outputs"] == [str(tmp_path / "recon.png"), str(tmp_path / "recon.npy")]
    recon = np.load(tmp_path / "recon.npy")
    assert recon.shape == (32, 32) and (tmp_path / "recon.png").is_file()


def test_fit_ct_from_random_init(tmp_path, cli):
    sino, ref = _save_sinogram(tmp_path)  # 32 detectors: the task takes the file's geometry (default 64)
    code, out, err = cli("fit", sino, "--init", "random", "--task", "ct", "--steps", 20, "--width", 16,
                         "--json", "--reference", ref, "--record", 0)
    assert code == 0, err
    report = json.loads(out)
    assert report["optimizer"] == "adam" and report["final_psnr"] > 5 and (tmp_path / "sino.recon.png").is_file()
    assert report["psnr"][-1] > report["psnr"][0]
    code, out, err = cli("fit", sino, "--init", "random", "--task", "ct", "--steps", 2, "--width", 16, "--json")
    assert code == 0, err
    report = json.loads(out)  # nothing to compare with: no metrics, the reconstruction is still written
    assert report["psnr"] == [] and report["final_psnr"] is None and report["final_ssim"] is None
    assert np.load(tmp_path / "sino.recon.npy").shape == (32, 32)


def test_eval_on_held_out_phantoms_from_a_random_ct_init(cli):
    code, out, err = cli("eval", "--init", "random", "--task", "ct", "--data", "ct-phantoms", "--resolution",
                         16, "--val-count", 2, "--val-views", "2,4", "--width", 8, "--depth", 3, "--steps", "0,3",
                         "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["signals"] == 2 and report["fits_per_signal"] == 2 and report["steps"] == [0, 3]
    assert report["task"]["name"] == "ct" and all(math.isfinite(v) for v in report["psnr"])


def test_ct_options_and_preset_come_from_the_task(cli):
    code, out, _ = cli("meta-train", "--task", "ct", "--help")
    assert code == 0
    for option in ("--resolution", "--sampling {pixels,field}", "--min-views", "--max-views", "--val-views",
                   "--angles", "--count", "--val-count", "--no-score-image", "--inner-optimizer {sgd,adam}"):
        assert option in out, option
    assert "learner 'reptile'" in out  # the CT preset's learner
    code, out, _ = cli("fit", "x.npy", "--init", "random", "--task", "ct", "--help")
    assert code == 0 and "--angles" in out and "--reference" in out


@pytest.mark.parametrize("argv, message", [
    (["fit", "{tmp}/missing.npy", "--init", "random", "--task", "ct"], "sinogram file not found"),
    (["fit", "{sino}", "--init", "random", "--task", "ct", "--angles", "0:180:5"],
     "5 angles given for a sinogram of 4 views"),
    (["fit", "{sino}", "--init", "random", "--task", "ct", "--angles", "a,b"], "angles must be"),
    (["fit", "{sino}", "--init", "{tmp}/none.safetensors"], "checkpoint not found"),
    (["fit", "{sino}", "--init", "random", "--task", "ct", "--reference", "{tmp}/sino.npy"],
     "the reference must be 32x32"),
    (["meta-train", "--task", "ct", "--resolution", "4", "--run", "{tmp}/r"], "resolution must be at least 8"),
    (["meta-train", "--task", "ct", "--sampling", "rays", "--run", "{tmp}/r"], "invalid choice"),
    (["meta-train", "--task", "ct", "--min-views", "5", "--max-views", "2", "--run", "{tmp}/r"], "views must satisfy"),
    (["meta-train", "--task", "ct", "--count", "0", "--run", "{tmp}/r"], "expected a positive integer"),
    (["meta-train", "--task", "ct", "--val-views", "2,x", "--run", "{tmp}/r"], "comma-separated ints"),
    (["eval", "--init", "random", "--task", "ct", "--split", "nope", "--resolution", "16"], "split must be one of"),
])
def test_ct_mistakes_end_with_one_line_errors(tmp_path, cli, argv, message):
    sino, _ = _save_sinogram(tmp_path)
    code, out, err = cli(*[a.format(tmp=tmp_path, sino=sino) for a in argv])
    assert code in (1, 2) and out == ""
    assert err.startswith("metainr: error:") and message in err and len(err.strip().splitlines()) == 1, err
