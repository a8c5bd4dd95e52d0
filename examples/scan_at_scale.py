"""Scan a paragraph file in shards that stream to Parquet, merge them, and read the table.

On a cluster each shard is its own process (`memlens scan FILE --shard auto --out T.parquet`
under torchrun or SLURM); here the two shards run one after the other.

    python examples/scan_at_scale.py            # default organism (built on first use)
    MEMLENS_SIZE=tiny python examples/scan_at_scale.py
"""

import json
import os

import memlens as ml

model = ml.HookedModel.organism(size=os.environ.get("MEMLENS_SIZE", "default"))
paragraphs = model.ground_truth.paragraph_set()
with open("paragraphs.jsonl", "w") as f:  # a file like any other input: id and tokens per line
    for record in paragraphs.to_records():
        f.write(json.dumps({"id": record["id"], "tokens": record["tokens"]}) + "\n")

shards = [ml.scan_to_table(model, "paragraphs.jsonl", "scan.parquet", chunk_size=64, shard=ml.Shard(k, 2))
          for k in range(2)]
table = ml.merge_scan_tables([s.path for s in shards], "scan.parquet")
df = table.to_dataframe()
print(table.summary()["splits"])
print("memorized paragraphs:", df[df["split"] == "memorized"]["id"].tolist())
print(df.sort_values("extraction_prob", ascending=False)[["id", "em", "extraction_prob"]].head())
