"""Helpers shared by the benchmark workers: peak memory, timing and result files."""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from collections.abc import Callable


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far, in bytes (Linux reports KiB)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(kib) * (1 if sys.platform == "darwin" else 1024)


def time_runs(run: Callable[[], None], prepare: Callable[[], None], sync: Callable[[], None],
              repeats: int) -> dict[str, float]:
    """Time ``run`` ``repeats`` times, calling ``prepare`` (untimed) before each run.

    ``sync`` waits for the device (``ti.sync``) so asynchronous launches are counted.
    Returns the best (``seconds``, the least disturbed by other load on a shared
    machine), the median and every individual time; ``cpu_seconds``: the least CPU time of
    this process's threads over the repeats (``time.process_time``; on a machine loaded by
    other processes it moves far less than wall time, but it does not credit parallelism:
    two busy threads count twice), every repeat's in ``cpu_seconds_all``.
    """
    times, cpu = [], []
    for _ in range(repeats):
        prepare()
        sync()
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        sync()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"seconds": min(times), "seconds_median": statistics.median(times), "seconds_all": times,
            "cpu_seconds": min(cpu), "cpu_seconds_all": cpu}


def write_result(path: str | None, record: dict) -> None:
    """Write one JSON record to ``path`` (stdout when ``None``)."""
    text = json.dumps(record, indent=1)
    if path is None:
        print(text)
        return
    with open(path, "w") as f:
        f.write(text)
