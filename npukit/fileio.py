"""Writing outputs so that a failure or Ctrl-C leaves either the old complete output or the new one.

`write_atomic` writes one file under a temporary name in the same folder and renames it; `staged_directory`
builds a whole output folder beside its destination and moves it into place only when it is complete.
Every OSError becomes one NpukitError naming the path.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import NpukitError


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """`write(tmp)` into a temporary file beside `path` (same suffix: np.save appends .npy to any other),
    then rename it onto `path`."""
    path = Path(path)
    if path.is_dir():
        raise NpukitError(f"{path} is a folder; give the name of a file to write")
    tmp = path.with_name(f".tmp-{path.name}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        tmp.replace(path)
    except OSError as e:
        raise NpukitError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return path


@contextlib.contextmanager
def staged_directory(out: str | Path) -> Iterator[Path]:
    """Yield an empty folder beside `out`; when the block ends without an error, its files replace
    `out`'s files of the same names (a new `out` is created by one rename). On any error, or Ctrl-C, the
    staging folder is removed and `out` is as it was."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NpukitError(f"{out} is a file; give a folder to write into")
    stage = out.with_name(f".tmp-{out.name}")
    try:
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
    except OSError as e:
        raise NpukitError(f"cannot write into {out.parent}: {e.strerror or e}") from None
    try:
        yield stage
        try:
            if not out.exists():
                stage.rename(out)
                return
            for f in sorted(stage.rglob("*")):  # an existing folder: each file replaced whole
                target = out / f.relative_to(stage)
                if f.is_dir():
                    target.mkdir(exist_ok=True)
                else:
                    f.replace(target)
        except OSError as e:
            raise NpukitError(f"cannot write into {out}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def read_bytes(path: str | Path, kind: str, limit: int | None = None) -> bytes:
    """The file's bytes (the first `limit` of them), or one NpukitError: missing, a folder, unreadable, empty."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read() if limit is None else f.read(limit)
    except FileNotFoundError:
        raise NpukitError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise NpukitError(f"{path} is a folder, not {kind}") from None
    except OSError as e:
        raise NpukitError(f"{path}: cannot read ({e.strerror or e})") from None
    if not data:
        raise NpukitError(f"{path} is empty (0 bytes): not {kind}")
    return data


def file_kind(path: str | Path) -> str:
    """'modelbin', 'npir' or 'onnx', by the file's first bytes (not its name): a model.bin renamed .dat is
    still one. A file that is none of them raises one NpukitError saying what it looks like."""
    path = Path(path)
    head = read_bytes(path, "a model file", limit=4)
    if head == b"NPUK":  # modelbin.MAGIC (not imported: this stays a light module)
        return "modelbin"
    if head[:2] == b"PK":
        return "npir"  # a zip: the IR file
    if head[0] in (0x08, 0x0A, 0x12, 0x1A, 0x22, 0x3A, 0x42):  # a protobuf field tag: ONNX's ModelProto
        return "onnx"
    raise NpukitError(f"{path} is not a model file npukit reads (an IR file .npir, an npukit ONNX file or a "
                      "model.bin)")
