"""``python -m beam_pixels``: the same as the ``beam-pixels`` command."""

import sys

from beam_pixels.cli import main

sys.exit(main())
