#!/usr/bin/env bash
# The CLI: build a component folder's own environment (cached; run by tests/test_docs_site.py).
set -euo pipefail
chainrule new my_component --backend numpy 2>/dev/null
# --8<-- [start:build]
chainrule env build my_component --quiet           # prints the environment's python
# --8<-- [end:build]
"$(chainrule env build my_component --quiet)" -c "import chainrule, numpy"
