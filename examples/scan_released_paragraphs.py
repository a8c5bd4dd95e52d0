"""Scan the paper's own release (the 442 paragraphs GPT-Neo 125M recites, from the team's
shared/data) on a real pretrained model that installs from PyPI: SmolLM2-135M, without any
planting. Paragraphs whose text gives fewer than 50 + 50 SmolLM2 tokens are skipped (counted).

    MEMLENS_RELEASED_CSV=path/to/stoehr2024_gpt-neo-125M_memorized.csv python examples/scan_released_paragraphs.py
"""

import os
from pathlib import Path

import memlens as ml

default = Path(__file__).resolve().parents[2] / "shared" / "data" / "stoehr2024_gpt-neo-125M_memorized.csv"
path = Path(os.environ.get("MEMLENS_RELEASED_CSV", default))
model = ml.load_model(str(ml.smollm2_gguf_path()))          # the unplanted model (GGUF, dequantized once)
paras = ml.ParagraphSet.from_csv(path, model, skip_short=True)
result = ml.scan(model, paras, progress=False)
df = result.to_dataframe()
for column in ("count", "reference_em", "reference_nll"):  # CSV columns arrive as text
    df[column] = df[column].astype(float)
print(f"{len(paras)} of {len(paras) + len(paras.skipped)} released paragraphs scanned "
      f"({len(paras.skipped)} shorter than 100 SmolLM2 tokens)")
print("splits:", {k: result.summary()[k] for k in ("memorized", "partly", "non_memorized")})
print("EM >= 25:", int((df["em"] >= 25).sum()), "| mean EM", round(df["em"].mean(), 2),
      "| mean NLL", round(df["nll"].mean(), 3), "(GPT-Neo 125M's own NLL:", round(df["reference_nll"].mean(), 3), ")")
print("Spearman(EM, occurrences in the Pile sample):", round(ml.stats.spearman(df["count"].tolist(), df["em"].tolist()), 3))
print("most recited:\n", df.sort_values("em", ascending=False).head(5)[["paragraph", "em", "nll", "count"]])
