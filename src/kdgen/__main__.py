"""``python -m kdgen``."""

import sys

from kdgen.cli import main

sys.exit(main())
