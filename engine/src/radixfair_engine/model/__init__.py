"""The Llama decoder, its weights loader and the kernel backend seam."""
