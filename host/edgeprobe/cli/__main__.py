"""``python -m edgeprobe.cli``: the same command as ``edgeprobe`` (kept from when cli was a module)."""

from edgeprobe.cli.main import main

raise SystemExit(main())
