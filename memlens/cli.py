"""The ``memlens`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from memlens.errors import MemlensError


def load_model(spec: str, seed: int = 0, cache_dir: str | None = None):
    """The model a ``--model`` value names: the organism, a hub name, a local folder or a .gguf file."""
    from memlens.model import HookedModel

    if spec in ("organism", "organism-default", "organism-tiny"):
        size = "tiny" if spec.endswith("tiny") else "default"
        return HookedModel.organism(size=size, seed=seed, cache_dir=cache_dir)
    if spec.endswith(".gguf"):
        return HookedModel.from_gguf(spec)
    return HookedModel.from_pretrained(spec)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="organism",
                   help="organism | organism-tiny | hub name (e.g. EleutherAI/gpt-neo-125M) | local folder | file.gguf "
                        "(default: organism)")
    p.add_argument("--seed", type=int, default=0, help="organism seed (default 0)")
    p.add_argument("--cache-dir", default=None, help="organism cache folder (default $MEMLENS_CACHE or ~/.cache/memlens)")


def _add_run_args(p: argparse.ArgumentParser, out_default: str | None = "memlens-run") -> None:
    _add_model_args(p)
    p.add_argument("--paragraphs", default=None, help="JSONL/CSV paragraph file (default: the organism's ground-truth set)")
    if out_default is None:
        p.add_argument("--out", default=None, help="with FILE: results JSONL (default <FILE>.scan.jsonl); "
                                                   "without: run folder (default memlens-run)")
    else:
        p.add_argument("--out", default=out_default, help=f"run folder (default: {out_default})")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_scan(args: argparse.Namespace) -> int:
    from memlens.data import ParagraphSet
    from memlens.scan import scan

    if args.file is None:
        return cmd_stage(args)

    model = load_model(args.model, args.seed, args.cache_dir)
    path = Path(args.file)
    paras = ParagraphSet.from_file(path, model, args.prefix_len, args.continuation_len)
    out = Path(args.out) if args.out else path.with_name(path.stem + ".scan.jsonl")
    result = scan(model, paras, batch_size=args.batch_size, non_memorized_max_em=args.non_memorized_max_em, out=out)
    summary = result.summary()
    from memlens.io import write_json_atomic

    write_json_atomic(out.with_suffix(".summary.json"), summary)
    print(json.dumps(summary, indent=2))
    print(f"results: {out}", file=sys.stderr)
    return 0


def cmd_organism(args: argparse.Namespace) -> int:
    from memlens import organism

    if args.action == "build":
        t0 = time.perf_counter()
        folder = organism.build(args.size, args.seed, args.cache_dir, force=args.force)
        print(f"organism {args.size} (seed {args.seed}) at {folder} [{time.perf_counter() - t0:.1f} s]")
        return 0
    folder = organism.organism_path(args.size, args.seed, args.cache_dir)
    if not folder.exists():
        print(f"no organism {args.size} (seed {args.seed}) at {folder}; run `memlens organism build`", file=sys.stderr)
        return 1
    info = organism.OrganismInfo.load(folder / "ground_truth")
    print(json.dumps({"path": str(folder)} | info.summary(), indent=2))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from memlens.pipeline import run_pipeline

    summary = run_pipeline(args.model, Path(args.out), paragraphs=args.paragraphs, seed=args.seed,
                           cache_dir=args.cache_dir, progress=not args.quiet)
    print(json.dumps(summary, indent=2))
    print(f"report: {Path(args.out) / 'report.html'}", file=sys.stderr)
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    """One stage alone, into a run folder (run again even if done; earlier stages it needs run first)."""
    from memlens.pipeline import RunContext, claim_folder, run_stage, write_summary

    out = Path(args.out or "memlens-run")
    if args.command == "report":
        if not (out / "run.json").exists():
            raise MemlensError(f"{out} holds no memlens run (no run.json); run `memlens run --out {out}` first")
        run = json.loads((out / "run.json").read_text())
        args.model, args.seed = run["model"], run["seed"]
        args.paragraphs = (run.get("paragraphs") or {}).get("path")
    ctx = RunContext(out, args.model, args.paragraphs, args.seed, args.cache_dir, progress=not args.quiet)
    claim_folder(ctx)
    summary = run_stage(ctx, args.command)
    write_summary(ctx)
    print(json.dumps(summary, indent=2))
    return 0


STAGE_HELP = {
    "gradients": "gradient maps of memorized vs non-memorized paragraphs -> gradients_*.pt, gradient_profiles_by_em.csv",
    "perturb": "single-token prefix perturbations -> perturbation_*.jsonl, perturbed_memorized.jsonl",
    "heads": "HeadLocalizer: per-head evidence and combined rank -> heads.json, head_views.json",
    "unlearn": "sparse unlearning/editing, all vs top-k vs random weights -> unlearn.csv",
    "report": "the offline HTML report of a run folder -> report.html",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memlens",
        description="Localize paragraph memorization in language models (Stoehr et al., 2024).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="the whole study: scan, gradients, perturb, heads, unlearn, report.html",
                       description="Run every stage into --out; stages already done there are skipped, so an "
                                   "interrupted run resumes. Writes report.html last. With no arguments: the organism.")
    _add_run_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("scan", help="EM and NLL of every paragraph (of FILE, or the run's paragraphs into --out)",
                       description="With FILE: scan a JSONL/CSV paragraph file into a results JSONL. Without FILE: "
                                   "the scan stage of a run folder (--out).")
    p.add_argument("file", nargs="?", default=None,
                   help="JSONL (one {'id','text'|'tokens'} per line) or CSV (text/paragraph column)")
    _add_run_args(p, out_default=None)
    p.add_argument("--prefix-len", type=int, default=50)
    p.add_argument("--continuation-len", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--non-memorized-max-em", type=int, default=10)
    p.set_defaults(func=cmd_scan)

    for stage, text in STAGE_HELP.items():
        p = sub.add_parser(stage, help=text, description=f"{text}. Runs this stage alone into the run folder --out "
                                                          "(again, if it ran before); stages it needs run first.")
        if stage == "report":
            p.add_argument("--out", default="memlens-run", help="run folder (default: memlens-run)")
            p.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
            p.add_argument("--quiet", action="store_true", help="no progress bars")
        else:
            _add_run_args(p)
        p.set_defaults(func=cmd_stage)

    p = sub.add_parser("organism", help="build or describe the embedded organism model")
    p.add_argument("action", choices=["build", "info"])
    p.add_argument("--size", default="default", choices=["default", "tiny"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--force", action="store_true", help="rebuild even if a verified cache exists")
    p.set_defaults(func=cmd_organism)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MemlensError as e:
        print(f"memlens: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("memlens: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
