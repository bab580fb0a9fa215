"""The bundle commands a user runs: ``pack`` (own ONNX model -> signed bundle) and
``install`` (verify + install into an agent's repository, no gateway).

Shared by ``cloud-gateway models pack|install`` and ``python -m models pack|install``;
the parsers only convert arguments, the work is in :mod:`models.pack` and
:mod:`models.repository`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from models.errors import InvalidInput


def add_pack_parser(msub: Any) -> None:
    """``models pack``: every option is a model card field (``None`` = not given, so a
    ``--card`` value stands unless the flag overrides it)."""
    pack = msub.add_parser(
        "pack",
        help="pack your own ONNX model into a signed bundle",
        description="Pack MODEL.onnx into OUT/NAME-VERSION.bundle, signed with --key. Fields "
        "come from --card CARD.toml (keys are the flag names with '_') and/or the flags; flags "
        "win. The input must be one FP32 tensor [N, window, channels], [N, channels] (window "
        "1) or [N, window*channels].",
        allow_abbrev=False,
    )
    pack.add_argument("model", type=Path, metavar="MODEL.onnx", help="the ONNX model file")
    pack.add_argument("--out", type=Path, required=True, help="output directory (required)")
    pack.add_argument(
        "--key",
        type=Path,
        default=Path("keys/signing.key"),
        help="ed25519 private key; created with KEY.pub beside it when missing "
        "(default: keys/signing.key)",
    )
    pack.add_argument("--card", type=Path, help="TOML model card with the fields below")
    pack.add_argument(
        "--name", dest="card_name", metavar="NAME", help="model name [a-z0-9._-] (required)"
    )
    pack.add_argument(
        "--version",
        dest="card_version",
        metavar="V",
        type=int,
        help="version number >= 1 (required)",
    )
    pack.add_argument("--window", type=int, help="samples per window (default: from the shape)")
    pack.add_argument("--hop", type=int, help="samples between window starts (default: window)")
    pack.add_argument("--channels", help="channel names in input order, a,b,c (required)")
    pack.add_argument("--sample-rate-hz", type=float, help="readings per second (required)")
    pack.add_argument(
        "--normalize-mean",
        help="per-channel mean, m1,m2,...; the graph gets (x - mean) / std (default: none)",
    )
    pack.add_argument("--normalize-std", help="per-channel std, s1,s2,... (default: none)")
    kind = pack.add_mutually_exclusive_group()
    kind.add_argument("--labels", help="classifier: class labels in output order, x,y,z")
    kind.add_argument("--threshold", type=float, help="anomaly model: score alert threshold")
    pack.add_argument("--output", help="output holding the scores (default: the only one)")
    pack.add_argument("--slo-ms", type=float, help="latency SLO in ms (default 100)")
    pack.add_argument("--description", help="free text (default: empty)")
    pack.add_argument(
        "--sample-inputs",
        type=Path,
        help="FILE.npy of test-vector inputs (default: 8 seeded random inputs)",
    )


def add_install_parser(msub: Any) -> None:
    install = msub.add_parser(
        "install",
        help="verify and install a bundle into an agent's repository (no gateway)",
        description="Offline seeding: verify BUNDLE (signature, hashes, ONNX specs, test "
        "vectors, servable shape) and install it into the model repository an edge agent "
        "reads (--repository). The first version of a model becomes active.",
        allow_abbrev=False,
    )
    install.add_argument("bundle", type=Path, metavar="BUNDLE", help="the .bundle file")
    install.add_argument(
        "--repository",
        dest="install_repository",
        metavar="DIR",
        type=Path,
        required=True,
        help="the agent's model repository directory, as its --repository (required)",
    )
    install.add_argument(
        "--trusted-keys",
        dest="install_trusted_keys",
        metavar="KEYS",
        type=Path,
        required=True,
        help="signer public key file or directory of *.pub (required)",
    )
    install.add_argument(
        "--activate", action="store_true", help="make this version active even if not the first"
    )


_PACK_FIELDS = (
    "window",
    "hop",
    "channels",
    "sample_rate_hz",
    "normalize_mean",
    "normalize_std",
    "labels",
    "threshold",
    "output",
    "slo_ms",
    "description",
    "sample_inputs",
)


def pack_command(args: argparse.Namespace) -> int:
    from models.pack import pack_model

    overrides = {field: getattr(args, field) for field in _PACK_FIELDS}
    overrides.update(name=args.card_name, version=args.card_version)
    packed = pack_model(args.model, args.out, args.key, card=args.card, overrides=overrides)
    if packed.key_created:
        print(f"created signing key {packed.key} (public key: {packed.public_key})")
    print(packed.path)
    return 0


def install_command(args: argparse.Namespace) -> int:
    from models.repository import ModelRepository
    from models.servable import check_servable
    from models.signing import load_trusted_keys

    keys = load_trusted_keys(args.install_trusted_keys)
    if not keys:
        raise InvalidInput(f"--trusted-keys: no *.pub key in {args.install_trusted_keys}")
    repo = ModelRepository(args.install_repository, trusted_keys=keys, check=False)
    manifest = repo.install(args.bundle, check=check_servable)
    if args.activate:
        repo.activate(manifest.name, manifest.version)
    active = repo.active(manifest.name)
    print(f"installed {manifest.ref} into {repo.root} (active version: {active})")
    return 0


def run_bundle_command(command: str, args: argparse.Namespace) -> int:
    return pack_command(args) if command == "pack" else install_command(args)
