import sys

from edgeprobe.cli.main import main

sys.exit(main())
