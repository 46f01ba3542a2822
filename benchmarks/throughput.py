"""Throughput of the pipeline into Iceberg and Paimon against a framework-free ceiling.

Usage: python benchmarks/throughput.py [--rows N] (see --help and beam_pixels/bench/throughput.py).
"""

import sys

from beam_pixels.bench.throughput import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
