#!/usr/bin/env bash
# The CLI: scaffold a component, check its gradients, print its schema (run by tests/test_docs_site.py).
set -euo pipefail
# --8<-- [start:new]
chainrule new my_component --backend numpy     # my_component/{component.py,chainrule.toml,README.md}
# --8<-- [end:new]
test -f my_component/component.py && test -f my_component/chainrule.toml
# --8<-- [start:check]
chainrule check my_component '{"x": [0.1, 0.2, 0.3]}'      # exit 1 if any check fails
# --8<-- [end:check]
# --8<-- [start:schema]
chainrule schema my_component/component.py:my_component   # or a folder, or a server URL
# --8<-- [end:schema]
grep -q '"vjp": "finite-difference"' <<<"$(chainrule schema my_component)"
