"""The files yolo-unified reads and writes, handled safely.

- **Loading**: checkpoints by Ultralytics' loader, safe mode (``ULTRALYTICS_SAFE_LOAD=1``) honoured; data-only files
  (``memory.pt``) always with ``weights_only=True``; a file that cannot be read gives one `UnreadableFile` naming it.
- **Writing**: a file goes to a temporary file beside it, then over it (`save_atomically`); an output folder is built
  beside its destination and swapped in whole, only over a folder this package wrote (`OutputFolder`).
"""

from __future__ import annotations

import ctypes
import errno
import filecmp
import json
import os
import pickle
import shutil
import tempfile
import uuid
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from ultralytics.nn import tasks as ultralytics_tasks

MANIFEST = ".yolo-unified.json"  # in every output folder: who wrote it and every file it holds


class UnreadableFile(ValueError):
    """A file that exists but cannot be read as what it should be (the message names the file and the problem)."""


# ---------------------------------------------------------------------------------------------------------- loading
def allow_in_checkpoints(*classes: type) -> None:
    """Let safe loading (torch's ``weights_only``, Ultralytics' safe mode) rebuild the package's model `classes`."""
    torch.serialization.add_safe_globals(list(classes))


def safe_mode() -> bool:
    """Whether Ultralytics' safe mode is on (``ULTRALYTICS_SAFE_LOAD``, read by Ultralytics when it is imported)."""
    return bool(ultralytics_tasks.SAFE_LOAD)


def existing(path: str | Path) -> Path:
    """`path` as a Path when it is a file; FileNotFoundError naming it otherwise (nothing is looked for online)."""
    file = Path(path)
    if file.is_dir():
        raise IsADirectoryError(f"{file} is a folder, not a file")
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found")
    return file


def refused_globals(file: Path) -> list[str]:
    """The names a torch file would import that are not on torch's safe-loading allow-list."""
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(file)
    except Exception:  # not a torch zip archive: nothing to list
        return []
    allowed = {
        entry[1] if isinstance(entry, tuple) else f"{entry.__module__}.{entry.__qualname__}"
        for entry in torch.serialization.get_safe_globals()
    }
    return sorted(name for name in needed if name not in allowed)


def unreadable_reason(file: Path, error: BaseException, weights_only: bool) -> str:
    """Why torch (or Ultralytics' loader) could not read `file`, in words, from the `error` it raised."""
    cause = error.__cause__ if isinstance(error, TypeError) and error.__cause__ else error
    if weights_only and isinstance(cause, pickle.UnpicklingError) and "Weights only load failed" in str(cause):
        names = refused_globals(file)
        what = f"it would import {', '.join(names[:5])}" if names else "it holds objects of other kinds"
        return f"refused by safe loading ({what}; only plain data and model classes are loaded): nothing in it was run"
    if file.stat().st_size == 0:
        return "is an empty file"
    if not zipfile.is_zipfile(file):
        with file.open("rb") as f:
            zip_start = f.read(2) == b"PK"
        damaged = "is unreadable: truncated or damaged (not a whole zip archive)"
        return damaged if zip_start else "is not a PyTorch file (torch.save writes a zip archive)"
    if isinstance(error, TypeError) and error.__cause__ is None and "references types outside" in str(error):
        return "is not a model checkpoint (it holds no model)"
    first = str(cause).split(". ")[0].splitlines()[0] if str(cause) else type(cause).__name__
    return f"is unreadable: damaged ({first.replace('ERROR ❌️ ', '')})"


@contextmanager
def reading(file: Path, weights_only: bool) -> Iterator[None]:
    """Turn the errors of reading `file` with torch or Ultralytics' loader into one `UnreadableFile` naming it."""
    try:
        yield
    except PermissionError:
        raise  # its message names the file and says why
    except (TypeError, ValueError, KeyError, RuntimeError, EOFError, OSError, ImportError, pickle.UnpicklingError) as e:
        raise UnreadableFile(f"{file} {unreadable_reason(file, e, weights_only)}") from e


def load_checkpoint(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A checkpoint's model (FP32, eval mode) and its dict, by Ultralytics' loader (safe mode honoured)."""
    file = existing(path)
    with reading(file, safe_mode()):
        model, ckpt = ultralytics_tasks.load_checkpoint(file)
    return model, ckpt


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's dict (training arguments, weights, ...), by Ultralytics' loader (safe mode honoured)."""
    file = existing(path)
    with reading(file, safe_mode()):
        ckpt = ultralytics_tasks.torch_safe_load(file)[0]
    return ckpt


def read_data(path: str | Path) -> Any:
    """A data-only torch file (``memory.pt``), always with ``weights_only=True``: nothing in it runs."""
    file = existing(path)
    with reading(file, weights_only=True):
        data = torch.load(file, map_location="cpu", weights_only=True)
    return data


def read_json(path: str | Path) -> Any:
    """A JSON file's contents; a ValueError naming the file, the line and the problem when it is not valid JSON."""
    file = existing(path)
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise UnreadableFile(f"{file} is not a text file ({e.reason} at byte {e.start})") from e
    except json.JSONDecodeError as e:
        what = "is empty" if not e.doc.strip() else f"is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
        ends_early = e.msg.startswith("Unterminated") or e.pos >= len(e.doc.rstrip())  # the text stops mid-value
        truncated = " - truncated?" if ends_early and e.doc.strip() else ""
        raise UnreadableFile(f"{file} {what}{truncated}") from e


def inside(folder: Path, name: str) -> Path:
    """``folder / name`` for a relative `name` that stays inside `folder` (no absolute path, no ``..`` out of it);
    a ValueError otherwise. Only the text of `name` is checked: links inside `folder` are the folder owner's."""
    path = Path(name)
    if path.is_absolute() or path.drive or os.path.normpath(path).split(os.sep)[0] == os.pardir:
        raise ValueError(f"'{name}' is not a path inside {folder}")
    return folder / path


# ---------------------------------------------------------------------------------------------------------- writing
def temporary_name(path: Path) -> Path:
    """A unique temporary file name beside `path` (a leftover of a killed write is never taken for a later one's)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def save_atomically(obj: Any, path: str | Path) -> None:
    """Write `obj` to a temporary file beside `path`, then move it over `path`: bytes as they are, text as UTF-8, a
    path ending in .json as JSON, anything else with torch.save. A failed write leaves `path` as it was."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        if isinstance(obj, bytes):
            tmp.write_bytes(obj)
        elif isinstance(obj, str):
            tmp.write_text(obj, encoding="utf-8")
        elif path.suffix == ".json":
            tmp.write_text(json.dumps(obj, indent=2))
        else:
            torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def folder_files(folder: Path) -> set[Path]:
    """Every file (and link) under `folder`, relative to it; links to folders are not followed."""
    found = set()
    for parent, dirs, files in os.walk(folder):
        names = files + [d for d in dirs if (Path(parent) / d).is_symlink()]
        found.update((Path(parent) / name).relative_to(folder) for name in names)
    return found


def read_manifest(folder: Path, manifest: str = MANIFEST) -> dict[str, Any]:
    """The manifest of `folder` (empty when it has none or it cannot be read)."""
    try:
        data = json.loads((folder / manifest).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def manifest_files(folder: Path, manifest: str = MANIFEST) -> set[Path]:
    """The files the manifest of `folder` lists (relative; none without a readable manifest)."""
    listed = read_manifest(folder, manifest).get("files")
    return {Path(f) for f in listed if isinstance(f, str)} if isinstance(listed, list) else set()


def few(items: list, shown: int = 5) -> str:
    """The first `shown` items, comma-separated, and how many more there are."""
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(str(item) for item in items[:shown]) + more


def _libc_renameat2() -> Callable[..., int] | None:
    """Linux's ``renameat2`` (glibc 2.28+), which swaps two paths in one step; None where there is none."""
    try:
        return ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError, TypeError):
        return None


RENAMEAT2 = _libc_renameat2()
AT_FDCWD, RENAME_EXCHANGE = -100, 2


def exchange(a: Path, b: Path) -> bool:
    """Swap the folders `a` and `b` in one atomic step; False (nothing done) where the system cannot."""
    if RENAMEAT2 is None:
        return False
    if RENAMEAT2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV, errno.EPERM}:
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


class OutputFolder:
    """An output folder written whole: built beside `dst`, then swapped in at once, never over files of others.

    `dst` may hold only files its manifest lists or `derived` ones (e.g. Ultralytics' label caches); without a
    manifest, only files the build writes with the same bytes. ``with folder as build:`` yields an empty folder; a
    block that succeeds swaps it in with its manifest (`changed`: False when `dst` held the same files), one that
    raises leaves `dst` as it was. The swap is atomic with Linux ``renameat2``, else two renames through
    ``.<name>.previous``, which the next `OutputFolder` of `dst` moves back if a kill came between them.
    """

    def __init__(
        self,
        dst: str | Path,
        written_by: str,
        derived: Callable[[Path], bool] = lambda relative: False,
        manifest: str = MANIFEST,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Check that `dst` may be replaced (see the class); `extra` joins the manifest (e.g. the parameters)."""
        self.dst, self.written_by, self.derived = Path(dst), written_by, derived
        self.manifest, self.extra, self.changed = manifest, extra or {}, False
        self.previous = self.dst.with_name(f".{self.dst.name}.previous")
        self.recover()
        if self.dst.exists() and not self.dst.is_dir():
            raise ValueError(f"dst {self.dst} is a file; give a folder")
        self.check_replaceable(None)

    def recover(self) -> None:
        """After a killed write: put the old folder back if it was between its two renames, remove leftover builds."""
        if self.previous.is_dir() and not self.dst.exists():
            self.previous.rename(self.dst)
        elif self.previous.is_dir() and not self.others(self.previous):
            shutil.rmtree(self.previous)
        for build in self.dst.parent.glob(f".{self.dst.name}-*.tmp") if self.dst.parent.is_dir() else ():
            shutil.rmtree(build, ignore_errors=True)

    def others(self, folder: Path) -> list[Path]:
        """The files of `folder` (relative) that its manifest does not list and that are not derived."""
        present = folder_files(folder) if folder.is_dir() else set()
        ours = manifest_files(folder, self.manifest)
        return sorted(f for f in present - ours - {Path(self.manifest)} if not self.derived(f))

    def check_replaceable(self, built: set[Path] | None) -> None:
        """Raise a ValueError naming the files of `dst` this package did not write (see the class). `built` are the
        complete build's files (None before the build: a `dst` without a manifest is checked later)."""
        others, listed = self.others(self.dst), (self.dst / self.manifest).is_file()
        if not listed:
            if built is None:
                return
            others = [f for f in others if f not in built or not filecmp.cmp(self.build / f, self.dst / f, False)]
        if others and listed:
            raise ValueError(
                f"dst {self.dst} holds {len(others)} file(s) yolo-unified did not write ({few(others)}); the output "
                "replaces dst whole, so move them out or choose another dst"
            )
        if others:
            raise ValueError(
                f"dst {self.dst} has no {self.manifest} (the list of the files yolo-unified wrote there) and holds "
                f"{len(others)} file(s) the output would replace or drop ({few(others)}); move them out or choose "
                "another dst"
            )

    def __enter__(self) -> Path:
        """Make the empty build folder beside `dst` and return it."""
        self.dst.parent.mkdir(parents=True, exist_ok=True)
        self.build = Path(tempfile.mkdtemp(prefix=f".{self.dst.name}-", suffix=".tmp", dir=self.dst.parent))
        return self.build

    def __exit__(self, error_type: type | None, error: BaseException | None, traceback: Any) -> None:
        """Swap the build in when the block succeeded; remove it in any case (an error propagates)."""
        try:
            if error_type is None:
                self.changed = self.swap_in()
        finally:
            shutil.rmtree(self.build, ignore_errors=True)

    def same_as_dst(self, files: set[Path]) -> bool:
        """Whether `dst` holds exactly `files` (the build's, manifest and derived files aside) with the same bytes."""
        if not self.dst.is_dir():
            return False
        present = {f for f in folder_files(self.dst) if f != Path(self.manifest) and not self.derived(f)}
        return present == files and all(filecmp.cmp(self.build / f, self.dst / f) for f in files)

    def swap_in(self) -> bool:
        """Put the build, with its manifest, in the place of `dst`; False when `dst` already held the same files."""
        files = folder_files(self.build)
        if self.same_as_dst(files):
            return False
        self.check_replaceable(files)
        entry = {"written_by": self.written_by, **self.extra, "files": sorted(f.as_posix() for f in files)}
        (self.build / self.manifest).write_text(json.dumps(entry, indent=1))
        if not self.dst.exists():
            self.build.rename(self.dst)
        elif not exchange(self.build, self.dst):
            self.dst.rename(self.previous)
            try:
                self.build.rename(self.dst)
            except BaseException:
                self.previous.rename(self.dst)
                raise
            self.previous.rename(self.build)  # removed with the build folder
        return True
