"""The zoo of packaged inits: every entry loads and scores as its manifest says; ``zoo:NAME`` works
wherever a checkpoint does; a meta-learned face init beats a random one on a held-out face."""
import json

import pytest
from PIL import Image

from metainr import MetaINRError, fit_from_checkpoint, load_learner, task_from_meta
from metainr.disk import load_tensors
from metainr.zoo import INITS, zoo_entries, zoo_path

BUDGET_BYTES = 600 * 1024
"""the whole zoo (checkpoints + manifest) ships in the wheel: a few hundred KB"""
EXPECTED = {"faces", "patches", "ct-phantoms", "chairs", "pans", "notes", "climate", "glyphs", "shapes"}
FACE_MARGIN_DB = 15.0
"""zoo:faces over a random init of its field after 3 steps on a held-out face (measured: 40.47 vs 17.37 dB, +23.1)"""

ENTRIES = zoo_entries()


def test_zoo_has_one_init_per_bundled_class():
    assert {e["name"] for e in ENTRIES} == EXPECTED


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["name"] for e in ENTRIES])
def test_every_zoo_init_loads_strictly_and_carries_its_scores(entry):
    learner, meta = load_learner(f"zoo:{entry['name']}")  # strict: every tensor, no more, no less
    task = task_from_meta(meta)
    assert task.name == entry["task"] and learner.name == entry["learner"]
    field = learner.field.config
    assert (field.kind, field.width, field.depth) == tuple(entry["field"][k] for k in ("kind", "width", "depth"))
    assert (field.in_dim, field.out_dim) == (task.in_dim, task.out_dim)
    assert sum(p.numel() for p in learner.field.parameters()) == entry["params"]
    zoo = meta["zoo"]
    assert (zoo["psnr"], zoo["random_psnr"], zoo["steps"]) == (entry["psnr"], entry["random_psnr"], entry["steps"])
    assert meta["step"] == entry["outer_steps"] and meta["train"]["outer_lr"] == entry["outer_lr"]
    tensors, _ = load_tensors(zoo_path(entry["name"]))
    assert tensors and not any(k.startswith("adam/") for k in tensors)  # no optimizer state


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["name"] for e in ENTRIES])
def test_every_zoo_init_beats_a_random_init_on_held_out_data(entry):
    assert entry["psnr"] > entry["random_psnr"], entry


def test_zoo_size_is_within_budget_and_the_manifest_has_the_file_sizes():
    for e in ENTRIES:
        assert e["bytes"] == zoo_path(e["name"]).stat().st_size
    total = sum(p.stat().st_size for p in INITS.iterdir() if p.suffix in (".safetensors", ".json"))
    assert total <= BUDGET_BYTES, f"the zoo is {total / 1024:.0f} KB"


def test_zoo_listing_matches_the_manifest(cli):
    code, out, err = cli("zoo", "--json")
    assert code == 0, err
    assert json.loads(out) == ENTRIES == json.loads((INITS / "zoo.json").read_text())["entries"]
    code, out, _ = cli("zoo")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["name", "task", "learner"]
    for e in ENTRIES:
        row = next(line for line in lines if line.startswith(e["name"] + " "))
        assert f"{e['psnr']:.2f} dB" in row and f"{e['random_psnr']:.2f} dB" in row
    code, out, _ = cli("zoo", "faces")
    assert code == 0 and json.loads(out)["path"] == str(zoo_path("faces"))


def test_eval_from_zoo_faces_reproduces_its_held_out_scores(cli):
    faces = next(e for e in ENTRIES if e["name"] == "faces")
    steps = str(faces["steps"])
    code, out, err = cli("eval", "--init", "zoo:faces", "--split", "test", "--steps", steps, "--json")
    assert code == 0, err
    assert json.loads(out)["psnr"][-1] == pytest.approx(faces["psnr"], abs=0.05)
    code, out, err = cli("eval", "--init", "random", "--data", "faces", "--split", "test", "--steps", steps,
                         "--width", str(faces["field"]["width"]), "--depth", str(faces["field"]["depth"]), "--json")
    assert code == 0, err
    assert json.loads(out)["psnr"][-1] == pytest.approx(faces["random_psnr"], abs=0.05)


def test_fit_from_zoo_faces_beats_a_random_init_of_its_field(cli, face_png, tmp_path):
    code, out, err = cli("fit", face_png, "--init", "zoo:faces", "--steps", "3", "--json", "--out",
                         tmp_path / "zoo.png")
    assert code == 0, err
    zoo = json.loads(out)["final_psnr"]
    code, out, err = cli("fit", face_png, "--init", "random", "--width", "64", "--depth", "4", "--steps", "3",
                         "--json", "--out", tmp_path / "random.png")
    assert code == 0, err
    random = json.loads(out)["final_psnr"]
    assert zoo > random + FACE_MARGIN_DB, (zoo, random)
    fitted = fit_from_checkpoint("zoo:faces", face_png, steps=3)  # the same fit in Python
    assert float(fitted.result.psnr[0, -1]) == pytest.approx(zoo, abs=1e-3)


def test_render_reads_a_zoo_init(cli, tmp_path):
    code, _, err = cli("render", "zoo:shapes", "--views", "2", "--resolution", "8", "--out", tmp_path / "s.png")
    assert code == 0, err
    assert Image.open(tmp_path / "s.png").size == (2 * 8, 8)


@pytest.mark.parametrize("argv", [["fit", "FACE", "--init", "zoo:nope"], ["eval", "--init", "zoo:nope"],
                                  ["render", "zoo:nope"], ["zoo", "nope"]])
def test_an_unknown_zoo_name_is_one_line_naming_the_available_ones(cli, face_png, argv):
    code, out, err = cli(*[face_png if a == "FACE" else a for a in argv])
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert "no zoo init named 'nope'" in err and "faces" in err and "shapes" in err
    with pytest.raises(MetaINRError, match="available: faces"):
        load_learner("zoo:nope")
