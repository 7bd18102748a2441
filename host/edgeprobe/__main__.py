"""``python -m edgeprobe``: the same command as ``edgeprobe``."""

import sys

from edgeprobe.cli.main import main

sys.exit(main())
