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
from collections import Counter
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import DataConfig
from .errors import DataError, scrub

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
    lengths: list[int] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d.pop("lengths")
        return d

    def lines(self) -> list[str]:
        out = [f"dataset: {self.source}", f"format: {self.format} (columns: {', '.join(self.columns)})",
               f"rows: {self.total} read, {self.kept} kept, {self.total - self.kept} dropped"]
        out += [f"  dropped {n}: {reason}" for reason, n in sorted(self.dropped.items(), key=lambda x: -x[1])]
        if self.train_rows:
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


def _read_text(path: Path, kind: str) -> str:
    """A JSON/JSONL/CSV file's text, or a DataError saying why it is not UTF-8 text (empty, binary, UTF-16, ...)."""
    raw = _read_bytes(path)
    if not raw.strip():
        raise DataError(f"{path} is empty (only blank lines)", _EMPTY_HINT)
    hint = f"Save it again as UTF-8 {kind}" + (" (in Excel: CSV UTF-8)." if kind == "CSV" else
                                               " (in an editor: encoding UTF-8).")
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DataError(f"{path} is UTF-16 text; {kind} files must be UTF-8", hint)
    if b"\0" in raw[:8192]:
        raise DataError(f"{path} is a binary file, not {kind} text", _WRONG_FILE_HINT)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line})", hint) from None


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    names = {dict: "object", list: "array", str: "string", int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _read_json_file(path: Path, broken: Counter) -> list[dict]:
    text = _read_text(path, "JSON")
    stripped = text.lstrip()
    if stripped.startswith("[") or (path.suffix == ".json" and stripped.startswith("{") and "\n{" not in stripped):
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
    rows = []
    first_problem = ""
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            broken["broken JSON line"] += 1
            why = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
            first_problem = first_problem or f"{path} is not JSON: line {number} does not parse ({why})"
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            broken["not a JSON object"] += 1
            first_problem = first_problem or (f"{path} holds a JSON {_json_kind(row)} on line {number}, "
                                              "not an object (a row)")
    if not rows:  # not one usable line: the whole file is something else
        raise DataError(first_problem, _JSON_HINT)
    return rows


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


def _read_with_datasets(path: Path, kind: str) -> list[dict]:
    """Rows of a CSV or Parquet file; the file was checked first, so errors here are about its contents."""
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
    return ds.to_list()


def _read_csv(path: Path) -> list[dict]:
    text = _read_text(path, "CSV")
    if sum(1 for line in text.splitlines() if line.strip()) < 2:
        raise DataError(f"{path} has a header line but no rows", "Point at a CSV file with rows under its header.")
    return _read_with_datasets(path, "csv")


def _read_parquet(path: Path) -> list[dict]:
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


def _load_local(ref: str, split: str, broken: Counter) -> list[dict]:
    path = Path(ref).expanduser()
    _check_path(path, ref)
    files = _local_files(path, split)
    if not files:
        raise DataError(f"no {split!r} data files (JSON, JSONL, CSV, Parquet) in {ref}",
                        "Name files after their split (train.jsonl, test.jsonl) or point at one file.")
    rows: list[dict] = []
    for f in files:
        kind = LOCAL_SUFFIXES.get(f.suffix.lower())
        if kind is None:
            raise DataError(f"{f.name}: unsupported file type", "Use JSON, JSONL, CSV or Parquet.")
        if kind == "json":
            rows += _read_json_file(f, broken)
        elif kind == "csv":
            rows += _read_csv(f)
        else:
            rows += _read_parquet(f)
    return rows


def _load_hub(ref: str, config_name: str | None, split: str, token: str | None) -> list[dict]:
    import datasets
    from huggingface_hub import errors as hub_errors

    from .hub import check_read_access, gated, hub_error, is_transient

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
    return ds.to_list()


def load_rows(data: DataConfig, split: str, token: str | None = None) -> tuple[list[dict], Counter]:
    """Raw rows of one split of ``data.dataset`` and the count of unreadable lines."""
    broken: Counter = Counter()
    from .hub import is_local_ref

    if is_local_ref(data.dataset):
        rows = _load_local(data.dataset, split, broken)
    else:
        rows = _load_hub(data.dataset, data.config_name, split, token)
    return rows, broken


# ---------------------------------------------------------------- formats

def _rename(rows: list[dict], columns: dict[str, str], source: str) -> list[dict]:
    """Rows with the dataset's column names replaced by ours (``columns`` maps ours to theirs)."""
    if not columns:
        return rows
    present = {k for r in rows[:1000] for k in r}
    missing = {ours: theirs for ours, theirs in columns.items() if theirs not in present}
    if missing:
        asked = ", ".join(f"{ours}: {theirs}" for ours, theirs in missing.items())
        raise DataError(f"data.columns names columns that {source} does not have ({asked}); "
                        f"its columns are: {', '.join(sorted(present))}",
                        "data.columns maps our names to the dataset's own columns, "
                        "e.g. {prompt: question, completion: answer}.")
    theirs_to_ours = {v: k for k, v in columns.items()}
    return [{theirs_to_ours.get(k, k): v for k, v in row.items()} for row in rows]


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


def normalise(rows: list[dict], data: DataConfig, source: str, broken: Counter | None = None) -> tuple[list[dict], DatasetReport]:
    """Normalise rows (after ``data.columns`` renaming) and count what was dropped and why."""
    if not rows:
        raise DataError(f"no rows in {source}", "Check the file (or data.split): it holds no records.")
    rows = _rename(rows, data.columns, source)
    columns = sorted({k for r in rows[:1000] for k in r})
    fmt = detect_format(columns)
    report = DatasetReport(source=source, format=fmt, columns=columns, total=len(rows) + sum((broken or {}).values()))
    dropped = Counter(broken or {})
    kept = []
    for row in rows:
        item, why = normalise_row(row, fmt)
        if item is None:
            dropped[why] += 1
        else:
            kept.append(item)
    report.kept, report.dropped = len(kept), dict(dropped)
    if not kept:
        reasons = ", ".join(f"{n} {r}" for r, n in dropped.most_common()) or "no rows"
        raise DataError(f"no usable rows in {source}: format {fmt}, columns {', '.join(columns)}; dropped {reasons}",
                        "Each row needs a user prompt and a non-empty assistant answer. Map other column names with "
                        "data.columns, e.g. {prompt: question, completion: answer}.")
    return kept, report


def prepare(data: DataConfig, seed: int = 42, token: str | None = None):
    """Load, normalise and split: returns (train Dataset, eval Dataset or None, DatasetReport)."""
    import datasets

    rows, broken = load_rows(data, data.split, token)
    train, report = normalise(rows, data, data.dataset, broken)
    if data.max_samples:
        train = train[: data.max_samples]
    eval_rows: list[dict] = []
    if data.eval_split:
        eval_raw, eval_broken = load_rows(data, data.eval_split, token)
        eval_rows, _ = normalise(eval_raw, data, f"{data.dataset} [{data.eval_split}]", eval_broken)
    train_ds = datasets.Dataset.from_list(train)
    if not eval_rows and data.eval_fraction > 0 and len(train) >= 4:
        n_eval = max(1, round(len(train) * data.eval_fraction))
        parts = train_ds.train_test_split(test_size=n_eval, seed=seed)
        train_ds, eval_ds = parts["train"], parts["test"]
    else:
        eval_ds = datasets.Dataset.from_list(eval_rows) if eval_rows else None
    report.train_rows = len(train_ds)
    report.eval_rows = len(eval_ds) if eval_ds is not None else 0
    return train_ds, eval_ds, report


@dataclass
class Prepared:
    """A dataset ready to train on: rows (normalised and split), the report, and the tokenizer that measured it."""

    train: Any
    eval: Any
    report: DatasetReport
    tokenizer: Any


def prepare_with_tokenizer(data: DataConfig, base: str, max_length: int, seed: int = 42,
                           token: str | None = None) -> Prepared:
    """The one path from settings to tokens, shared by ``inspect``, the web form and the trainer: load, normalise
    and split the rows, load ``base``'s tokenizer, and measure token lengths."""
    from .modeling import load_tokenizer

    train_ds, eval_ds, report = prepare(data, seed, token)
    tokenizer = load_tokenizer(base, token)
    add_token_stats(report, train_ds, tokenizer, max_length)
    return Prepared(train_ds, eval_ds, report, tokenizer)


# ---------------------------------------------------------------- tokens and rendering

def training_template(tokenizer) -> str:
    """The chat template with ``{% generation %}`` markers that trl uses for assistant-only loss."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    if has_generation_markers(tokenizer.chat_template):
        return tokenizer.chat_template
    return get_training_chat_template(tokenizer)


def tokenize_example(item: dict, tokenizer) -> tuple[list[int], list[int]]:
    """Token ids of one normalised row and its mask of trained tokens (1 = in the loss), as trl computes them."""
    if "text" in item:
        ids = tokenizer(item["text"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        return ids, [1] * len(ids)
    enc = tokenizer.apply_chat_template(item["messages"], chat_template=training_template(tokenizer), tokenize=True,
                                        return_dict=True, return_assistant_tokens_mask=True)
    return list(enc["input_ids"]), list(enc["assistant_masks"])


def add_token_stats(report: DatasetReport, rows: Iterable[dict], tokenizer, max_length: int, limit: int = 2000) -> None:
    """Fill token-length percentiles and the share of rows over ``max_length`` (on at most ``limit`` rows)."""
    lengths = sorted(len(tokenize_example(r, tokenizer)[0]) for _, r in zip(range(limit), rows))
    if not lengths:
        return
    pick = lambda q: lengths[min(len(lengths) - 1, int(q * len(lengths)))]  # noqa: E731
    report.token_percentiles = {"min": lengths[0], "p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": lengths[-1]}
    report.over_max_length = sum(n > max_length for n in lengths) / len(lengths)
    report.max_length = max_length
    report.lengths = lengths


def render_segments(item: dict, tokenizer) -> list[tuple[str, bool]]:
    """One row rendered with the chat template, as (text, trained) segments."""
    ids, mask = tokenize_example(item, tokenizer)
    segments: list[tuple[str, bool]] = []
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or mask[i] != mask[start]:
            segments.append((tokenizer.decode(ids[start:i], skip_special_tokens=False), bool(mask[start])))
            start = i
    return segments


def render_marked(item: dict, tokenizer, open_mark: str = "[[", close_mark: str = "]]") -> str:
    """Rendered row with the trained spans wrapped in markers (for the CLI)."""
    return "".join(f"{open_mark}{t}{close_mark}" if trained else t for t, trained in render_segments(item, tokenizer))
