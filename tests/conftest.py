import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(int(os.environ.get("METAINR_TEST_THREADS", "2")))
    yield


@pytest.fixture
def cli(capsys):
    """Run the ``metainr`` command in-process: ``cli(*argv) -> (exit code, stdout, stderr)``."""
    from metainr.cli import main

    def run(*argv):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse errors
            code = exc.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def face_png(tmp_path):
    """A held-out face of the bundled ``faces`` set as an 8-bit grey PNG."""
    import numpy as np
    from PIL import Image

    from metainr import faces

    arr = (faces("test").images[0, ..., 0].numpy() * 255).astype(np.uint8)
    path = tmp_path / "face.png"
    Image.fromarray(arr).save(path)
    return path
