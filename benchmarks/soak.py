"""Soak benchmark: one ``beam-pixels run`` against an endless CDC stream, measured commit by commit.

Usage: python benchmarks/soak.py --sink iceberg --preload 1000000 --rate 2000 --commits 50
(see --help and beam_pixels/bench/soak.py).
"""

import sys

from beam_pixels.bench.soak import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
