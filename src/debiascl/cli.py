"""Command-line interface: ``debiascl train | eval | demo | report | explore | configs``.

User errors (bad config, missing data, unreadable files) print one line and exit non-zero;
``--debug`` shows the full traceback.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from debiascl import __version__
from debiascl.errors import DebiasclError


def _cmd_train(args: argparse.Namespace) -> int:
    from debiascl.config import load_config
    from debiascl.train.trainer import Trainer

    overrides = list(args.overrides)
    if args.resume:
        overrides.append(f"checkpoint.resume={args.resume}")
    cfg = load_config(args.config, overrides)
    from debiascl.compose.run_eval import ensure_writable_dir

    run_dir = Path(args.run_dir) if args.run_dir else Path(cfg.output_dir) / cfg.name
    ensure_writable_dir(run_dir, "choose a writable --run-dir (or output_dir)")  # before any work
    trainer = Trainer(cfg, run_dir=run_dir)
    summary = trainer.fit(evaluate=not args.no_eval)
    if trainer.is_main:
        from debiascl.eval.summary import format_summary

        if not args.no_eval and not trainer.nothing_to_train:
            print(format_summary(summary))
        print(f"run directory: {trainer.run_dir}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from debiascl.compose.run_eval import evaluate_run_dir
    from debiascl.eval.summary import format_summary

    def show(results: dict) -> None:  # printed before saving: a failed save loses nothing
        print(format_summary(results))
        if args.json:
            print(json.dumps(results, indent=2, default=str))
        sys.stdout.flush()

    output = Path(args.output) if args.output else Path(args.run_dir) / "eval.json"
    evaluate_run_dir(
        Path(args.run_dir), args.checkpoint, list(args.overrides), output=output, show=show
    )
    print(f"results saved to {output}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from debiascl.demo import run_demo

    run_demo(Path(args.output_dir), quick=args.quick, methods=args.methods)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from debiascl.report import aggregate_runs, markdown_table

    if args.output and Path(args.output).suffix.lower() in (".html", ".htm"):
        from debiascl.report.html import write_report

        out = write_report([Path(p) for p in args.run_dirs], Path(args.output), args.projection)
        print(f"report: {out}")
        return 0
    groups = aggregate_runs([Path(p) for p in args.run_dirs])
    print(markdown_table(groups))
    if args.json:
        from debiascl.train.atomic import atomic_write_text

        atomic_write_text(Path(args.json), json.dumps(groups, indent=2) + "\n")
    if args.output:
        from debiascl.train.atomic import atomic_write_text

        atomic_write_text(Path(args.output), markdown_table(groups) + "\n")
    return 0


def _cmd_explore(args: argparse.Namespace) -> int:
    from debiascl.report.explorer import write_explorer

    html, csv_path = write_explorer(
        Path(args.run_dir), Path(args.output) if args.output else None, args.limit
    )
    print(f"explorer: {html}\nexport: {csv_path}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from debiascl.train.export_run import export_run

    out = export_run(Path(args.run_dir), args.to, Path(args.output), args.checkpoint)
    print(f"exported ({args.to}): {out}")
    return 0


def _cmd_configs(args: argparse.Namespace) -> int:
    from debiascl.config.loader import BUILTIN_DIR

    for path in sorted(BUILTIN_DIR.glob("*.yaml")):
        first = path.read_text().splitlines()[0] if path.read_text() else ""
        print(f"{path.stem:28s} {first.lstrip('# ')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="debiascl",
        description="Debiased contrastive learning: false negatives (GloFND, DCL/HCL/SSD) and "
        "fairness (AdFair-CLIP) for SimCLR- and CLIP-style training.",
    )
    parser.add_argument("--version", action="version", version=f"debiascl {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser(
        "train",
        help="train a model from a YAML config",
        description="Train from a YAML config (a path or a built-in name, see `debiascl "
        "configs`), with dotted overrides such as train.epochs=5 loss.temperature=0.5.",
    )
    train.add_argument("config", help="YAML file or built-in config name")
    train.add_argument(
        "overrides",
        nargs="*",
        help="section.key=value overrides; a method's own settings sit under its name "
        "(negatives.glofnd.lr=0.02, loss.sogclr.gamma=0.8; negatives.glofnd=null drops a block)",
    )
    train.add_argument("--run-dir", help="run directory (default: output_dir/name)")
    train.add_argument("--resume", help="'latest', 'best' or a checkpoint path")
    train.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    train.set_defaults(func=_cmd_train)

    ev = sub.add_parser(
        "eval",
        help="re-evaluate a trained run",
        description="Evaluate the newest (or a given) checkpoint of a run directory.",
    )
    ev.add_argument("run_dir", help="run directory written by `debiascl train`")
    ev.add_argument(
        "overrides",
        nargs="*",
        help="section.key=value overrides: eval.* and the evaluation data (data.test_manifest, "
        "data.manifest, data.label_column, data.test_size, ...) and train.device/train.threads; "
        "anything else (data settings the model was trained on, train.*, loss.*) is refused",
    )
    ev.add_argument("--checkpoint", help="checkpoint path (default: newest in the run)")
    ev.add_argument("--json", action="store_true", help="also print the results as JSON")
    ev.add_argument(
        "--output",
        help="results file (default RUN_DIR/eval.json); use it to evaluate a read-only run",
    )
    ev.set_defaults(func=_cmd_eval)

    demo = sub.add_parser(
        "demo",
        help="the main job: train on built-in Fashion-MNIST and print a results table",
        description="Train SimCLR on Fashion-MNIST (CPU-sized) with and without false-negative "
        "handling and print linear-probe and kNN accuracy next to random-init and raw-pixel "
        "references computed in the same run.",
    )
    demo.add_argument("--output-dir", default="runs/demo")
    demo.add_argument(
        "--quick",
        action="store_true",
        help="a smoke version (16 steps per method; about a minute once set up)",
    )
    demo.add_argument(
        "--methods", nargs="*", default=None, help="subset of methods to run (default: all)"
    )
    demo.set_defaults(func=_cmd_demo)

    report = sub.add_parser(
        "report",
        help="aggregate finished runs over seeds (mean ± std); -o x.html for the HTML report",
        description="Group run directories by setting (config minus seed and name) and print a "
        "Markdown table of mean ± std over seeds; with -o report.html write one self-contained "
        "HTML report with plots (curves, detection, thresholds, eta, fairness, embeddings).",
    )
    report.add_argument("run_dirs", nargs="+", help="run directories with summary.json")
    report.add_argument("--json", help="also write the aggregate to this JSON file")
    report.add_argument(
        "-o",
        "--output",
        help="write to this file: .html gives the self-contained HTML report with plots "
        "(needs the report extra), any other suffix the Markdown table",
    )
    report.add_argument(
        "--projection",
        choices=("pca", "tsne"),
        default="pca",
        help="2-D projection of the embedding view (HTML report)",
    )
    report.set_defaults(func=_cmd_report)

    explore = sub.add_parser(
        "explore",
        help="browse the pairs a false-negative detector removed (HTML + CSV)",
        description="Write RUN_DIR/explorer.html: the sampled removed pairs side by side "
        "(thumbnails, captions/reports), most similar first, and explorer.csv with sample ids.",
    )
    explore.add_argument("run_dir", help="run directory with removed_pairs.csv")
    explore.add_argument("-o", "--output", help="HTML path (default: RUN_DIR/explorer.html)")
    explore.add_argument("--limit", type=int, default=None, help="show only the N most similar")
    explore.set_defaults(func=_cmd_explore)

    export = sub.add_parser(
        "export",
        help="export a trained tower for timm, open_clip or Hugging Face transformers",
        description="Write the trained image backbone (timm), text tower (hf) or whole CLIP model "
        "(open_clip) of a run as safetensors + the config files its library loads natively.",
    )
    export.add_argument("run_dir", help="run directory written by `debiascl train`")
    export.add_argument("--to", required=True, choices=["timm", "open_clip", "hf"])
    export.add_argument("-o", "--output", required=True, help="output folder")
    export.add_argument("--checkpoint", help="checkpoint path (default: newest in the run)")
    export.set_defaults(func=_cmd_export)

    cfgs = sub.add_parser("configs", help="list the built-in configs")
    cfgs.set_defaults(func=_cmd_configs)
    return parser


def _one_line(err: DebiasclError) -> str:
    """The error's own message; one raised in a DataLoader worker arrives wrapped in the worker's
    traceback ("Caught DataError in DataLoader worker process 0. Original Traceback ..."), whose
    last line is the original message."""
    text = str(err)
    if "\nOriginal Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        text = re.sub(r"^[\w.]+: ", "", last, count=1)
    return text


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one ``debiascl: warning: ...`` line (no source line), each text once."""
    text = str(message)
    if text in _SHOWN_WARNINGS:
        return
    _SHOWN_WARNINGS.add(text)
    print(f"debiascl: warning: {text}", file=sys.stderr if file is None else file)


_SHOWN_WARNINGS: set[str] = set()


def main(argv: Sequence[str] | None = None) -> int:
    # No process-wide HF_HUB_OFFLINE: local folders load with local_files_only, a hub id tries the
    # cache, then the hub, then fails in one line (debiascl.models.hf_text.load_hf_text).
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if "--debug" in extra:  # `debiascl eval RUN --debug` means the same as `debiascl --debug ...`
        extra = [e for e in extra if e != "--debug"]
        args.debug = True
    # Overrides may come after options (`train cfg --run-dir d a.b=1`); argparse leaves those over.
    stray = [e for e in extra if e.startswith("-") or "=" not in e]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    shown = warnings.showwarning
    _SHOWN_WARNINGS.clear()  # each text once per command, not once per process
    if not args.debug:
        warnings.showwarning = _warning_line
    try:
        return int(args.func(args) or 0)
    except DebiasclError as err:
        if args.debug:
            raise
        print(f"debiascl: error: {_one_line(err)}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("debiascl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
