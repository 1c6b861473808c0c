"""Structured pruning of a Llama teacher into a smaller dense Llama (depth, width, both)."""
