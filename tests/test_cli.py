"""The command line as a user meets it: outputs, files, and one-line errors for mistakes."""
import json
import subprocess
import sys

import pytest
from PIL import Image

from metainr.cli import main



@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    code = main(["meta-train", "--data", "faces", "--run", str(run_dir), "--width", "16", "--depth", "3",
                 "--steps", "4", "--batch-size", "4", "--inner-steps", "2", "--eval-every", "2", "--device", "cpu"])
    assert code == 0
    return run_dir / "checkpoint.safetensors"


def test_meta_train_writes_checkpoint_config_and_log(ckpt):
    run_dir = ckpt.parent
    assert ckpt.is_file() and (run_dir / "best.safetensors").is_file()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["field"]["width"] == 16 and config["learner"]["config"]["inner_steps"] == 2
    # the task is settled on the data: its checkpoint rebuilds a 25x25 grey image task
    assert config["task"] == {"name": "image", "resolution": 25, "channels": 1, "patch_size": 0}
    assert config["field"]["out_dim"] == 1 and config["data"]["source"] == "faces"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_psnr" in r] == [2, 4]


def test_meta_train_resume_continues_to_more_steps(ckpt, cli, tmp_path):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(ckpt.parent, run_dir)
    code, _, _ = cli("meta-train", "--data", "faces", "--run", run_dir, "--width", "16", "--depth", "3",
                     "--steps", "6", "--batch-size", "4", "--inner-steps", "2", "--eval-every", "2", "--resume")
    assert code == 0
    from metainr.disk import load_tensors

    assert load_tensors(run_dir / "checkpoint.safetensors")[1]["step"] == 6


def test_fit_json_reports_per_step_psnr_and_writes_reconstruction(ckpt, face_png, cli, tmp_path):
    out = tmp_path / "recon.png"
    code, stdout, _ = cli("fit", face_png, "--init", ckpt, "--steps", "3", "--json", "--record", "0,1,2",
                          "--out", out, "--save-field", tmp_path / "f.safetensors", "--device", "cpu")
    assert code == 0
    report = json.loads(stdout)
    assert report["steps"] == [0, 1, 2, 3] and len(report["psnr"]) == 4
    assert report["psnr"][-1] > report["psnr"][0]
    assert report["final_psnr"] == pytest.approx(report["psnr"][-1], abs=1e-3)
    assert report["task"] == "image" and report["output"] == str(out) and 0 < report["final_ssim"] <= 1
    assert Image.open(out).size == (25, 25)
    assert (tmp_path / "f.safetensors").is_file()


def test_fit_defaults_to_the_inner_steps_and_writes_beside_the_file(ckpt, face_png, cli):
    code, stdout, _ = cli("fit", face_png, "--init", ckpt, "--json")
    assert code == 0
    report = json.loads(stdout)
    assert report["steps"] == [2] and report["output"] == str(face_png.with_suffix(".recon.png"))  # the last only
    assert face_png.with_suffix(".recon.png").is_file()


def test_fit_from_random_init_uses_adam(face_png, cli, tmp_path):
    code, stdout, _ = cli("fit", face_png, "--init", "random", "--steps", "30", "--json", "--record", "0",
                          "--width", "16", "--depth", "3", "--out", tmp_path / "r.png")
    assert code == 0
    report = json.loads(stdout)
    assert report["optimizer"] == "adam" and report["psnr"][-1] > report["psnr"][0] + 3


def test_eval_json(ckpt, cli):
    code, stdout, _ = cli("eval", "--init", ckpt, "--data", "faces", "--steps", "0,2", "--json")
    assert code == 0
    report = json.loads(stdout)
    assert report["steps"] == [0, 2] and report["signals"] == 20 and report["psnr"][1] > report["psnr"][0]
    assert 0 < report["final_ssim"] <= 1


def test_plot_writes_png(ckpt, cli):
    code, _, _ = cli("plot", ckpt.parent)
    assert code == 0 and (ckpt.parent / "training.png").stat().st_size > 1000


def test_options_come_from_the_chosen_task_and_learner(cli):
    code, out, _ = cli("meta-train", "--help")
    assert code == 0 and "--resolution" in out and "--inner-steps" in out and "--keep-ratio" in out
    assert "--sampling" not in out and "--hyper-dim" not in out
    code, out, _ = cli("meta-train", "--learner", "transinr", "--help")
    assert code == 0 and "--hyper-dim" in out and "--inner-steps" not in out and "--tokens" not in out
    code, out, _ = cli("meta-train", "--learner", "reptile", "--help")
    assert code == 0 and "--inner-optimizer {sgd,adam}" in out


@pytest.mark.parametrize("argv, message", [
    (["fit", "missing.png", "--init", "random"], "image file not found"),
    (["meta-train", "--data", "EMPTY", "--run", "RUN"], "no images"),
    (["meta-train", "--data", "faces", "--resolution", "0", "--run", "RUN"], "expected a positive integer"),
    (["fit", "FACE", "--init", "random", "--resolution", "-3"], "expected a positive integer"),
    (["fit", "CORRUPT", "--init", "random"], "cannot read image"),
    (["fit", "FACE", "--init", "NOTCKPT"], "cannot read checkpoint"),
    (["fit", "FACE", "--init", "CKPT", "--width", "64"], "field options only apply"),
    (["fit", "FACE", "--init", "CKPT", "--task", "ct"], "was trained on task 'image'"),
    (["meta-train", "--data", "faces", "--run", "RESUMEDIR", "--width", "32", "--depth", "3", "--resume"],
     "width=16 but this run has width=32"),
    (["meta-train", "--data", "faces", "--run", "RUN", "--inner-lr", "1e30", "--steps", "3", "--width", "8"],
     "diverged at outer step 1"),
    (["eval", "--init", "random", "--data", "faces", "--steps", "1,x"], "comma-separated integers"),
    (["meta-train", "--data", "faces", "--run", "RUN", "--batch-size", "0"], "batch_size >= 1"),
    (["meta-train", "--data", "faces", "--run", "RUN", "--learner", "nope"], "invalid choice"),
    (["meta-train", "--task", "nope", "--run", "RUN"], "invalid choice"),
    (["meta-train", "--data", "faces", "--run", "RUN", "--inner-optimizer", "adam"], "unrecognized arguments"),
    (["fit", "FACE", "--init", "random", "--bogus-option"], "unrecognized arguments"),
    (["fit", "FACE", "--init", "CKPT", "--save-field", "RUN", "--compact"], "needs --save-field PATH and a sparse"),
    (["fit", "FACE", "--init", "random", "--rescale", "1.5"], "--rescale must be a keep ratio"),
    (["fit", "FACE", "--init", "random", "--device", "tpu"], "unknown device"),
    (["plot", "RESUMEDIR", "--selected", "faces"], "--selected needs a run with a pruning context policy"),
    (["meta-train", "--data", "faces", "--run", "RUN", "--learner", "gradncp", "--keep-ratio", "0"],
     "keep_ratio must be in (0, 1]"),
    (["meta-train", "--data", "faces", "--run", "RUN", "--context", "sometimes"], "invalid choice"),
])
def test_user_mistakes_give_one_line_errors(argv, message, ckpt, face_png, tmp_path, cli):
    import shutil

    (tmp_path / "empty").mkdir()
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "notckpt.safetensors").write_bytes(b"garbage")
    resume_dir = tmp_path / "resume"
    shutil.copytree(ckpt.parent, resume_dir)
    subs = {"EMPTY": str(tmp_path / "empty"), "RUN": str(tmp_path / "run"), "FACE": str(face_png),
            "CORRUPT": str(tmp_path / "corrupt.png"), "NOTCKPT": str(tmp_path / "notckpt.safetensors"),
            "CKPT": str(ckpt), "RESUMEDIR": str(resume_dir)}
    code, _, err = cli(*[subs.get(a, a) for a in argv])
    assert code in (1, 2)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("metainr: error:"), err
    assert message in lines[0]


def test_bad_options_exit_2_and_user_errors_exit_1(face_png, cli):
    assert cli("fit", face_png, "--init", "random", "--bogus-option")[0] == 2
    assert cli("fit", face_png.with_name("nope.png"), "--init", "random")[0] == 1


def test_missing_cuda_is_a_one_line_error(face_png, cli):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = cli("fit", face_png, "--init", "random", "--device", "cuda", "--steps", "1")
    assert code == 1 and err.startswith("metainr: error:") and "CUDA is not available" in err
    assert len(err.strip().splitlines()) == 1


def test_installed_command_exits_nonzero_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "metainr.cli", "fit", str(tmp_path / "nope.png"), "--init", "random"],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and proc.stderr.strip().startswith("metainr: error: image file not found")


def test_prune_rounds_from_the_cli_and_compact_export(face_png, cli, tmp_path):
    code, _, err = cli("meta-train", "--data", "faces", "--width", "16", "--depth", "3", "--steps", "4",
                       "--batch-size", "4", "--prune-rounds", "2", "--prune-steps", "2", "--run", tmp_path / "p")
    assert code == 0 and "round 2: density 0.641" in err
    ckpt = tmp_path / "p" / "round_02_density_0.641.safetensors"
    code, stdout, _ = cli("fit", face_png, "--init", ckpt, "--steps", "2", "--json", "--out",
                          tmp_path / "r.png", "--save-field", tmp_path / "c.safetensors", "--compact")
    assert code == 0
    report = json.loads(stdout)
    assert report["field_bytes"] == (tmp_path / "c.safetensors").stat().st_size
    assert report["bits_per_value"] == pytest.approx(8 * report["field_bytes"] / 625)


def test_gradncp_from_the_cli_rescaled_fit_and_selected_plot(face_png, cli, tmp_path):
    run_dir = tmp_path / "gradncp"
    code, _, err = cli("meta-train", "--data", "faces", "--run", run_dir, "--learner", "gradncp",
                       "--keep-ratio", "0.25", "--boot-steps", "2", "--inner-steps", "4", "--width", "16",
                       "--depth", "3", "--steps", "3", "--batch-size", "2")
    assert code == 0, err
    config = json.loads((run_dir / "config.json").read_text())["learner"]
    assert config["context"]["policy"] == "gradnorm" and config["context"]["test_rescale"] is True
    ckpt = run_dir / "checkpoint.safetensors"
    reports = {}
    for flag in ([], ["--rescale", "0"]):
        code, out, err = cli("fit", face_png, "--init", ckpt, "--steps", "3", "--json", "--record", "0,1", "--no-guard",
                             "--out", tmp_path / "r.png", *flag)
        assert code == 0, err
        reports[bool(flag)] = json.loads(out)["psnr"]
    assert reports[False][0] == reports[True][0] and reports[False][1] != reports[True][1]  # rescaling on by default
    code, _, err = cli("plot", run_dir, "--selected", face_png)
    assert code == 0, err
    assert (run_dir / "selected.png").stat().st_size > 1000


def test_learners_compose_with_context_policies_and_fields(cli, tmp_path):
    # Meta-SGD with the random context policy on an RWF field; TransINR sized from the task's tokens
    code, _, err = cli("meta-train", "--data", "faces", "--run", tmp_path / "m", "--learner", "metasgd",
                       "--context", "random", "--keep-ratio", "0.5", "--rwf", "--width", "8", "--depth", "3",
                       "--steps", "2", "--batch-size", "2", "--eval-every", "0")
    assert code == 0, err
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["learner"]["name"] == "metasgd" and config["learner"]["context"]["policy"] == "random"
    assert config["field"]["rwf"] is True
    code, _, err = cli("meta-train", "--data", "faces", "--run", tmp_path / "t", "--learner", "transinr",
                       "--field", "pe", "--width", "8", "--depth", "3", "--hyper-dim", "16", "--hyper-depth", "1",
                       "--n-groups", "4", "--steps", "2", "--batch-size", "2", "--eval-every", "0")
    assert code == 0, err
    config = json.loads((tmp_path / "t" / "config.json").read_text())["learner"]["config"]
    assert config["tokens"] == 25 and config["token_dim"] == 25  # 25x25 faces: 5x5 patches of 5x5 pixels
