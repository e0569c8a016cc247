"""Tasks from other packages: a package that declares a Task class in the ``metainr.tasks``
entry-point group is reachable by ``--task`` (and by ``build_task``) once installed; a broken
plugin is skipped with a warning and never stops the built-in tasks."""
import subprocess
import sys
import textwrap
from pathlib import Path

PLUGIN = textwrap.dedent('''
    from dataclasses import dataclass

    import torch

    from metainr.config import Config
    from metainr.tasks import Batch, Preset, Task


    @dataclass(frozen=True)
    class RampConfig(Config):
        """1D ramps on 32 points."""

        count: int = 16
        """training signals"""


    class Ramps(Task):
        name, Config = "ramps", RampConfig
        in_dim, out_dim = 1, 1
        preset = Preset(data="ramps")

        def batch(self, signals):
            grid = torch.linspace(-1, 1, signals.shape[1], dtype=signals.dtype)[:, None]
            return Batch(grid, signals[..., None])

        def load(self, source, split):
            slopes = torch.linspace(0.1, 0.4, self.config.count)[:, None]
            return 0.5 + slopes * torch.linspace(-1, 1, 32)
''')


def _install(root: Path, target: str) -> None:
    """A fake installed distribution under ``root``: the module and a dist-info with the entry point."""
    (root / "rampsplugin.py").write_text(PLUGIN)
    info = root / "rampsplugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rampsplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[metainr.tasks]\nramps = {target}\n")


def _metainr(root: Path, *argv: str) -> subprocess.CompletedProcess:
    env_path = str(root)
    code = f"import sys; sys.path.insert(0, {env_path!r}); from metainr.cli import main; sys.exit(main({list(argv)!r}))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=root)


def test_a_task_installed_through_the_entry_point_is_reachable_by_task(tmp_path):
    _install(tmp_path, "rampsplugin:Ramps")
    proc = _metainr(tmp_path, "meta-train", "--task", "ramps", "--width", "8", "--depth", "2", "--steps", "2",
                    "--batch-size", "2", "--run", "run")
    assert proc.returncode == 0, proc.stderr
    assert '"name": "ramps"' in (tmp_path / "run" / "config.json").read_text()


def test_a_broken_plugin_is_skipped_with_a_warning(tmp_path):
    _install(tmp_path, "rampsplugin:NoSuchTask")
    proc = _metainr(tmp_path, "meta-train", "--task", "image", "--help")
    assert proc.returncode == 0 and "ramps" in proc.stderr and "failed to load" in proc.stderr
