"""``memlens run`` and the command line: the Stage table, the run folder, settings, the report."""
