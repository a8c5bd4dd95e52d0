"""The ``memlens`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from memlens.core.defaults import PRECISIONS, STRATEGIES, WEIGHTS_FORMS
from memlens.core.errors import InputError, MemlensError
from memlens.core.defaults import DEFAULT_CONTINUATION_LEN, DEFAULT_PREFIX_LEN
from memlens.run.presets import PRESETS
from memlens.run import stages as _builtin_stages  # noqa: F401  (registers the built-in rows of the Stage table)
from memlens.run.stage import stage_names, stages
from memlens.scale.stream import DEFAULT_CHUNK_SIZE

# Flags for the most used settings: flag -> (dotted RunConfig key, type, help).
SETTING_FLAGS: dict[str, tuple[str, type, str]] = {
    "--batch-size": ("scan.batch_size", int, "paragraphs per forward pass of the scan"),
    "--non-memorized-max-em": ("scan.non_memorized_max_em", int, "EM at or below which a paragraph is non-memorized"),
    "--max-paragraphs": ("", int, "memorized / non-memorized paragraphs each analysis stage uses (at most)"),
    "--n-samples": ("perturb.n_samples", int, "replacements per prefix position"),
    "--strategy": ("perturb.strategy", str, f"replacement strategy: {' | '.join(STRATEGIES)}"),
    "--n-targets": ("unlearn.n_targets", int, "memorized paragraphs unlearned"),
    "--fraction": ("unlearn.fraction", float, "share of weights in a sparse mask"),
    "--steps": ("unlearn.steps", int, "Adam steps of unlearning"),
    "--lr": ("unlearn.lr", float, "learning rate of unlearning"),
}
_MAX_PARAGRAPHS_KEYS = ("gradients.max_paragraphs", "perturb.max_paragraphs", "heads.max_paragraphs")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="organism | organism-tiny | hub name (e.g. EleutherAI/gpt-neo-125M) | local folder | file.gguf "
                        "(default: organism)")
    p.add_argument("--seed", type=int, default=None, help="organism seed and seed of random choices (default 0)")
    p.add_argument("--cache-dir", default=None, help="organism cache folder (default $MEMLENS_CACHE or ~/.cache/memlens)")
    p.add_argument("--device", default=None, help="where the model runs: cpu (default), cuda, cuda:1, ...")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="model precision (default float32; bfloat16/float16 on a GPU)")
    p.add_argument("--precision", default=None, choices=list(PRECISIONS),
                   help="how forward and backward passes compute: fp32 (default, exact) or bf16-mixed (bfloat16 "
                        "matmuls on float32 weights, ~4x faster on a CPU with avx512_bf16 or on a GPU; "
                        "docs/precision.md)")
    p.add_argument("--weights", default=None, choices=list(WEIGHTS_FORMS),
                   help="raw HuggingFace weights (default) or processed as TransformerLens loads them (LayerNorm "
                        "folded, writing weights centred: the paper's code)")


def _add_run_args(p: argparse.ArgumentParser, out_default: str | None = "memlens-run") -> None:
    _add_model_args(p)
    p.add_argument("--paragraphs", default=None, help="JSONL/CSV paragraph file (default: the model's ground-truth set)")
    p.add_argument("--skip-short", action="store_const", const=True, default=None,
                   help="leave out paragraphs shorter than prefix + continuation (counted) instead of refusing the file")
    p.add_argument("--config", default=None, metavar="FILE.toml",
                   help="settings file (see `memlens config`); flags override it")
    p.add_argument("--preset", default=None, choices=list(PRESETS),
                   help="start from a preset instead of the defaults: `paper` = the paper's and its official "
                        "code's settings (docs/paper-fidelity.md); flags override it")
    group = p.add_argument_group("settings (override --config)")
    for flag, (key, typ, text) in SETTING_FLAGS.items():
        group.add_argument(flag, type=typ, default=None, help=f"{text} (default: {_default(key)})")
    if out_default is None:
        p.add_argument("--out", default=None, help="with FILE: results file (default <FILE>.scan.safetensors); "
                                                   "without: run folder (default memlens-run)")
    else:
        p.add_argument("--out", default=out_default, help=f"run folder (default: {out_default})")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _default(key: str) -> Any:
    """The default of a dotted setting (the settings classes are the one source of defaults)."""
    from memlens.run.config import RunConfig

    settings = RunConfig().to_dict()
    if not key:  # --max-paragraphs sets one setting per analysis stage
        return ", ".join(f"{k.split('.')[0]} {settings[k.split('.')[0]]['max_paragraphs']}" for k in _MAX_PARAGRAPHS_KEYS)
    value: Any = settings
    for part in key.split("."):
        value = value[part]
    return value


def run_config(args: argparse.Namespace, base: Any = None) -> Any:
    """The RunConfig of a command: ``base`` (or ``--config FILE``, or defaults), then the flags
    that were given."""
    from memlens.run.config import RunConfig

    if getattr(args, "config", None) and getattr(args, "preset", None):
        raise InputError("--config and --preset both give the starting settings; use one (a settings file can "
                         "start from `memlens config --preset paper`)")
    if getattr(args, "config", None):
        base = RunConfig.from_toml(args.config)
    if getattr(args, "preset", None):
        base = RunConfig.from_preset(args.preset, getattr(args, "model", None) or "organism")
    base = base or RunConfig.recommended(getattr(args, "model", None) or "organism")
    values: dict[str, Any] = {"model": getattr(args, "model", None), "seed": getattr(args, "seed", None),
                              "paragraphs": getattr(args, "paragraphs", None),
                              "skip_short": getattr(args, "skip_short", None),
                              "device": getattr(args, "device", None), "dtype": getattr(args, "dtype", None),
                              "precision": getattr(args, "precision", None),
                              "weights": getattr(args, "weights", None)}
    for flag, (key, _, _) in SETTING_FLAGS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        for k in (_MAX_PARAGRAPHS_KEYS if flag == "--max-paragraphs" else (key,)):
            values[k] = value
    return base.override(values)


def cmd_scan(args: argparse.Namespace) -> int:
    from memlens.core.data import ParagraphSet
    from memlens.core.io import check_output_file, write_json_atomic
    from memlens.loading import load_model
    from memlens.analyses.scan import scan

    if args.file == "merge":
        return cmd_scan_merge(args)
    if args.more:
        raise MemlensError(f"scan takes one paragraph file, got {[args.file, *args.more]}; to join shard tables: "
                           "memlens scan merge SHARD... --out TABLE")
    if args.file is None:
        return cmd_stage(args)
    cfg = run_config(args)
    path = Path(args.file)
    if not path.is_file():
        raise MemlensError(f"{path}: no such paragraph file")
    if _streams(args, path):
        return cmd_scan_table(args, cfg, path)
    out = Path(args.out) if args.out else path.with_name(path.stem + ".scan.safetensors")
    if out.resolve() == path.resolve():
        raise MemlensError(f"--out {out} is the paragraph file itself; choose another output file")
    check_output_file(out, "--out")  # before the model loads: a bad path costs nothing
    model = load_model(cfg.model, seed=cfg.seed, cache_dir=args.cache_dir, progress=not args.quiet,
                       device=cfg.device, dtype=cfg.dtype, precision=cfg.stage_precision("scan"))
    paras = ParagraphSet.from_file(path, model, args.prefix_len, args.continuation_len, skip_short=cfg.skip_short)
    if paras.skipped:
        print(f"memlens: skipped {len(paras.skipped)} paragraph(s) shorter than "
              f"{args.prefix_len + args.continuation_len} tokens", file=sys.stderr)
    result = scan(model, paras, **cfg.scan.scan_kwargs(), out=out, progress=not args.quiet)
    summary = result.summary() | ({"skipped_short": len(paras.skipped)} if paras.skipped else {})
    write_json_atomic(out.with_name(out.name.removesuffix(".safetensors") + ".summary.json"), summary)
    print(json.dumps(summary, indent=2))
    print(f"results: {out}", file=sys.stderr)
    return 0


def _streams(args: argparse.Namespace, path: Path) -> bool:
    """Whether a scan streams to a table: a Parquet input, a table output or a shard."""
    from memlens.scale.scan_table import TABLE_SUFFIXES

    out = Path(args.out) if args.out else None
    return (path.suffix.lower() == ".parquet" or args.shard is not None or args.engine == "ray"
            or (out is not None and out.suffix.lower() in TABLE_SUFFIXES))


def cmd_scan_table(args: argparse.Namespace, cfg: Any, path: Path) -> int:
    """A streaming scan (any size, memory flat) into a Parquet or JSONL table: one --shard of it,
    or all of it on Ray Data with --engine ray."""
    from memlens.loading import load_model
    from memlens.scale.stream import Shard, scan_to_table, table_target

    shard = Shard.parse(args.shard) if args.shard else Shard()
    out = Path(args.out) if args.out else path.with_name(path.stem + ".scan.parquet")
    table_target(path, out, shard)  # before the model loads: a bad path costs nothing
    if args.engine == "ray":
        from memlens.scale.ray_scan import scan_with_ray

        if shard.world > 1:
            raise MemlensError("--engine ray spreads the work itself; drop --shard")
        return _print_table(scan_with_ray(
            cfg.model, path, out, workers=args.workers, num_gpus=args.num_gpus, ray_address=args.ray_address,
            seed=cfg.seed, cache_dir=args.cache_dir, device=cfg.device, dtype=cfg.dtype, prefix_len=args.prefix_len,
            continuation_len=args.continuation_len, precision=cfg.stage_precision("scan"), **cfg.scan.scan_kwargs()))
    device = cfg.device
    if device == "cuda" and shard.world > 1 and "LOCAL_RANK" in os.environ:
        device = f"cuda:{os.environ['LOCAL_RANK']}"  # one GPU per process under torchrun
    model = load_model(cfg.model, seed=cfg.seed, cache_dir=args.cache_dir, progress=not args.quiet,
                       device=device, dtype=cfg.dtype, precision=cfg.stage_precision("scan"))
    return _print_table(scan_to_table(
        model, path, out, prefix_len=args.prefix_len, continuation_len=args.continuation_len,
        chunk_size=args.chunk_size, shard=shard, skip_short=bool(cfg.skip_short), **cfg.scan.scan_kwargs(),
        progress=not args.quiet))


def cmd_scan_merge(args: argparse.Namespace) -> int:
    """Join shard tables into one: ``memlens scan merge A B ... --out TABLE``."""
    from memlens.scale.scan_table import merge_scan_tables

    if not args.out:
        raise MemlensError("memlens scan merge needs --out TABLE (.parquet or .jsonl)")
    return _print_table(merge_scan_tables(args.more, args.out))


def _print_table(table: Any) -> int:
    """A scan table's summary on stdout, its path on stderr; exit status 0."""
    print(json.dumps(table.summary(), indent=2))
    print(f"results: {table.path}", file=sys.stderr)
    return 0


def cmd_organism(args: argparse.Namespace) -> int:
    from memlens import organism

    if args.action == "build":
        t0 = time.perf_counter()
        folder = organism.build(args.size, args.seed, args.cache_dir, force=args.force, progress=not args.quiet)
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
    from memlens.run.pipeline import run_pipeline

    summary = run_pipeline(run_config(args), Path(args.out), cache_dir=args.cache_dir, progress=not args.quiet)
    print(json.dumps(summary, indent=2))
    print(f"report: {Path(args.out) / 'report.html'}", file=sys.stderr)
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    """One stage alone, into a run folder (every file computed again even if done; earlier stages it needs run
    first). A folder made by ``memlens run`` keeps its settings unless flags change them."""
    from memlens.run.pipeline import RunContext, claim_folder, hold_folder, read_run_config, run_stage, write_summary

    out = Path(args.out or "memlens-run")
    existing = read_run_config(out)
    if args.command == "report":
        # the report reads only the run folder: no model, and no paragraph file (which may have moved)
        if existing is None:
            raise MemlensError(f"{out} holds no memlens run (no run.json); run `memlens run --out {out}` first")
        ctx = RunContext(out, existing, args.cache_dir, progress=not args.quiet)
    else:
        ctx = RunContext(out, run_config(args, existing), args.cache_dir, progress=not args.quiet)
    with hold_folder(ctx):
        if args.command != "report":
            claim_folder(ctx)
        summary = run_stage(ctx, args.command, fresh=True)
        write_summary(ctx)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """Print the settings as TOML: the defaults, a --config file with flags applied, or a run
    folder's."""
    from memlens.run.pipeline import read_run_config

    cfg = read_run_config(Path(args.out)) if args.out else None
    if args.out and cfg is None:
        raise MemlensError(f"{args.out} holds no memlens run (no run.json)")
    print(run_config(args, cfg).to_toml(), end="")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """Print a result file's envelope: kind, provenance and summary."""
    from memlens.core.results import load_result, read_envelope

    doc = read_envelope(args.path)
    out = {"kind": doc["kind"], "version": doc["version"], "provenance": doc["provenance"]}
    result = load_result(args.path)
    try:
        out["summary"] = result.summary()
    except MemlensError:
        raise
    except Exception as e:  # fields that load but do not add up (a tampered file)
        raise MemlensError(f"{args.path}: a damaged {doc['kind']} (its summary fails: {type(e).__name__}: "
                           f"{str(e)[:200]}); compute it again") from None
    print(json.dumps(out, indent=2, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memlens",
        description="Localize paragraph memorization in language models (Stoehr et al., 2024).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help=f"the whole study: {', '.join(stage_names())}",
                       description="Run every stage into --out; stages already done there are skipped, so an "
                                   "interrupted run resumes (with the same settings). Writes report.html last. "
                                   "With no arguments: the organism.")
    _add_run_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("scan", help="EM and NLL of every paragraph (of FILE, or the run's paragraphs into --out)",
                       description="With FILE: scan a JSONL/CSV paragraph file into a result file. Without FILE: "
                                   "the scan stage of a run folder (--out).")
    p.add_argument("file", nargs="?", default=None,
                   help="JSONL (one {'id','text'|'tokens'} per line), CSV (text/paragraph column) or Parquet; "
                        "or `merge SHARD... --out TABLE` to join shard tables")
    p.add_argument("more", nargs="*", help=argparse.SUPPRESS)
    _add_run_args(p, out_default=None)
    p.add_argument("--prefix-len", type=int, default=DEFAULT_PREFIX_LEN)
    p.add_argument("--continuation-len", type=int, default=DEFAULT_CONTINUATION_LEN)
    stream = p.add_argument_group("streaming and sharding (an --out ending in .parquet/.jsonl, a Parquet input, "
                                  "or --shard)")
    stream.add_argument("--shard", default=None, metavar="k/N",
                        help="scan only part k of N (from 0) into OUT.shard-k-of-N.parquet; `auto`: the rank and "
                             "world size of torchrun (RANK, WORLD_SIZE) or SLURM (SLURM_PROCID, SLURM_NTASKS)")
    stream.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE,
                        help=f"input records per chunk: the unit of resumption and of sharding ({DEFAULT_CHUNK_SIZE})")
    stream.add_argument("--engine", choices=["local", "ray"], default="local",
                        help="local (this process, or one --shard of it) or ray (Ray Data, pip install 'memlens[ray]')")
    stream.add_argument("--workers", type=int, default=1, help="Ray actors, each holding the model (1)")
    stream.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per Ray actor (0; 1 on a GPU cluster)")
    stream.add_argument("--ray-address", default=None,
                        help="an existing Ray cluster (auto, ray://head:10001); default: a local one")
    p.set_defaults(func=cmd_scan)

    for row in stages():
        if row.name == "scan":  # `memlens scan` also scans a paragraph file: its parser is above
            continue
        p = sub.add_parser(row.name, help=row.help, description=f"{row.help}. Runs this stage alone into the run "
                                                                "folder --out (every file computed again, if it ran before); stages it "
                                                                "needs run first.")
        if row.name == "report":
            p.add_argument("--out", default="memlens-run", help="run folder (default: memlens-run)")
            p.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
            p.add_argument("--quiet", action="store_true", help="no progress bars")
        else:
            _add_run_args(p)
        p.set_defaults(func=cmd_stage)

    p = sub.add_parser("config", help="print the settings as TOML (defaults, --config with flags, or a run's)",
                       description="Print a settings file to start from: `memlens config > study.toml`, edit it, "
                                   "then `memlens run --config study.toml`. With --out, the settings of that run.")
    _add_run_args(p, out_default=None)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("show", help="print a result file's kind, provenance and summary")
    p.add_argument("path", help="a .safetensors result file written by memlens")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("organism", help="build or describe the embedded organism model")
    p.add_argument("action", choices=["build", "info"])
    p.add_argument("--size", default="default", choices=["default", "tiny", "smollm2", "smollm2-micro"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--force", action="store_true", help="rebuild even if a verified cache exists")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
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
    except OSError as e:  # the file system said no (disk full, permissions, ...): say so in one line
        where = f": {e.filename}" if e.filename else ""
        print(f"memlens: error: {e.strerror or e}{where}; check the path, its permissions and the free disk space",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
