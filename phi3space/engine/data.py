"""Datasets: load a Hub ID or a local file, detect its format, normalise it to chat messages, report on it.

Every usable row becomes ``{"messages": [{"role", "content"}, ...]}`` (system/user/assistant, ending on an
assistant turn), so trl trains on assistant turns only, whatever the source format; plain ``text`` rows stay
``{"text": ...}`` and are trained on whole. Rows that cannot be used are dropped and counted per reason.
"""

from __future__ import annotations

import codecs
import errno
import json
import logging
import stat
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import Any

from phi3space.config import DataConfig
from phi3space.engine.tokens import add_token_stats, drop_untrained, set_token_stats, tokenize
from phi3space.errors import DataError, scrub

LOCAL_SUFFIXES = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
# Column pairs recognised as prompt -> completion, in order of preference.
PAIR_COLUMNS = [("prompt", "completion"), ("prompt", "response"), ("question", "answer"), ("query", "response"),
                ("instruction", "response"), ("input", "output"), ("input", "target"), ("source", "target")]


@dataclass
class DatasetReport:
    """What loading found: format, rows kept and dropped (per reason), and, after ``add_token_stats``, lengths."""

    source: str
    format: str
    columns: list[str]
    total: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    train_rows: int = 0
    eval_rows: int = 0
    token_percentiles: dict[str, int] = field(default_factory=dict)
    over_max_length: float | None = None
    max_length: int | None = None
    rows_in_split: int | None = None  # set when only a sample was read (Inspect): the split's size
    rows_in_split_exact: bool = True  # False when counted by lines (JSON lines)
    lengths: list[int] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d.pop("lengths")
        return d

    def estimated_train_rows(self) -> int:
        """Training rows in the whole split: counted, or, after a sample, scaled from it."""
        if self.rows_in_split is None or not self.total:
            return self.train_rows
        return round(self.train_rows * self.rows_in_split / self.total)

    def lines(self) -> list[str]:
        out = [f"dataset: {self.source}", f"format: {self.format} (columns: {', '.join(self.columns)})"]
        if self.rows_in_split is not None:
            size = f"{self.rows_in_split:,}" if self.rows_in_split_exact else f"about {self.rows_in_split:,}"
            out.append(f"a sample: the first {self.total:,} rows of {size} (training reads them all)")
        out.append(f"rows: {self.total} read, {self.kept} kept, {self.total - self.kept} dropped")
        out += [f"  dropped {n}: {reason}" for reason, n in sorted(self.dropped.items(), key=lambda x: -x[1])]
        if self.train_rows and self.rows_in_split is not None:
            out.append(f"in the sample: {self.train_rows} rows to train on, {self.eval_rows} to evaluate on; "
                       f"in the split: about {self.estimated_train_rows():,} to train on")
        elif self.train_rows:
            out.append(f"training on {self.train_rows} rows, evaluating on {self.eval_rows}")
        if self.token_percentiles:
            pct = ", ".join(f"{k} {v}" for k, v in self.token_percentiles.items())
            out.append(f"tokens per row: {pct}")
            out.append(f"longer than max_length {self.max_length}: {self.over_max_length:.1%}")
        return out


# ---------------------------------------------------------------- loading

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
    return rows


def _iter_json_lines(path: Path, broken: Counter) -> Iterator[dict]:
    """Rows of a JSON-lines file, one line at a time (a file of any size in little memory). Lines that do not
    parse, or hold something other than an object, are counted in ``broken``."""
    first_problem, found, nonblank = "", False, False
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
            if isinstance(row, dict):
                found = True
                yield row
            else:
                broken["not a JSON object"] += 1
                first_problem = first_problem or (f"{path} holds a JSON {_json_kind(row)} on line {number}, "
                                                  "not an object (a row)")
    if not nonblank:
        raise DataError(f"{path} is empty (only blank lines)", _EMPTY_HINT)
    if not found:  # not one usable line: the whole file is something else
        raise DataError(first_problem, _JSON_HINT)


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


@dataclass
class Source:
    """One split, read lazily: ``rows`` yields raw rows, ``broken`` counts unreadable lines as they are met."""

    rows: Iterator[dict]
    broken: Counter
    known: int = 0  # rows of the parts whose size is known without reading them (Arrow files, JSON documents)
    uncounted: list[Path] = field(default_factory=list)  # JSON-lines files: sized by their lines, on demand

    def size(self) -> tuple[int, bool]:
        """The split's row count, and whether it is exact (JSON lines are counted by lines, blank ones too)."""
        counts = [_count_lines(f) for f in self.uncounted]
        return self.known + sum(n for n, _ in counts), False if counts else True


def _open_local(ref: str, split: str) -> Source:
    path = Path(ref).expanduser()
    _check_path(path, ref)
    files = _local_files(path, split)
    if not files:
        raise DataError(f"no {split!r} data files (JSON, JSONL, CSV, Parquet) in {ref}",
                        "Name files after their split (train.jsonl, test.jsonl) or point at one file.")
    for f in files:
        if LOCAL_SUFFIXES.get(f.suffix.lower()) is None:
            raise DataError(f"{f.name}: unsupported file type", "Use JSON, JSONL, CSV or Parquet.")
    source = Source(iter(()), Counter())
    parts = []
    for f in files:  # each file is opened and checked now; JSON lines are read later, as the rows are asked for
        kind = LOCAL_SUFFIXES[f.suffix.lower()]
        if kind == "json" and not _is_whole_json(f, _check_head(f, "JSON")):
            parts.append(_iter_json_lines(f, source.broken))
            source.uncounted.append(f)
            continue
        if kind == "json":
            rows = _read_json_document(f, source.broken)
        else:
            rows = _read_csv(f) if kind == "csv" else _read_parquet(f)
        parts.append(rows)
        source.known += len(rows)
    source.rows = chain.from_iterable(parts)
    return source


def _open_hub(ref: str, config_name: str | None, split: str, token: str | None) -> Source:
    import datasets
    from huggingface_hub import errors as hub_errors

    from phi3space.hub.access import check_read_access
    from phi3space.hub.errors import gated, hub_error, is_transient

    try:
        check_read_access(ref, "dataset", token)
        ds = datasets.load_dataset(ref, config_name, split=split, token=token)
    except hub_errors.GatedRepoError:
        raise gated(f"datasets/{ref}", DataError) from None
    except (datasets.exceptions.DatasetNotFoundError, hub_errors.RepositoryNotFoundError, FileNotFoundError) as exc:
        if "is a gated dataset" in str(exc):  # datasets reports gated repos as DatasetNotFoundError too
            raise gated(f"datasets/{ref}", DataError) from None
        private = token is None
        raise DataError(f"dataset {ref} was not found" + (" (or it is private)" if private else ""),
                        "Check the ID (owner/name) and spelling" + ("; sign in or set HF_TOKEN if it is private." if private
                                                                    else "; your token may not have access to it.")) from exc
    except ValueError as exc:
        msg = str(exc)
        if "split" in msg.lower():
            raise DataError(f"dataset {ref} has no split {split!r}: {scrub(msg)}",
                            "Set data.split (and data.eval_split) to a split it has.") from None
        if "config" in msg.lower():
            raise DataError(f"dataset {ref}: {scrub(msg)}", "Set data.config_name to one of the configurations listed.") from None
        raise
    except Exception as exc:
        if is_transient(exc):
            raise hub_error(exc, f"load dataset {ref}", f"datasets/{ref}", DataError) from None
        raise
    return Source(iter(ds), Counter(), len(ds))  # Arrow rows, one at a time: never the whole split as Python objects


def open_split(data: DataConfig, split: str, token: str | None = None) -> Source:
    """One split of ``data.dataset`` (a Hub ID or a local file or folder), ready to be read row by row."""
    from phi3space.hub.refs import is_local_ref

    if is_local_ref(data.dataset):
        return _open_local(data.dataset, split)
    return _open_hub(data.dataset, data.config_name, split, token)


def load_rows(data: DataConfig, split: str, token: str | None = None) -> tuple[list[dict], Counter]:
    """Raw rows of one split of ``data.dataset`` and the count of unreadable lines (all in memory: small data)."""
    source = open_split(data, split, token)
    rows = list(source.rows)
    return rows, source.broken


# ---------------------------------------------------------------- formats

def _renamer(columns: dict[str, str], head: list[dict], source: str):
    """A function that gives a row our column names instead of the dataset's (``columns`` maps ours to theirs),
    after checking on the first rows (``head``) that the dataset has those columns; None when there is nothing to
    rename."""
    if not columns:
        return None
    present = {k for r in head for k in r}
    missing = {ours: theirs for ours, theirs in columns.items() if theirs not in present}
    if missing:
        asked = ", ".join(f"{ours}: {theirs}" for ours, theirs in missing.items())
        raise DataError(f"data.columns names columns that {source} does not have ({asked}); "
                        f"its columns are: {', '.join(sorted(present))}",
                        "data.columns maps our names to the dataset's own columns, "
                        "e.g. {prompt: question, completion: answer}.")
    theirs_to_ours = {v: k for k, v in columns.items()}
    return lambda row: {theirs_to_ours.get(k, k): v for k, v in row.items()}


def detect_format(columns: Iterable[str]) -> str:
    """Name the format of rows with these columns.

    Raises:
        DataError: preference data, or nothing we recognise (the message lists the columns and how to map them).
    """
    cols = set(columns)
    if {"chosen", "rejected"} <= cols:
        raise DataError("this is preference data (chosen/rejected pairs), which is for DPO/ORPO, not supervised fine-tuning",
                        "Use a dataset of conversations or prompt/completion pairs, or map one column with "
                        "data.columns, e.g. {completion: chosen}.")
    if "messages" in cols:
        return "messages"
    if "conversations" in cols:
        return "sharegpt"
    if {"instruction", "output"} <= cols:
        return "alpaca"
    if any({p, c} <= cols for p, c in PAIR_COLUMNS):
        return "prompt_completion"
    if "text" in cols:
        return "text"
    raise DataError(f"could not recognise the dataset format (columns: {', '.join(sorted(cols)) or 'none'})",
                    "Expected messages, conversations, instruction/output, prompt/completion or text columns. Map yours "
                    "with data.columns, e.g. --set 'data.columns={prompt: question, completion: answer}'.")


def _clean_messages(messages: Any, role_key: str, content_key: str, roles: dict[str, str]) -> tuple[list | None, str]:
    if not isinstance(messages, list) or not messages:
        return None, "no messages"
    out = []
    for m in messages:
        if not isinstance(m, dict):
            return None, "message is not an object"
        role = roles.get(str(m.get(role_key, "")).lower())
        if role is None:
            return None, f"unknown role {m.get(role_key)!r}"
        content = m.get(content_key)
        if not isinstance(content, str):
            return None, "non-text content"
        if not content.strip():
            return None, "empty content"
        out.append({"role": role, "content": content})
    while out and out[-1]["role"] != "assistant":
        out.pop()  # a trailing user turn has nothing to learn from
    if not any(m["role"] == "assistant" for m in out):
        return None, "no assistant turn"
    return out, ""


def _pair(prompt: Any, completion: Any, system: Any = None) -> tuple[list | None, str]:
    if not isinstance(prompt, str) or not isinstance(completion, str):
        return None, "non-text content"
    if not prompt.strip() or not completion.strip():
        return None, "empty content"
    msgs = [{"role": "system", "content": system}] if isinstance(system, str) and system.strip() else []
    return msgs + [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}], ""


def normalise_row(row: dict, fmt: str) -> tuple[dict | None, str]:
    """One row -> ``{"messages": [...]}`` (or ``{"text": ...}``), or None and the reason it cannot be used."""
    if fmt == "messages":
        msgs, why = _clean_messages(row.get("messages"), "role", "content",
                                    {"system": "system", "user": "user", "assistant": "assistant"})
    elif fmt == "sharegpt":
        msgs, why = _clean_messages(row.get("conversations"), "from", "value", SHAREGPT_ROLES)
        if msgs is None and why.startswith("unknown role") and isinstance(row.get("conversations"), list):
            msgs, why = _clean_messages(row["conversations"], "role", "content", SHAREGPT_ROLES)
    elif fmt == "alpaca":
        inp = row.get("input")
        prompt = row.get("instruction")
        if isinstance(prompt, str) and isinstance(inp, str) and inp.strip():
            prompt = f"{prompt}\n\n{inp}"
        msgs, why = _pair(prompt, row.get("output"), row.get("system"))
    elif fmt == "prompt_completion":
        p, c = next((p, c) for p, c in PAIR_COLUMNS if p in row and c in row)
        msgs, why = _pair(row.get(p), row.get(c), row.get("system"))
    else:
        text = row.get("text")
        if not isinstance(text, str):
            return None, "non-text content"
        return ({"text": text}, "") if text.strip() else (None, "empty content")
    return ({"messages": msgs}, "") if msgs else (None, why)


def _normalise_stream(rows: Iterable[dict], data: DataConfig, source: str, broken: Counter, keep) -> DatasetReport:
    """Normalise rows one at a time (after ``data.columns`` renaming), handing each usable one to ``keep``, and
    count what was read and dropped, and why. The format is told from the first 1,000 rows."""
    it = iter(rows)
    head = list(islice(it, 1000))
    if not head:
        raise DataError(f"no rows in {source}", "Check the file (or data.split): it holds no records.")
    rename = _renamer(data.columns, head, source)
    if rename is not None:
        head, it = [rename(r) for r in head], map(rename, it)
    columns = sorted({k for r in head for k in r})
    fmt = detect_format(columns)
    reasons: Counter = Counter()
    total = kept = 0
    for row in chain(head, it):
        total += 1
        item, why = normalise_row(row, fmt)
        if item is None:
            reasons[why] += 1
        else:
            kept += 1
            keep(item)
    dropped = Counter(broken)  # counted while the rows were read, so only complete now
    dropped.update(reasons)
    report = DatasetReport(source=source, format=fmt, columns=columns, total=total + sum(broken.values()), kept=kept,
                           dropped=dict(dropped))
    if not kept:
        reasons_text = ", ".join(f"{n} {r}" for r, n in dropped.most_common()) or "no rows"
        raise DataError(f"no usable rows in {source}: format {fmt}, columns {', '.join(columns)}; dropped {reasons_text}",
                        "Each row needs a user prompt and a non-empty assistant answer. Map other column names with "
                        "data.columns, e.g. {prompt: question, completion: answer}.")
    return report


def normalise(rows: Iterable[dict], data: DataConfig, source: str, broken: Counter | None = None) -> tuple[list[dict], DatasetReport]:
    """Normalise rows (after ``data.columns`` renaming) and count what was dropped and why (in memory: small data)."""
    kept: list[dict] = []
    report = _normalise_stream(rows, data, source, Counter(broken or {}), kept.append)
    return kept, report


# Inspect reads this many rows of a split, not all of them: a dataset of any size is inspected in about a second.
SAMPLE_ROWS = 10_000


class _ArrowRows:
    """Normalised rows written to an Arrow file as they come, a thousand at a time, then memory-mapped as a
    Dataset: what a split holds is never all in memory at once. The file lives in a folder of this process's that
    is removed when it exits."""

    def __init__(self):
        self.path = _work_dir() / f"rows-{uuid.uuid4().hex}.arrow"
        self.batch: list[dict] = []
        self.writer = self.sink = self.schema = None

    def add(self, item: dict) -> None:
        self.batch.append(item)
        if len(self.batch) >= 1000:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self.writer is None:
            key = "messages" if "messages" in self.batch[0] else "text"
            role = pa.struct([("role", pa.string()), ("content", pa.string())])
            self.schema = pa.schema([("messages", pa.list_(role))] if key == "messages" else [("text", pa.string())])
            self.sink = pa.OSFile(str(self.path), "wb")
            self.writer = pa.ipc.new_stream(self.sink, self.schema)
        self.writer.write_batch(pa.RecordBatch.from_pylist(self.batch, schema=self.schema))
        self.batch.clear()

    def finish(self):
        import datasets

        if self.batch:
            self._flush()
        self.writer.close()
        self.sink.close()
        return datasets.Dataset.from_file(str(self.path))


_WORK_DIR: Path | None = None


def _work_dir() -> Path:
    """This process's folder for Arrow files (normalised rows, token ids), removed at exit."""
    global _WORK_DIR
    if _WORK_DIR is None:
        import atexit
        import shutil
        import tempfile

        _WORK_DIR = Path(tempfile.mkdtemp(prefix="phi3space-data-"))
        atexit.register(shutil.rmtree, _WORK_DIR, True)
    return _WORK_DIR


def _read_split(data: DataConfig, split: str, source: str, token: str | None, sample: int | None,
                limit: int | None = None):
    """One split, normalised: (Dataset, DatasetReport). ``sample``: read only the first rows (kept in memory);
    otherwise all of them, into Arrow. ``limit``: keep at most this many usable rows (all are still counted)."""
    import datasets

    opened = open_split(data, split, token)
    rows, cut = opened.rows, False
    if sample is not None:
        head = list(islice(opened.rows, sample + 1))
        rows, cut = head[:sample], len(head) > sample
    in_memory: list[dict] = []
    arrow = _ArrowRows() if sample is None else None
    add = arrow.add if arrow else in_memory.append
    kept = 0

    def keep(item: dict) -> None:
        nonlocal kept
        if limit is None or kept < limit:
            add(item)
        kept += 1

    report = _normalise_stream(rows, data, source, opened.broken, keep)
    ds = arrow.finish() if arrow else datasets.Dataset.from_list(in_memory)
    if cut:
        report.rows_in_split, report.rows_in_split_exact = opened.size()
    return ds, report


def prepare(data: DataConfig, seed: int = 42, token: str | None = None, sample: int | None = None):
    """Load, normalise and split: returns (train Dataset, eval Dataset or None, DatasetReport).

    Rows are read and normalised one at a time and stored in Arrow (memory-mapped), so a split of a million rows
    takes little memory. With ``sample`` (Inspect), only the first ``sample`` rows of each split are read and the
    report says so."""
    train_ds, report = _read_split(data, data.split, data.dataset, token, sample, limit=data.max_samples)
    eval_ds = None
    if data.eval_split:
        eval_ds, _ = _read_split(data, data.eval_split, f"{data.dataset} [{data.eval_split}]", token, sample)
    elif data.eval_fraction > 0 and len(train_ds) >= 4:
        n_eval = max(1, round(len(train_ds) * data.eval_fraction))
        parts = train_ds.train_test_split(test_size=n_eval, seed=seed)
        train_ds, eval_ds = parts["train"], parts["test"]
    report.train_rows = len(train_ds)
    report.eval_rows = len(eval_ds) if eval_ds is not None else 0
    return train_ds, eval_ds, report


@dataclass
class Prepared:
    """A dataset ready to train on: rows (normalised and split; token ids and labels too when prepared for
    training), the report, and the tokenizer that measured it."""

    train: Any
    eval: Any
    report: DatasetReport
    tokenizer: Any


def prepare_with_tokenizer(data: DataConfig, base: str, max_length: int, seed: int = 42,
                           token: str | None = None, sample: int | None = SAMPLE_ROWS) -> Prepared:
    """What ``inspect`` and the web form show: load, normalise and split the first ``sample`` rows (None: all),
    load ``base``'s tokenizer, and measure token lengths."""
    from phi3space.engine.modeling import load_tokenizer

    train_ds, eval_ds, report = prepare(data, seed, token, sample=sample)
    tokenizer = load_tokenizer(base, token)
    add_token_stats(report, train_ds, tokenizer, max_length)
    return Prepared(train_ds, eval_ds, report, tokenizer)


def prepare_for_training(data: DataConfig, base: str, max_length: int, seed: int = 42,
                         token: str | None = None) -> Prepared:
    """Every row, normalised, split and tokenised once (trl takes the token ids as they are): the report's token
    lengths are measured on all the training rows."""
    from phi3space.engine.modeling import load_tokenizer

    train_ds, eval_ds, report = prepare(data, seed, token)
    tokenizer = load_tokenizer(base, token)
    train_ds = tokenize(train_ds, tokenizer, max_length)
    set_token_stats(report, sorted(train_ds["tokens"]), max_length, keep_lengths=False)
    train_ds = drop_untrained(train_ds)
    eval_ds = drop_untrained(tokenize(eval_ds, tokenizer, max_length)) if eval_ds is not None else None
    eval_ds = eval_ds if eval_ds is not None and len(eval_ds) else None
    empty = report.train_rows - len(train_ds)
    if empty:  # nothing of the answer fits in max_length: trl would drop them too
        report.dropped[f"no trained tokens within max_length {max_length}"] = empty
        report.kept -= empty
    report.train_rows, report.eval_rows = len(train_ds), len(eval_ds) if eval_ds is not None else 0
    if not len(train_ds):
        raise DataError(f"no row of {data.dataset} has an answer token within training.max_length {max_length}",
                        "Raise training.max_length: the prompts alone fill it.")
    return Prepared(train_ds, eval_ds, report, tokenizer)
