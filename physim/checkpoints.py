"""Host-side storage of the states at the start of each checkpoint chunk.

Reverse mode with checkpointing keeps K + 1 states on the device and, on the host, one
state per chunk of K substeps: T / K of them for a rollout of T substeps. Held in RAM that
grows linearly with the horizon (152 MiB for 20k particles, T = 4,000, K = 50). A
:class:`CheckpointStore` keeps the first ``ram_bytes`` worth in memory and writes the rest
to files in a private temporary directory (plain ``np.save``/``np.load``, no memory
mapping, so spilled checkpoints do not count against the process's resident memory),
which makes peak RAM independent of the horizon. The directory is deleted when the store
is closed or garbage-collected.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

__all__ = ["CheckpointStore", "DEFAULT_RAM_MB"]

#: default RAM budget for checkpoints (``Scene(checkpoint_ram_mb=...)``), in MiB
DEFAULT_RAM_MB = 64.0


class CheckpointStore:
    """A list of state dicts (name -> array) that spills to disk beyond ``ram_bytes``.

    Args:
        ram_bytes: bytes of checkpoints kept in memory; ``None`` keeps everything in memory,
            ``0`` writes every checkpoint to disk.
        directory: where to create the temporary directory (default: the system's).
    """

    def __init__(self, ram_bytes: int | None = int(DEFAULT_RAM_MB * 2**20), directory: str | None = None):
        if ram_bytes is not None and ram_bytes < 0:
            raise ValueError(f"ram_bytes must be >= 0 or None, got {ram_bytes!r}")
        self.ram_bytes = ram_bytes
        self._directory = directory
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._items: list[dict[str, np.ndarray] | str] = []
        self.bytes_in_ram = 0
        self.bytes_on_disk = 0

    def __len__(self) -> int:
        return len(self._items)

    def append(self, state: dict[str, np.ndarray]) -> None:
        size = sum(a.nbytes for a in state.values())
        if self.ram_bytes is None or self.bytes_in_ram + size <= self.ram_bytes:
            self._items.append(state)
            self.bytes_in_ram += size
            return
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="physim-ckpt-", dir=self._directory)
        path = os.path.join(self._tmp.name, f"{len(self._items)}.npz")
        with open(path, "wb") as f:
            np.savez(f, **state)
        self._items.append(path)
        self.bytes_on_disk += size

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        item = self._items[index]
        if isinstance(item, dict):
            return item
        with np.load(item) as data:
            return {k: data[k] for k in data.files}

    @property
    def spilled(self) -> int:
        """How many checkpoints are on disk."""
        return sum(1 for item in self._items if isinstance(item, str))

    def close(self) -> None:
        """Drop every checkpoint and delete the spill directory."""
        self._items.clear()
        self.bytes_in_ram = self.bytes_on_disk = 0
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __del__(self):  # pragma: no cover - depends on the garbage collector
        try:
            self.close()
        except Exception:
            pass
