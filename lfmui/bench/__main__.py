"""``python -m lfmui.bench``: the command line in ``lfmui.bench.cli``."""

import sys

from lfmui.bench.cli import main

sys.exit(main())
