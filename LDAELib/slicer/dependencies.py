"""Install what the LDAE worker needs into Slicer's Python, on first use (never at import time).

* **torch** only through the PyTorch extension (``PyTorchUtils``): its ``installTorch`` picks the
  build for the GPU driver. The version is checked from the installed package's metadata, never
  by importing torch (``PyTorchUtilsLogic.torchInstalled()`` imports it into the application, so
  it is not called). A missing or too old torch is asked for with the minimum below.
* **the rest** from the module's ``Resources/requirements.txt``: through ``slicer.packaging.pip_ensure``
  (Slicer 5.12 and later; torch and SimpleITK skipped) or, before 5.12, checked one by one from
  their metadata and installed with ``slicer.util.pip_install`` after asking (monai with
  ``--no-deps``, so pip never pulls a torch of its own).

The torch minimum follows the monai that pip picks for this Python (the requirements file pins
monai per Python version): monai 1.5.1-1.5.x (the last for Python 3.9) needs torch >= 2.4.1,
monai 1.6.x (Python >= 3.10) needs torch >= 2.8.0 (their wheels' ``Requires-Dist``).

Qt-free: everything Slicer-specific comes in as arguments; ``ensure_in_slicer`` gathers them
from the running application.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable, Sequence

from ..errors import LDAEError

TORCH_MINIMUM = (((3, 10), "2.8.0"), ((3, 0), "2.4.1"))
"""(lowest Python, torch minimum), highest Python first: what the pinned monai needs."""

SKIP_PACKAGES = ["torch", "SimpleITK"]
"""Never installed by pip here: torch comes from the PyTorch extension, SimpleITK ships with Slicer."""


def torch_minimum(python: Sequence[int] | None = None) -> str:
    """The lowest torch version LDAE asks for on this Python (e.g. "2.8.0")."""
    python = tuple(python or sys.version_info[:2])
    return next(minimum for lowest, minimum in TORCH_MINIMUM if python >= lowest)


def installed_version(distribution: str) -> str | None:
    """The installed version of a distribution from its metadata (nothing is imported); None if absent."""
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def _version(text: str):
    try:
        from packaging.version import Version
    except ImportError:  # pragma: no cover - Slicer's pip vendors it
        from pip._vendor.packaging.version import Version
    return Version(text)


def _requirement(text: str):
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pragma: no cover
        from pip._vendor.packaging.requirements import Requirement
    return Requirement(text)


def read_requirements(path: str | Path) -> list[str]:
    """The requirement lines of a requirements file (comments, blank lines and pip options left out)."""
    lines = [line.split(" #")[0].strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line and not line.startswith(("#", "-"))]


def missing_requirements(requirements: list[str], version_of: Callable[[str], str | None] = installed_version,
                         environment: dict | None = None) -> list[str]:
    """The requirements that apply to this Python and are not installed at a matching version."""
    missing = []
    for text in requirements:
        req = _requirement(text)
        if req.marker is not None and not req.marker.evaluate(environment):
            continue
        have = version_of(req.name)
        if have is None or not req.specifier.contains(have, prereleases=True):
            missing.append(f"{req.name}{req.specifier}")
    return missing


def ensure_torch(pytorch_utils, *, interactive: bool = True, python: Sequence[int] | None = None,
                 version_of: Callable[[str], str | None] = installed_version) -> str:
    """Make sure torch >= the minimum is installed, through the PyTorch extension. Returns its version.

    ``pytorch_utils``: the ``PyTorchUtils`` module of the PyTorch extension, or None when the
    extension is not installed."""
    minimum = torch_minimum(python)
    have = version_of("torch")
    if have is not None and _version(have) >= _version(minimum):
        return have
    if pytorch_utils is None:
        raise LDAEError("LDAE needs the PyTorch extension: install 'PyTorch' from the Extensions Manager, restart Slicer, "
                        "and try again.")
    what = "installed" if have is None else f"upgraded from {have}"
    torch = pytorch_utils.PyTorchUtilsLogic().installTorch(askConfirmation=interactive, torchVersionRequirement=f">={minimum}")
    if torch is None:
        raise LDAEError(f"LDAE needs PyTorch {minimum} or later, which was not {what}. Install it from the PyTorch Utils "
                        "module (Modules > Utilities > PyTorch Utils) and try again.")
    have = version_of("torch")
    if have is None or _version(have) < _version(minimum):
        raise LDAEError(f"PyTorch {have or '(none)'} is installed but LDAE needs {minimum} or later; upgrade it in the "
                        "PyTorch Utils module (uninstall, restart Slicer, install).")
    return have


def ensure_packages(requirements_file: str | Path, *, interactive: bool = True, packaging=None, pip_install=None,
                    confirm: Callable[[str], bool] | None = None,
                    version_of: Callable[[str], str | None] = installed_version) -> list[str]:
    """Install the requirements file's missing packages. Returns what was missing.

    ``packaging``: ``slicer.packaging`` (Slicer >= 5.12), or None to use ``pip_install``
    (``slicer.util.pip_install``) after ``confirm(text)`` when ``interactive``."""
    requirements = read_requirements(requirements_file)
    missing = missing_requirements(requirements, version_of)
    if packaging is not None:  # pip_ensure checks again itself, asks, installs, offers a restart
        packaging.pip_ensure(packaging.load_requirements(requirements_file), skip_packages=SKIP_PACKAGES, requester="LDAE",
                             prompt_install=interactive)
        return missing
    if not missing:
        return []
    if interactive and confirm is not None and not confirm("LDAE needs these Python packages, which will be installed now: "
                                                           + ", ".join(missing)):
        raise LDAEError("LDAE cannot run without its Python packages (" + ", ".join(missing) + ").")
    for req in missing:
        pip_install([req, "--no-deps"] if req.lower().startswith("monai") else [req])
    return missing


def ensure_in_slicer(requirements_file: str | Path, interactive: bool = True) -> None:
    """Both steps, with the running Slicer's PyTorch extension, ``slicer.packaging`` and dialogs."""
    import slicer

    try:
        import PyTorchUtils
    except ImportError:
        PyTorchUtils = None
    ensure_torch(PyTorchUtils, interactive=interactive)
    try:
        import slicer.packaging as packaging  # Slicer >= 5.12
    except ImportError:
        packaging = None
    ensure_packages(requirements_file, interactive=interactive, packaging=packaging, pip_install=slicer.util.pip_install,
                    confirm=slicer.util.confirmOkCancelDisplay)
