"""Local data files, checked before they are read: a path that is missing, a link loop, an empty, UTF-16, binary
or non-UTF-8 file, broken JSON, CSV or Parquet are each refused with a DataError that says what the file really is.
Then their rows: JSON documents and JSON lines (read a line at a time), CSV and Parquet (as Arrow-backed Datasets).
"""

from __future__ import annotations

import codecs
import errno
import json
import logging
import re
import stat
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from phi3space.errors import DataError

LOCAL_SUFFIXES = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def _check_path(path: Path, ref: str) -> None:
    """A DataError unless ``path`` is a file or folder we can read: say what it really is."""
    try:
        info = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise DataError(f"data path {ref} is a link to a missing file",
                            "Repair the link, or point at the file itself.") from None
        raise DataError(f"data file not found: {ref}",
                        "Check the path, or give a Hub dataset ID such as user/dataset.") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DataError(f"data path {ref} is a symlink loop (following it leads back to itself)",
                            "Point at the data file itself, or repair the link.") from None
        raise DataError(f"cannot read data path {ref}: {exc.strerror}", "Check the path and its permissions.") from None
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        raise DataError(f"data path {ref} is not a regular file or folder",
                        "Point at a JSON, JSONL, CSV or Parquet file.")


_EMPTY_HINT = "Point at a file with rows in it: is the export or download complete?"
_WRONG_FILE_HINT = "Is this the right file? Give a file the suffix of its real format (.jsonl, .json, .csv, .parquet)."
_JSON_HINT = ('Use one JSON object per line (JSONL), e.g. {"prompt": "...", "completion": "..."}, '
              "or a JSON array of such objects.")
_CHUNK = 1 << 20


def _read_bytes(path: Path, size: int = -1) -> bytes:
    """The file's bytes (the first ``size`` of them), never none."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(size)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}", "Check the file's permissions.") from None
    if not raw:
        raise DataError(f"{path} is empty (0 bytes)", _EMPTY_HINT)
    return raw


def _encoding_hint(kind: str) -> str:
    return f"Save it again as UTF-8 {kind}" + (" (in Excel: CSV UTF-8)." if kind == "CSV" else " (in an editor: encoding UTF-8).")


def _check_head(path: Path, kind: str) -> bytes:
    """The first bytes of a JSON/JSONL/CSV file, after refusing an empty, UTF-16 or binary one."""
    head = _read_bytes(path, 8192)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DataError(f"{path} is UTF-16 text; {kind} files must be UTF-8", _encoding_hint(kind))
    if b"\0" in head:
        raise DataError(f"{path} is a binary file, not {kind} text", _WRONG_FILE_HINT)
    return head


def _not_utf8(path: Path, kind: str, line: int, byte: int) -> DataError:
    return DataError(f"{path} is not UTF-8 text (byte 0x{byte:02x} on line {line})", _encoding_hint(kind))


def _check_text(path: Path, kind: str) -> int:
    """Refuse a file that is not UTF-8 text, reading it in chunks (never whole); returns its non-blank line count,
    counted up to 2 (enough to tell a header alone from a header with rows)."""
    _check_head(path, kind)
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    line, nonblank, pending = 1, 0, b""
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:  # exc.object: the bytes the decoder held back, then this chunk
                raise _not_utf8(path, kind, line + exc.object.count(b"\n", 0, exc.start), exc.object[exc.start]) from None
            line += chunk.count(b"\n")
            if nonblank < 2:
                *whole, pending = (pending + chunk).split(b"\n")
                nonblank += sum(1 for x in whole if x.strip())
    nonblank += bool(pending.strip())
    if nonblank == 0:
        raise DataError(f"{path} is empty (only blank lines)", _EMPTY_HINT)
    return nonblank


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    names = {dict: "object", list: "array", str: "string", int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _is_whole_json(path: Path, head: bytes) -> bool:
    """A JSON document (an array, or one object in a .json file), not JSON lines."""
    first = head.removeprefix(codecs.BOM_UTF8).lstrip()
    if first.startswith(b"["):
        return True
    if path.suffix != ".json" or not first.startswith(b"{"):
        return False
    with path.open("rb") as fh:  # objects on lines of their own: JSON lines after all
        tail = b""
        while chunk := fh.read(_CHUNK):
            if b"\n{" in tail + chunk:
                return False
            tail = chunk[-1:]
    return True


def _read_json_document(path: Path, broken: Counter) -> list[dict]:
    raw = _read_bytes(path)
    if not raw.strip():
        raise DataError(f"{path} is empty (only blank lines)", _EMPTY_HINT)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, "JSON", raw.count(b"\n", 0, exc.start) + 1, raw[exc.start]) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON: {exc}", _JSON_HINT) from None
    except RecursionError:
        raise DataError(f"{path} is nested too deeply to be a dataset", _JSON_HINT) from None
    if isinstance(data, dict):  # {"data": [...]} or a dict of columns
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) == 1 and all(isinstance(r, dict) for r in lists[0]):
            return lists[0]
        if lists and all(isinstance(v, list) for v in data.values()):
            if len({len(v) for v in lists}) > 1:
                sizes = ", ".join(f"{k}: {len(v)}" for k, v in data.items())
                raise DataError(f"{path} holds columns of different lengths ({sizes})",
                                "Each column needs one value per row; or use JSONL, one object per row.")
            return [dict(zip(data, row)) for row in zip(*data.values())]
        return [data]
    if not data:
        raise DataError(f"{path} holds an empty JSON array: no rows", _JSON_HINT)
    rows = [r for r in data if isinstance(r, dict)]
    if not rows:
        kinds = " and ".join(sorted({_json_kind(r) + "s" for r in data}))
        raise DataError(f"{path} is a JSON array of {kinds}, not of objects (one per row)", _JSON_HINT)
    if len(rows) < len(data):
        broken["not a JSON object"] += len(data) - len(rows)
    if _lone_surrogate(text, rows):
        kept = [r for r in rows if not _lone_surrogate(text, r)]
        broken[_SURROGATE] += len(rows) - len(kept)
        if not kept:
            raise DataError(f"{path}: every row holds {_SURROGATE}", _SURROGATE_HINT)
        rows = kept
    return rows


_SURROGATE = "a lone surrogate escape (\\ud800-\\udfff), which is not text"
_SURROGATE_HINT = ("Fix the text those rows came from: a \\ud800-\\udfff escape is only half of a character (a whole "
                   "one is a pair, e.g. \\ud83d\\ude00).")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _lone_surrogate(text: str, value) -> bool:
    """``value`` (parsed from ``text``) holds half of a UTF-16 pair written as a JSON escape: Python reads it, but no
    UTF-8 text (nor Arrow) can hold it. Whole pairs are read as one character and pass."""
    if not _SURROGATE_ESCAPE.search(text):
        return False
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _iter_json_lines(path: Path, broken: Counter) -> Iterator[dict]:
    """Rows of a JSON-lines file, one line at a time (a file of any size in little memory). Lines that do not
    parse, or hold something other than an object, are counted in ``broken``."""
    first_problem, found, nonblank, hint = "", False, False, _JSON_HINT
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}", "Check the file's permissions.") from None
    with fh:
        for number, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, "JSON", number, raw[exc.start]) from None
            if not line.strip():
                continue
            nonblank = True
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as exc:
                broken["broken JSON line"] += 1
                why = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
                first_problem = first_problem or f"{path} is not JSON: line {number} does not parse ({why})"
                continue
            if isinstance(row, dict) and _lone_surrogate(line, row):
                broken[_SURROGATE] += 1
                if not first_problem:
                    first_problem, hint = f"{path}: line {number} holds {_SURROGATE}", _SURROGATE_HINT
            elif isinstance(row, dict):
                found = True
                yield row
            else:
                broken["not a JSON object"] += 1
                first_problem = first_problem or (f"{path} holds a JSON {_json_kind(row)} on line {number}, "
                                                  "not an object (a row)")
    if not nonblank:
        raise DataError(f"{path} is empty (only blank lines)", _EMPTY_HINT)
    if not found:  # not one usable line: the whole file is something else
        raise DataError(first_problem, hint)


def _count_lines(path: Path) -> tuple[int, bool]:
    """Lines in a JSON-lines file (its rows, without parsing them): counted up to 16 MiB, estimated beyond from the
    first 16 MiB. Returns (lines, exact)."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(16 * _CHUNK)
    lines = head.count(b"\n") + (not head.endswith(b"\n"))
    if len(head) >= size:
        return lines, True
    return round(lines * size / len(head)), False


@contextmanager
def _datasets_errors_silenced():
    """datasets logs a reader's exception before raising it; we report it once, as a DataError."""
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _read_with_datasets(path: Path, kind: str):
    """A CSV or Parquet file as an Arrow-backed Dataset (memory-mapped, not held as Python objects); the file was
    checked first, so errors here are about its contents."""
    import datasets
    import pyarrow

    name = "CSV" if kind == "csv" else "Parquet"
    hint = ("Check that every quoted field ends with its closing quote and each row has the header's columns; "
            "or export the file again as CSV (UTF-8)." if kind == "csv" else
            "The file may be truncated or written by something else: export or download it again.")
    try:
        with _datasets_errors_silenced():
            ds = datasets.load_dataset(kind, data_files=str(path), split="train")
    except (datasets.exceptions.DatasetGenerationError, pyarrow.ArrowException, OSError) as exc:
        cause = exc
        while cause.__cause__ is not None:  # DatasetGenerationError wraps what the reader (pandas, pyarrow) raised
            cause = cause.__cause__
        if isinstance(cause, OSError) and cause.errno is not None:
            raise  # the disk (full, unreadable), not the file's contents
        raise DataError(f"{path} is not valid {name}: {' '.join(str(cause).split())}", hint) from None
    except ValueError as exc:
        if "corresponds to no data" not in str(exc):
            raise
        raise DataError(f"{path} holds no rows", _EMPTY_HINT) from None
    if any(c.startswith("__index_level_") for c in ds.column_names):  # pandas' reading of rows longer than the header
        raise DataError(f"{path} has rows with more fields than its header", hint)
    return ds


def _read_csv(path: Path):
    if _check_text(path, "CSV") < 2:
        raise DataError(f"{path} has a header line but no rows", "Point at a CSV file with rows under its header.")
    return _read_with_datasets(path, "csv")


def _read_parquet(path: Path):
    if _read_bytes(path, 4) != b"PAR1":
        raise DataError(f"{path} is not a Parquet file (it does not start with PAR1)", _WRONG_FILE_HINT)
    return _read_with_datasets(path, "parquet")


def _local_files(path: Path, split: str) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(f for f in path.rglob("*") if f.suffix.lower() in LOCAL_SUFFIXES and f.is_file())
    named = [f for f in files if split in f.stem.lower().split("-")[0].split("_") or f.stem.lower().startswith(split)]
    if named:
        return named
    if split == "train":
        splitish = ("test", "valid", "validation", "eval", "dev")
        return [f for f in files if not f.stem.lower().startswith(splitish)]
    return []
