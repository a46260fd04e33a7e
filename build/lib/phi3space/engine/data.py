"""Datasets: load a Hub ID or a local file, detect its format, normalise it to chat messages, report on it.

Every usable row becomes ``{"messages": [{"role", "content"}, ...]}`` (system/user/assistant, ending on an
assistant turn), so trl trains on assistant turns only, whatever the source format; plain ``text`` rows stay
``{"text": ...}`` and are trained on whole. Rows that cannot be used are dropped and counted per reason.

The rows are read by ``sources`` (a Hub dataset, or a local file or folder that ``files`` checks and reads).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import chain, islice
from typing import Any

from phi3space.config import DataConfig

# open_split, load_rows and Source live in sources and are importable from here too, as before the split.
from phi3space.engine.arrowrows import ArrowRows
from phi3space.engine.sources import Source, load_rows, open_split  # noqa: F401
from phi3space.engine.tokens import add_token_stats, drop_untrained, set_token_stats, tokenize
from phi3space.errors import DataError

SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
# Column pairs recognised as prompt -> completion, in order of preference.
PAIR_COLUMNS = [("prompt", "completion"), ("prompt", "response"), ("question", "answer"), ("query", "response"),
                ("instruction", "response"), ("input", "output"), ("input", "target"), ("source", "target")]
# The columns a row of each format must have (prompt_completion: one pair of PAIR_COLUMNS).
_NEEDS = {"messages": ("messages",), "sharegpt": ("conversations",), "alpaca": ("instruction", "output"),
          "text": ("text",)}


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
    revision: str | None = None  # a Hub dataset's commit that was read
    lengths: list[int] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        """The report as a run_started event carries it (without the per-row lengths)."""
        d = dict(self.__dict__)
        d.pop("lengths")
        return d

    def estimated_train_rows(self) -> int:
        """Training rows in the whole split: counted, or, after a sample, scaled from it."""
        if self.rows_in_split is None or not self.total:
            return self.train_rows
        return round(self.train_rows * self.rows_in_split / self.total)

    def lines(self) -> list[str]:
        """The report in lines a person reads (Inspect, the CLI)."""
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
        raise DataError("this is preference data (chosen/rejected pairs), which is for DPO, not supervised fine-tuning",
                        "Set training.objective: dpo to train on the pairs, or map one column for SFT with "
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
    """One row -> ``{"messages": [...]}`` (or ``{"text": ...}``), or None and the reason it cannot be used (a JSON
    row may lack a column the other rows have)."""
    lacking = [c for c in _NEEDS.get(fmt, ()) if c not in row]
    if lacking:
        return None, f"missing the {' and '.join(lacking)} column"
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
        pair = next(((p, c) for p, c in PAIR_COLUMNS if p in row and c in row), None)
        if pair is None:  # a JSON row without one of the columns the others have
            return None, "missing a prompt or an answer column"
        msgs, why = _pair(row.get(pair[0]), row.get(pair[1]), row.get("system"))
    else:
        text = row.get("text")
        if not isinstance(text, str):
            return None, "non-text content"
        return ({"text": text}, "") if text.strip() else (None, "empty content")
    return ({"messages": msgs}, "") if msgs else (None, why)


@dataclass(frozen=True)
class RowKind:
    """What an objective trains on: how its format is told from the columns, how a row is normalised, and what a
    usable row needs (the hint when none is). SFT's is below; DPO's pairs are in ``pairs``."""

    detect: Callable[[Iterable[str]], str]
    normalise: Callable[[dict, str], tuple[dict | None, str]]
    needs: str


SFT_ROWS = RowKind(detect_format, normalise_row,
                   "Each row needs a user prompt and a non-empty assistant answer. Map other column names with "
                   "data.columns, e.g. {prompt: question, completion: answer}.")


def _normalise_stream(rows: Iterable[dict], data: DataConfig, source: str, broken: Counter, keep,
                      kind: RowKind = SFT_ROWS) -> DatasetReport:
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
    fmt = kind.detect(columns)
    reasons: Counter = Counter()
    total = kept = 0
    for row in chain(head, it):
        total += 1
        item, why = kind.normalise(row, fmt)
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
                        kind.needs)
    return report


def normalise(rows: Iterable[dict], data: DataConfig, source: str, broken: Counter | None = None) -> tuple[list[dict], DatasetReport]:
    """Normalise rows (after ``data.columns`` renaming) and count what was dropped and why (in memory: small data)."""
    kept: list[dict] = []
    report = _normalise_stream(rows, data, source, Counter(broken or {}), kept.append)
    return kept, report


# Inspect reads this many rows of a split, not all of them: a dataset of any size is inspected in about a second.
SAMPLE_ROWS = 10_000


def _read_split(data: DataConfig, split: str, source: str, token: str | None, sample: int | None,
                limit: int | None = None, kind: RowKind = SFT_ROWS):
    """One split, normalised: (Dataset, DatasetReport). ``sample``: read only the first rows (kept in memory);
    otherwise all of them, into Arrow. ``limit``: keep at most this many usable rows (all are still counted)."""
    import datasets

    opened = open_split(data, split, token)
    rows, cut = opened.rows, False
    if sample is not None:
        head = list(islice(opened.rows, sample + 1))
        rows, cut = head[:sample], len(head) > sample
    in_memory: list[dict] = []
    arrow = ArrowRows() if sample is None else None
    add = arrow.add if arrow else in_memory.append
    kept = 0

    def keep(item: dict) -> None:
        nonlocal kept
        if limit is None or kept < limit:
            add(item)
        kept += 1

    report = _normalise_stream(rows, data, source, opened.broken, keep, kind)
    report.revision = opened.revision
    ds = arrow.finish() if arrow else datasets.Dataset.from_list(in_memory)
    if cut:
        report.rows_in_split, report.rows_in_split_exact = opened.size()
    return ds, report


def prepare(data: DataConfig, seed: int = 42, token: str | None = None, sample: int | None = None,
            kind: RowKind = SFT_ROWS):
    """Load, normalise and split: returns (train Dataset, eval Dataset or None, DatasetReport).

    Rows are read and normalised one at a time and stored in Arrow (memory-mapped), so a split of a million rows
    takes little memory. With ``sample`` (Inspect), only the first ``sample`` rows of each split are read and the
    report says so."""
    train_ds, report = _read_split(data, data.split, data.dataset, token, sample, data.max_samples, kind)
    eval_ds = None
    if data.eval_split:
        eval_ds, _ = _read_split(data, data.eval_split, f"{data.dataset} [{data.eval_split}]", token, sample, None, kind)
    elif data.eval_fraction > 0 and len(train_ds) >= 4:
        n_eval = max(1, round(len(train_ds) * data.eval_fraction))
        if n_eval >= len(train_ds):
            raise DataError(f"data.eval_fraction {data.eval_fraction:g} of {len(train_ds)} usable rows leaves no row "
                            "to train on", "Lower data.eval_fraction (e.g. 0.1), or set it to 0 to evaluate on none.")
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
