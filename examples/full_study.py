"""The whole study from Python, as `memlens run` does it: every stage into one folder and an
offline HTML report. Re-running resumes; a folder holding another run is refused.

    MEMLENS_SIZE=tiny python examples/full_study.py
"""

import json
import os

import memlens as ml

size = os.environ.get("MEMLENS_SIZE", "default")
out = os.environ.get("MEMLENS_OUT", f"memlens-run-{size}")
config = ml.RunConfig(model="organism" if size == "default" else f"organism-{size}")  # or RunConfig.from_toml(...)
summary = ml.run_pipeline(config, out, cache_dir=os.environ.get("MEMLENS_CACHE"), progress=False)
print("memorized / partly / non-memorized:", [summary["scan"][k]["count"] for k in ("memorized", "partly", "non_memorized")])
print("most implicated head:", json.dumps(summary["heads"]["top"][0]))
print("seconds per stage:", summary["seconds"])
print("report:", os.path.join(out, "report.html"))
