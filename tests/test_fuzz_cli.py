"""Fuzz-style: a few hundred hostile option values and truncated or mutated files fed to the CLI
under a memory limit (``resource.setrlimit`` in a subprocess). See tests/hostile.py for the cases
and the invariants (no traceback, one error line, no NaN output with exit 0, no file outside
the case's outputs touched)."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

TESTS = Path(__file__).resolve().parent
MEMORY_LIMIT = 3 << 30  # address space: torch's import + a tiny field fit in well under this

SCRIPT = textwrap.dedent("""
    import json, resource, sys
    sys.path.insert(0, {tests!r})
    resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
    import torch
    torch.set_num_threads(2)
    from pathlib import Path
    import hostile
    root = hostile.make_sandbox(Path({root!r}))
    cases = hostile.named_cases() + hostile.random_cases({n}, seed={seed})
    outcomes = hostile.run_cases(root, cases, seed={seed}, timeout=5.0)
    print(json.dumps([dict(name=o.name, code=o.code, problems=o.problems, timed_out=o.timed_out,
                           message=o.message) for o in outcomes]))
""")


def test_hostile_inputs_never_crash_print_nan_or_touch_other_files(tmp_path):
    script = SCRIPT.format(tests=str(TESTS), limit=MEMORY_LIMIT, root=str(tmp_path / "sandbox"), n=300, seed=11)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    outcomes = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(outcomes) > 300
    bad = [o for o in outcomes if o["problems"]]
    assert not bad, "\n".join(f"{o['name']}: {o['problems']}" for o in bad[:10])
    # the cases exercise both sides: refusals (1 or 2) and runs that succeed
    codes = {o["code"] for o in outcomes}
    assert {0, 1, 2} <= codes
    assert sum(o["timed_out"] for o in outcomes) <= 10
