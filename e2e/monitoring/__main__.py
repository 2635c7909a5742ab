"""``python -m e2e.monitoring up|down|status``."""

import sys

from e2e.monitoring.stack import main

sys.exit(main())
