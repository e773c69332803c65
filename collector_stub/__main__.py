"""``python -m collector_stub``: the same as the ``collector-stub`` command."""

import sys

from collector_stub.main import main

sys.exit(main())
