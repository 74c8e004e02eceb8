"""The PyTorch binding behind `chainrule.torch` (the autograd Function and its rules)."""
