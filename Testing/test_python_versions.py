"""The Slicer-facing code that runs in Slicer's own Python (no torch there), on the Pythons the
Slicer releases ship: 3.9 (Slicer 5.6, 5.8) and 3.12 (Slicer 5.10, 5.12).

Every file byte-compiles, and the plain-Python parts (protocol, client, slider, session, panel
texts, logic, dependencies) import and run a few steps with nothing but the standard library.
Interpreters are found as ``python3.9`` / ``python3.12`` on the PATH, in pyenv, or through
``LDAE_PYTHON_3_9`` / ``LDAE_PYTHON_3_12``; a missing one skips its tests.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FILES = [REPO / "LDAE" / "LDAE.py", REPO / "LDAELib" / "__init__.py", REPO / "LDAELib" / "errors.py", REPO / "LDAELib" / "resources" / "__init__.py",
         *sorted((REPO / "LDAELib" / "slicer").glob("*.py")), *sorted((REPO / "LDAELib" / "server").glob("*.py"))]
VERSIONS = ["3.9", "3.12"]

SMOKE = textwrap.dedent("""
    import sys
    from LDAELib.server import protocol
    from LDAELib.server.client import WorkerClient
    from LDAELib.slicer import panel_text
    from LDAELib.slicer.dependencies import torch_minimum
    from LDAELib.slicer.logic import LDAELogicBase
    from LDAELib.slicer.session import PanelRuns
    from LDAELib.slicer.slider import PreviewRequest, SliderPreviews, PROMOTE

    assert protocol.loads(protocol.dumps({"op": "edit", "alphas": [float("nan"), 1.5]})) == {"op": "edit", "alphas": [None, 1.5]}
    cmd = WorkerClient("/models/x", python=sys.executable, device="cpu", threads=2).command()
    assert cmd[1:4] == ["-u", "-m", "LDAELib.server.worker"] and "--threads" in cmd
    now = [0.0]
    s = SliderPreviews(lambda: now[0])
    s.press(); s.move(1.0); now[0] += 1; assert s.take() == PreviewRequest(1.0, False)
    s.release(1.0, "k"); r = s.take(); s.started(r); s.finished(r, True); assert s.apply(1.0, "k") == PROMOTE
    runs = PanelRuns()
    assert not runs.busy and not runs.polling
    assert panel_text.interpolation_points("3, 6 9", True) == {"months": [3.0, 6.0, 9.0], "fractions": None}
    assert torch_minimum(sys.version_info[:2]) in ("2.4.1", "2.8.0")
    assert LDAELogicBase().isLoaded() is False
    print("ok", sys.version_info[:2])
""")


def interpreter(version: str) -> str | None:
    """A working Python ``version``: from the environment variable, pyenv's folders, or the PATH."""
    candidates = [os.environ.get("LDAE_PYTHON_" + version.replace(".", "_")),
                  *sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python")), reverse=True),
                  shutil.which(f"python{version}")]
    for python in filter(None, candidates):
        try:
            out = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True, text=True, timeout=30)
        except OSError:
            continue
        if out.returncode == 0 and out.stdout.strip() == version:  # a pyenv shim of an inactive version fails here
            return python
    return None


def _python(version: str) -> str:
    python = interpreter(version)
    if python is None:
        pytest.skip(f"no Python {version} here (set LDAE_PYTHON_{version.replace('.', '_')})")
    return python


@pytest.mark.parametrize("version", VERSIONS)
def test_the_slicer_facing_files_compile(version):
    code = "import sys\nfor f in sys.argv[1:]:\n    compile(open(f, encoding='utf-8').read(), f, 'exec')\nprint('ok')"
    proc = subprocess.run([_python(version), "-c", code, *map(str, FILES)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


@pytest.mark.parametrize("version", VERSIONS)
def test_their_plain_python_parts_import_and_run(version):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([_python(version), "-S", "-c", SMOKE], capture_output=True, text=True, timeout=120, env=env, cwd=str(REPO))
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stderr[-2000:]
