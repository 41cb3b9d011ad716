"""``python -m corral.engine``: see :func:`corral.engine.engine.main`."""

import sys

from corral.engine.engine import main

sys.exit(main())
