"""`python -m services <command>` with the import-time heap moved out of the garbage
collector's reach (gc.freeze()) — an experiment for `http_bench.py --gc-freeze`, to
measure how much full collections over the long-lived startup objects cost the tail
latency. The service code is unchanged.
"""

from __future__ import annotations

import gc
import importlib
import sys

import services.cli

if __name__ == "__main__":
    command = sys.argv[1]
    module, _ = services.cli.COMMANDS[command]
    importlib.import_module(module)  # the service's whole import graph
    gc.collect()
    gc.freeze()
    sys.exit(services.cli.main([command]))
