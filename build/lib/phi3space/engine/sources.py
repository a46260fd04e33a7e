"""Where a split's rows come from: a local file or folder (checked and read by ``files``) or a Hub dataset, opened
lazily so that rows are read one at a time, as they are asked for.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

from phi3space.config import DataConfig
from phi3space.engine.files import (
    LOCAL_SUFFIXES,
    _check_head,
    _check_path,
    _count_lines,
    _is_whole_json,
    _iter_json_lines,
    _local_files,
    _read_csv,
    _read_json_document,
    _read_parquet,
)
from phi3space.errors import DataError, scrub


@dataclass
class Source:
    """One split, read lazily: ``rows`` yields raw rows, ``broken`` counts unreadable lines as they are met."""

    rows: Iterator[dict]
    broken: Counter
    known: int = 0  # rows of the parts whose size is known without reading them (Arrow files, JSON documents)
    uncounted: list[Path] = field(default_factory=list)  # JSON-lines files: sized by their lines, on demand
    revision: str | None = None  # a Hub dataset's commit that was read (a run records it, to be repeated)

    def size(self) -> tuple[int, bool]:
        """The split's row count, and whether it is exact (JSON lines are counted by lines, blank ones too)."""
        counts = [_count_lines(f) for f in self.uncounted]
        return self.known + sum(n for n, _ in counts), False if counts else True


def _open_local(ref: str, split: str) -> Source:
    path = Path(ref).expanduser()
    _check_path(path, ref)
    if path.is_file() and split != "train":  # one file is one split: data.split or eval_split would be ignored
        raise DataError(f"{ref} is one file, so it holds one split (train), not {split!r}",
                        f"Leave data.split at train and hold rows out with data.eval_fraction (not data.eval_split), "
                        f"or point at a folder with {split}.jsonl beside train.jsonl.")
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


def _open_hub(ref: str, config_name: str | None, split: str, token: str | None, revision: str | None = None) -> Source:
    import datasets
    from huggingface_hub import HfApi, constants
    from huggingface_hub import errors as hub_errors

    from phi3space.hub.access import check_read_access
    from phi3space.hub.errors import gated, hub_error, is_transient

    try:
        check_read_access(ref, "dataset", token)
        if not constants.HF_HUB_OFFLINE:  # the commit read: the latest one, or the one asked for
            revision = HfApi().dataset_info(ref, revision=revision, token=token or False).sha or revision
        ds = datasets.load_dataset(ref, config_name, split=split, token=token, revision=revision)
    except hub_errors.GatedRepoError:
        raise gated(f"datasets/{ref}", DataError) from None
    except hub_errors.RevisionNotFoundError:
        raise DataError(f"dataset {ref} has no revision {revision!r}",
                        "Set data.revision to a commit hash, branch or tag of the dataset, or leave it empty for the "
                        "latest.") from None
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
    # Arrow rows, one at a time: never the whole split as Python objects
    return Source(iter(ds), Counter(), len(ds), revision=revision)


def open_split(data: DataConfig, split: str, token: str | None = None) -> Source:
    """One split of ``data.dataset`` (a Hub ID or a local file or folder), ready to be read row by row."""
    from phi3space.refs import is_local_ref

    if is_local_ref(data.dataset):
        return _open_local(data.dataset, split)
    return _open_hub(data.dataset, data.config_name, split, token, data.revision)


def load_rows(data: DataConfig, split: str, token: str | None = None) -> tuple[list[dict], Counter]:
    """Raw rows of one split of ``data.dataset`` and the count of unreadable lines (all in memory: small data)."""
    source = open_split(data, split, token)
    rows = list(source.rows)
    return rows, source.broken
