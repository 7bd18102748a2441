"""Device side of edgeprobe: the Python runner and the shared protocol. Never imports the host."""

__version__ = "0.1.0"
