"""Publishing results all or nothing, never over a source: the one way every front end writes files.

``check_outputs`` runs before any model is loaded: every output must have a writable name (a known
extension, a file name the file system accepts), must not be an input (same real path or same
file, e.g. ``./scan.nii.gz`` against its absolute path or a hard link) and must not be something
other than a regular file (a folder, a FIFO, a device).

``OutputSet`` then writes each output to a hidden temporary file beside its final place
(``.ldae-XXXXXXXX.part``, with the permissions of any new file: the user's umask) and publishes
them together on ``commit``. Folders are created only then. An error, a cancel, Ctrl-C or SIGTERM
(the command line turns it into KeyboardInterrupt) removes every temporary file and every file this
commit had already put in place, and the folders it created; what was there before stays.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..errors import LDAEError
from .image import Image, check_output_suffix, files_of, suffix_of, write_image

TEMP_PREFIX, TEMP_SUFFIX = ".ldae-", ".part"
NAME_MAX = 255


def sidecar_path(path: str | Path) -> Path:
    """``out.nii.gz`` → ``out.json`` (the provenance beside a volume; any image extension)."""
    p = Path(path)
    s = suffix_of(p)
    name = p.name[: -len(s)] if s and p.name.lower().endswith(s) else p.stem
    return p.with_name(name + ".json")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _identity(path: Path):
    try:
        st = os.stat(path)
        return (st.st_dev, st.st_ino)
    except OSError:
        return None


class Sources:
    """The files results must never be written over: inputs by real path and by (device, inode)."""

    def __init__(self, paths: Iterable[str | Path] = ()) -> None:
        self.paths: dict[str, Path] = {}
        self.ids: dict[tuple, Path] = {}
        for p in paths:
            self.add(p)

    def add(self, path: str | Path) -> None:
        for f in files_of(path) or [Path(path)]:
            self.paths[os.path.realpath(f)] = Path(path)
            ident = _identity(f)
            if ident is not None:
                self.ids[ident] = Path(path)

    def owner(self, path: str | Path) -> Path | None:
        """The input that ``path`` would overwrite, or None."""
        hit = self.paths.get(os.path.realpath(path))
        if hit is None:
            ident = _identity(Path(path))
            hit = self.ids.get(ident) if ident is not None else None
        return hit


def _writable_folder(folder: Path) -> None:
    """Refuse a folder that cannot be made or written into, without creating anything."""
    p = folder
    while not p.exists():
        if p.parent == p:
            break
        p = p.parent
    what = "write into" if p == folder and p.is_dir() else "create the output folder"
    if p.exists() and not p.is_dir():
        raise LDAEError(f"cannot {what} {folder}: {p} is a file, not a folder")
    if not os.access(p, os.W_OK | os.X_OK):
        raise LDAEError(f"cannot {what} {folder}: permission denied; choose another output location")


def check_output(path: str | Path, sources: Sources | None = None, *, volume: bool = True) -> Path:
    """One output path, checked before any computation (see the module's docstring)."""
    path = Path(path)
    if volume:
        check_output_suffix(path)
    if len(os.fsencode(path.name)) > NAME_MAX - len(TEMP_PREFIX) - len(TEMP_SUFFIX) - 16:
        raise LDAEError(f"the output name {path.name[:40]}… is {len(path.name)} characters long; "
                        f"file systems allow {NAME_MAX}: choose a shorter name")
    owner = sources.owner(path) if sources is not None else None
    if owner is not None:
        raise LDAEError(f"the output {path} is the input {owner}: a source scan is never overwritten; choose another output name")
    if os.path.lexists(path) and not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file (a FIFO, device or socket)"
        raise LDAEError(f"the output {path} exists and is {kind}; choose another output name")
    if path.is_symlink() and sources is not None and sources.owner(path.resolve()) is not None:
        raise LDAEError(f"the output {path} links to an input; choose another output name")
    _writable_folder(path.parent)
    return path


def check_outputs(paths: Iterable[str | Path], inputs: Iterable[str | Path] = (), *, volumes: bool = True) -> list[Path]:
    """Every output of an operation, checked against each other and against its inputs."""
    sources = Sources(inputs)
    out, seen = [], {}
    for p in paths:
        p = check_output(p, sources, volume=volumes and suffix_of(p) != ".json")
        key = os.path.realpath(p)
        if key in seen:
            raise LDAEError(f"two outputs would both be written to {p}; give them distinct names")
        seen[key] = p
        out.append(p)
    return out


def _disk_error(err: OSError, path: Path) -> LDAEError:
    if err.errno == errno.ENOSPC:
        return LDAEError(f"no space left on the disk that holds {path.parent}; free some space or choose another output folder")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return LDAEError(f"cannot write {path}: permission denied; choose another output location")
    if err.errno == errno.ENAMETOOLONG:
        return LDAEError(f"the output name {path.name[:40]}… is too long for the file system; choose a shorter name")
    return LDAEError(f"could not write {path}: {err.strerror or err}")


class OutputSet:
    """Collects outputs in hidden temporary files and publishes them together on ``commit``.

    Used as a context manager: if the block raises (an error, a cancel, Ctrl-C), every temporary
    file is removed and no output appears. ``sources``: files never to be written over.
    """

    def __init__(self, sources: Sources | Iterable[str | Path] = ()) -> None:
        self.sources = sources if isinstance(sources, Sources) else Sources(sources)
        self._pending: list[tuple[Path, Path]] = []
        self._made: list[Path] = []  # temporary folders' parents created for this set
        self._mode = 0o666 & ~_umask()

    # -------------------------------------------------------------- staging
    def _stage_dir(self, final: Path) -> Path:
        """The folder the temporary file goes in: the final folder when it exists, else a hidden
        one beside its nearest existing ancestor (folders appear only on commit)."""
        folder = final.parent
        if folder.is_dir():
            return folder
        anchor = folder
        while not anchor.exists() and anchor.parent != anchor:
            anchor = anchor.parent
        if not hasattr(self, "_spool"):
            self._spool = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=anchor))
        return self._spool

    def _temp(self, final: Path, suffix: str = "") -> Path:
        check_output(final, self.sources, volume=False)
        try:
            fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX + suffix, dir=self._stage_dir(final))
            os.close(fd)
            os.chmod(name, self._mode)
        except OSError as err:
            raise _disk_error(err, final) from None
        tmp = Path(name)
        self._pending.append((tmp, final))
        return tmp

    def add_image(self, path: str | Path, like: Image, data: np.ndarray, provenance: dict, description: str | None = None) -> None:
        """A volume on ``like``'s grid (format by extension) and its provenance sidecar."""
        final = Path(path)
        check_output_suffix(final)
        tmp = self._temp(final, suffix_of(final))
        try:
            write_image(tmp, like, data, description or provenance.get("description", "LDAE output"))
            os.chmod(tmp, self._mode)
        except OSError as err:
            raise _disk_error(err, final) from None
        self.add_json(sidecar_path(final), provenance)

    def add_json(self, path: str | Path, payload: dict) -> None:
        try:
            text = json.dumps(payload, indent=2, default=str, allow_nan=False)
        except ValueError as err:  # a NaN or infinity must never pass for a number
            raise LDAEError(f"internal error: the record for {Path(path).name} holds a non-finite number ({err})") from None
        self.add_file(path, lambda tmp: Path(tmp).write_text(text + "\n"))

    def add_file(self, path: str | Path, writer: Callable[[Path], object]) -> None:
        """``writer(tmp_path)`` writes the content; it is published with the rest."""
        final = Path(path)
        tmp = self._temp(final)
        try:
            writer(tmp)
            os.chmod(tmp, self._mode)
        except OSError as err:
            raise _disk_error(err, final) from None

    # -------------------------------------------------------------- publishing
    def commit(self) -> list[Path]:
        for _, final in self._pending:  # everything is checked before anything moves
            check_output(final, self.sources, volume=False)
        made: list[Path] = []
        done: list[Path] = []
        try:
            for tmp, final in self._pending:
                missing = []
                p = final.parent
                while not p.exists():
                    missing.append(p)
                    p = p.parent
                for m in reversed(missing):
                    m.mkdir()
                    made.append(m)
                os.replace(tmp, final)
                done.append(final)
        except OSError as err:
            for f in done:
                try:
                    f.unlink()
                except OSError:
                    pass
            self.discard()
            for m in reversed(made):
                try:
                    m.rmdir()
                except OSError:
                    pass
            raise _disk_error(err, final) from None
        self._pending.clear()
        self._drop_spool()
        return done

    def discard(self) -> None:
        for tmp, _ in self._pending:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
        self._pending.clear()
        self._drop_spool()

    def _drop_spool(self) -> None:
        spool = getattr(self, "_spool", None)
        if spool is not None:
            try:
                for f in spool.iterdir():
                    f.unlink()
                spool.rmdir()
            except OSError:
                pass
            del self._spool

    def __enter__(self) -> "OutputSet":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.discard()
        else:
            self.commit()


def remove_stale_temporaries(folder: str | Path) -> int:
    """Remove the temporary files (and spool folders) an interrupted run left under ``folder``
    (e.g. a batch killed with SIGKILL); returns how many were removed."""
    n = 0
    for p in sorted(Path(folder).rglob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}*"), key=lambda q: len(q.parts), reverse=True):
        try:
            if p.is_dir():
                for f in p.iterdir():
                    f.unlink()
                p.rmdir()
            else:
                p.unlink()
            n += 1
        except OSError:
            pass
    return n


def ensure_folder(folder: str | Path) -> Path:
    """Create ``folder`` if needed (for outputs that are a folder of files, e.g. a cohort) and check
    that files can be written into it."""
    folder = Path(folder)
    _writable_folder(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LDAEError(f"cannot create the output folder {folder}: {err.strerror}") from None
    return folder


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to a hidden temporary file beside ``path`` and rename it into place, so a
    reader never sees a half-written file and a failure leaves the old one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
