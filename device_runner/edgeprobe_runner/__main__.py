"""``python -m edgeprobe_runner``: the Python runner (runner.py), same arguments as the native one."""

import sys

from edgeprobe_runner.runner import main

sys.exit(main())
