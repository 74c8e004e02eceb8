#!/usr/bin/env bash
# The CLI: build a component folder's own environment (cached; run by tests/test_docs_site.py).
set -euo pipefail
chainrule new my_component --backend numpy 2>/dev/null
# --8<-- [start:build]
chainrule env build my_component --quiet           # prints the environment's python
# --8<-- [end:build]
"$(chainrule env build my_component --quiet)" -c "import chainrule, numpy"
# --8<-- [start:manage]
chainrule env list                                 # cached environments, least recently used first
chainrule env ps                                   # servers started by launch() that still run
chainrule env rebuild my_component --quiet         # delete its environment and build it again
chainrule env prune --older-than 30d --dry-run     # what pruning would remove
# --8<-- [end:manage]
