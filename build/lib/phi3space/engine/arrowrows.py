"""Normalised rows on their way to a Dataset: written to an Arrow file as they come, never all in memory."""

from __future__ import annotations

import uuid
from pathlib import Path


class ArrowRows:
    """Normalised rows written to an Arrow file as they come, a thousand at a time, then memory-mapped as a
    Dataset: what a split holds is never all in memory at once. The file lives in a folder of this process's that
    is removed when it exits."""

    def __init__(self):
        self.path = _work_dir() / f"rows-{uuid.uuid4().hex}.arrow"
        self.batch: list[dict] = []
        self.writer = self.sink = self.schema = None

    def add(self, item: dict) -> None:
        """Add one normalised row (written out with the next thousand)."""
        self.batch.append(item)
        if len(self.batch) >= 1000:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self.writer is None:  # messages (lists of role/content) or text, whatever the columns are named
            role = pa.struct([("role", pa.string()), ("content", pa.string())])
            self.schema = pa.schema([(k, pa.list_(role) if isinstance(v, list) else pa.string())
                                     for k, v in self.batch[0].items()])
            self.sink = pa.OSFile(str(self.path), "wb")
            self.writer = pa.ipc.new_stream(self.sink, self.schema)
        self.writer.write_batch(pa.RecordBatch.from_pylist(self.batch, schema=self.schema))
        self.batch.clear()

    def finish(self):
        """Write what is left and return the rows as a memory-mapped ``datasets.Dataset``."""
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
