"""Layer 1, schemas: the exception tree, array annotations, flattening into leaves by path,
JSON Schema in and out, and the validation messages. Imports nothing else of chainrule."""
