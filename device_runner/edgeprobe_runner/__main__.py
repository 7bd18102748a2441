import sys

from edgeprobe_runner.runner import main

sys.exit(main())
