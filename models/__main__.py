"""``python -m models build --out DIR`` | ``demo [--out DIR]`` | ``pack MODEL.onnx ...`` |
``install BUNDLE ...``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from models.bundle_cli import add_install_parser, add_pack_parser, run_bundle_command
from models.errors import EdgecloudError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m models", description=__doc__, allow_abbrev=False
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser(
        "build", help="build, sign and install the built-in models", allow_abbrev=False
    )
    build.add_argument("--out", type=Path, default=Path("build/models"), help="output directory")
    build.add_argument("--version", type=int, default=1, help="version number to build")
    build.add_argument("--variant", default="normal", choices=("normal", "nan", "slow"))
    build.add_argument("--seed", type=int, default=None, help="training seed (default: version)")
    build.add_argument(
        "--model", action="append", default=None, help="build only this model (repeatable)"
    )
    demo = sub.add_parser(
        "demo", help="build if missing, then run one real inference", allow_abbrev=False
    )
    demo.add_argument("--out", type=Path, default=Path("build/models"), help="build directory")
    demo.add_argument("--model", default="motion-edge")
    demo.add_argument("--index", type=int, default=25, help="BasicMotions TEST window index")
    demo.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "tensorrt"))
    add_pack_parser(sub)
    add_install_parser(sub)
    return parser


def _table(result) -> str:
    header = (
        f"{'model':<18} {'ver':>3} {'quality':>15} {'b1 p50/p99 ms':>16} {'b64 p50/p99 ms':>16}"
    )
    rows = [header, "-" * len(header)]
    for name, m in result.manifests.items():
        quality = (
            f"acc {m.metrics.accuracy:.3f}"
            if m.metrics.accuracy is not None
            else f"AUC {m.metrics.auc:.3f}"
        )
        lat = {lm.batch_size: f"{lm.p50_ms:.3f}/{lm.p99_ms:.3f}" for lm in m.metrics.latency}
        rows.append(
            f"{name:<18} {m.version:>3} {quality:>15} {lat.get(1, '-'):>16} {lat.get(64, '-'):>16}"
        )
    rows.append("")
    rows.append(f"repository  {result.repository}")
    rows.append(f"bundles     {result.out_dir / 'bundles'}")
    rows.append(f"signing key {result.key} (public: {result.public_key})")
    rows.append(f"built in {result.seconds:.1f} s")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command in ("pack", "install"):
            return run_bundle_command(args.command, args)
        if args.command == "build":
            from models.recipes import RECIPES, build_all

            names = tuple(args.model) if args.model else tuple(RECIPES)
            result = build_all(
                args.out, version=args.version, variant=args.variant, seed=args.seed, names=names
            )
            print(_table(result))
        else:
            from models.recipes import demo_inference

            logging.getLogger("models.backends").setLevel(logging.INFO)
            print(
                demo_inference(
                    args.out, model=args.model, index=args.index, kind=args.backend
                ).render()
            )
    except EdgecloudError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
