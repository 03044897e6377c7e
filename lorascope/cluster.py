"""Running independent pieces of an analysis or a report on a Dask ``distributed`` cluster
(``--scheduler ADDRESS``; ``pip install 'lorascope[dask]'``).

Each task gets the recordings' file paths, never an open file: an h5py handle cannot travel
between processes, and dask's own guidance for HDF5 is to let each task open its file. So the
workers must see the files at the same paths as the client (a shared filesystem), and run the
same lorascope. dask is imported here only, and only when a scheduler is asked for."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

from lorascope.errors import UsageError

__all__ = ["connect", "run_tasks"]

# How long the client waits for the scheduler before saying so (seconds).
CONNECT_TIMEOUT = 20


@contextmanager
def connect(address: str) -> Iterator[Any]:
    """A ``distributed.Client`` of the scheduler at ``address`` (``tcp://host:8786``), closed on exit;
    waits ``CONNECT_TIMEOUT`` seconds for it."""
    try:
        from distributed import Client
    except ImportError:
        raise UsageError("--scheduler needs dask's distributed scheduler: pip install 'lorascope[dask]'") from None
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise UsageError(f"could not reach a Dask scheduler at {address!r} ({exc}); start one with "
                         "`dask scheduler` and workers with `dask worker ADDRESS`, then pass the "
                         "address it prints") from None
    try:
        yield client
    finally:
        client.close()


def run_tasks(address: str, function: Callable[..., Any], calls: Sequence[tuple],
              on_done: Callable[[int, Any], None] = lambda index, result: None) -> list[Any]:
    """``function(*call)`` for every call, as tasks on the cluster; the results in the order of
    ``calls``. ``on_done(index, result)`` runs here as each finishes. A task's error is raised
    here, as the function raised it."""
    from distributed import as_completed

    with connect(address) as client:
        # pure=False: two equal calls are still two pieces of work (dask would merge them)
        futures = [client.submit(function, *call, pure=False) for call in calls]
        index = {future.key: i for i, future in enumerate(futures)}
        results: list[Any] = [None] * len(futures)
        for future in as_completed(futures, loop=client.loop):  # this client: it is not the default one
            i = index[future.key]
            results[i] = future.result()
            future.release()  # its memory on the worker is no longer needed
            on_done(i, results[i])
        return results
