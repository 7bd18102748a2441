"""Where a farm's device workers run: ``local`` (threads of this process, the default) and ``ray``
(the driver's side of a farm over several hosts; needs the ``edgeprobe[ray]`` extra and is imported
only when ``--ray`` is used)."""

from edgeprobe.farm.executors.local import Executor, Handle, ThreadExecutor

__all__ = ["Executor", "Handle", "ThreadExecutor"]
