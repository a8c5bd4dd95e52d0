"""The core layer: the model wrapper, paragraphs, components, exact metrics, the result protocol,
file I/O and errors. Imports nothing else of memlens."""
