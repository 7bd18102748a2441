import sys

from edgeprobe.cli import main

sys.exit(main())
