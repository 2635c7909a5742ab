"""``python -m testbed.monitoring up|down|status``."""

import sys

from testbed.monitoring.stack import main

sys.exit(main())
