"""Build the container images with podman: ``python docker/images.py build`` (``make images``).

What it builds (the tags the manifests use, so a node can import them as they are):

* ``ghcr.io/edgecloud/edge-agent:0.1.0`` from ``docker/edge-cpu.Dockerfile``; the same
  image is tagged ``cloud-gateway:0.1.0`` and ``offload-server:0.1.0-cpu`` (it holds every
  console script; the CPU offload-server is what a cluster without GPUs runs);
* ``ghcr.io/edgecloud/mosquitto:0.1.0`` from ``docker/mosquitto.Dockerfile`` (Debian's
  mosquitto with the project's configuration).

Base images: the official ones (``python:3.11-slim-bookworm``, ``debian:bookworm-slim``)
when they are present or can be pulled; otherwise a local Debian bookworm made with
``debootstrap --variant=minbase`` and slimmed like Debian's own slim images, plus a
Python layer from Debian's ``python3`` (3.11). Python packages always come from a
wheelhouse built on the host (``pip wheel``) and are installed offline in the image
(``--no-index --find-links``): builds need no registry access and no CA bundle inside
the image, and an air-gapped site can carry the wheelhouse along.

Caches (never required; delete them freely): the base images and the last build stage
stay in podman's image store (untagged images of earlier builds are pruned, by label),
the wheelhouse under ``$EDGECLOUD_CACHE`` (default ``~/.cache/edgecloud``), keyed by the
dependency list and the Python version. Not built here: ``edge-jetson`` (its L4T
base needs NVIDIA's registry and an arm64 Jetson) and ``cloud-gpu`` (NGC TensorRT base);
``lint`` checks their structure.

Podman on hosts whose default runtime (crun) cannot run containers (cgroups v1/hybrid,
no CAP_SYS_RESOURCE) needs runc and no default ulimits: :func:`podman_env` writes that
``containers.conf`` and points ``CONTAINERS_CONF`` at it unless the caller set one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
VERSION = "0.1.0"

OFFICIAL_PYTHON = "docker.io/library/python:3.11.11-slim-bookworm"
OFFICIAL_DEBIAN = "docker.io/library/debian:bookworm-slim"
DEBIAN_MIRROR = os.environ.get("EDGECLOUD_DEBIAN_MIRROR", "http://deb.debian.org/debian")


@dataclass(frozen=True)
class Image:
    name: str
    dockerfile: str
    tags: tuple[str, ...]
    base_arg: str  # the Dockerfile's build argument naming the base image
    python: bool  # installs the project from the wheelhouse
    extras: str = ""  # the distribution's extras to install (the EXTRAS build argument)


EDGE = Image(
    "edge-cpu",
    "edge-cpu.Dockerfile",
    (
        f"ghcr.io/edgecloud/edge-agent:{VERSION}",
        f"ghcr.io/edgecloud/cloud-gateway:{VERSION}",
        f"ghcr.io/edgecloud/offload-server:{VERSION}-cpu",
    ),
    "PYTHON_IMAGE",
    python=True,
)
# The same Dockerfile with the [postgres] extra: the gateway of manifests/cloud-postgres
# (psycopg's ~10 MB would not fit the edge image's 300 MB budget).
GATEWAY_POSTGRES = Image(
    "cloud-gateway-postgres",
    "edge-cpu.Dockerfile",
    (f"ghcr.io/edgecloud/cloud-gateway:{VERSION}-postgres",),
    "PYTHON_IMAGE",
    python=True,
    extras="postgres",
)
MOSQUITTO = Image(
    "mosquitto",
    "mosquitto.Dockerfile",
    (f"ghcr.io/edgecloud/mosquitto:{VERSION}",),
    "DEBIAN_IMAGE",
    python=False,
)
IMAGES = (EDGE, GATEWAY_POSTGRES, MOSQUITTO)
#: Dockerfiles kept but not buildable on a machine without NVIDIA's registry.
NOT_BUILT = {
    "edge-jetson.Dockerfile": "L4T base (nvcr.io) unreachable; needs an arm64 Jetson",
    "cloud-gpu.Dockerfile": "NGC TensorRT base (nvcr.io) unreachable; needs a GPU node",
}

# What Debian's own slim images leave out (their /etc/dpkg/dpkg.cfg.d/docker).
DPKG_SLIM = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
"""
# Like Debian's images: downloaded packages are deleted after every install.
APT_SLIM = """\
APT::Install-Recommends "false";
APT::Install-Suggests "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
"""

# The local bases are tagged with a digest of how they are made, so a change rebuilds them.
_DEBIAN_RECIPE = hashlib.sha256((DPKG_SLIM + APT_SLIM).encode()).hexdigest()[:8]
LOCAL_DEBIAN = f"localhost/edgecloud/debian:bookworm-slim-{_DEBIAN_RECIPE}"
# The runtime Python only: the Dockerfiles' build stages add python3-venv when missing.
PYTHON_BASE_CONTAINERFILE = f"""\
FROM {LOCAL_DEBIAN}
RUN apt-get update \\
    && apt-get install -y --no-install-recommends python3 ca-certificates \\
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
"""
_PYTHON_RECIPE = hashlib.sha256(PYTHON_BASE_CONTAINERFILE.encode()).hexdigest()[:8]
LOCAL_PYTHON = f"localhost/edgecloud/python:3.11-bookworm-{_PYTHON_RECIPE}"


class BuildError(RuntimeError):
    """A build step failed; the message says which and why."""


def cache_dir() -> Path:
    return Path(os.environ.get("EDGECLOUD_CACHE", Path.home() / ".cache" / "edgecloud"))


def podman_env() -> dict[str, str]:
    """The environment for every podman call (see the module doc for why)."""
    env = dict(os.environ)
    if "CONTAINERS_CONF" not in env:
        conf = cache_dir() / "containers.conf"
        conf.parent.mkdir(parents=True, exist_ok=True)
        runtime = 'runtime = "runc"\n' if shutil.which("runc") else ""
        text = f"[containers]\ndefault_ulimits = []\n\n[engine]\n{runtime}"
        if not conf.is_file() or conf.read_text() != text:
            conf.write_text(text)
        env["CONTAINERS_CONF"] = str(conf)
    return env


def podman(
    *args: str, check: bool = True, quiet: bool | str = False
) -> subprocess.CompletedProcess:
    if shutil.which("podman") is None:
        raise BuildError("podman not found: apt-get install podman runc (see .ci/run)")
    proc = subprocess.run(
        ["podman", *args],
        env=podman_env(),
        text=True,
        stdout=subprocess.PIPE if quiet else None,
        stderr=subprocess.STDOUT if quiet == "merged" else subprocess.PIPE if quiet else None,
        check=False,
    )
    if check and proc.returncode != 0:
        tail = "\n".join(f"  {line}" for line in (proc.stdout or "").splitlines()[-25:])
        err = (proc.stderr or "").strip()
        raise BuildError(f"podman {' '.join(args[:2])} failed: {err}\n{tail}".rstrip())
    return proc


def image_exists(ref: str) -> bool:
    return podman("image", "exists", ref, check=False, quiet=True).returncode == 0


def try_pull(ref: str) -> bool:
    if image_exists(ref):
        return True
    return podman("pull", "-q", ref, check=False, quiet=True).returncode == 0


def build_local_debian() -> None:
    """debootstrap minbase, slimmed like debian:bookworm-slim, imported into podman."""
    if shutil.which("debootstrap") is None:
        raise BuildError("debootstrap not found (apt-get install debootstrap); it makes "
                         "the local base image when the official one cannot be pulled")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="edgecloud-rootfs-") as tmp:
        root = Path(tmp) / "rootfs"
        print(f"debootstrap --variant=minbase bookworm ({DEBIAN_MIRROR})", flush=True)
        proc = subprocess.run(
            ["debootstrap", "--variant=minbase", "bookworm", str(root), DEBIAN_MIRROR],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise BuildError(f"debootstrap failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        (root / "etc/dpkg/dpkg.cfg.d/slim").write_text(DPKG_SLIM)
        (root / "etc/apt/apt.conf.d/slim").write_text(APT_SLIM)
        for pattern in ("usr/share/doc/*/*", "usr/share/man/*", "usr/share/info/*",
                        "usr/share/locale/*", "var/lib/apt/lists/*", "var/cache/apt/*",
                        "var/cache/debconf/*-old", "var/log/*"):  # fmt: skip
            for path in root.glob(pattern):
                if path.name in ("locale.alias", "copyright", "partial"):
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        imp = subprocess.run(
            ["podman", "import", "-q", "-", LOCAL_DEBIAN],
            stdin=tar.stdout,
            env=podman_env(),
            capture_output=True,
            text=True,
            check=False,
        )
        tar.wait()
        if imp.returncode != 0 or tar.returncode != 0:
            raise BuildError(f"podman import failed: {imp.stderr.strip()}")


def base_images(base: str) -> dict[str, str]:
    """Build argument -> base image, the official ones when usable (``base``: auto,
    official, local)."""
    if base in ("auto", "official") and try_pull(OFFICIAL_PYTHON) and try_pull(OFFICIAL_DEBIAN):
        return {"PYTHON_IMAGE": OFFICIAL_PYTHON, "DEBIAN_IMAGE": OFFICIAL_DEBIAN}
    if base == "official":
        raise BuildError(f"cannot pull {OFFICIAL_PYTHON} / {OFFICIAL_DEBIAN}")
    if not image_exists(LOCAL_DEBIAN):
        build_local_debian()
    if not image_exists(LOCAL_PYTHON):
        with tempfile.TemporaryDirectory(prefix="edgecloud-pybase-") as tmp:
            (Path(tmp) / "Containerfile").write_text(PYTHON_BASE_CONTAINERFILE)
            podman("build", "-q", "-t", LOCAL_PYTHON, tmp)
    return {"PYTHON_IMAGE": LOCAL_PYTHON, "DEBIAN_IMAGE": LOCAL_DEBIAN}


def wheelhouse() -> Path:
    """Wheels of the project's dependencies and build requirements for this Python,
    cached under a key of both (pip resolves them once per key)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    reqs = [
        *project["project"]["dependencies"],
        *(req for image in IMAGES if image.extras for req in extras[image.extras]),
        *project["build-system"]["requires"],
    ]
    py = f"cp{sys.version_info.major}{sys.version_info.minor}"
    key = hashlib.sha256("\n".join([py, *reqs]).encode()).hexdigest()[:16]
    out = cache_dir() / f"wheelhouse-{py}-{key}"
    if (out / ".complete").is_file():
        return out
    if sys.version_info[:2] != (3, 11):
        raise BuildError(f"the wheelhouse needs the images' Python 3.11 on the host, not "
                         f"{sys.version.split()[0]}")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    print(f"pip wheel -> {out}", flush=True)
    cmd = [sys.executable, "-m", "pip", "wheel", "-qq", "--disable-pip-version-check",
           "--wheel-dir", str(out), *reqs]  # fmt: skip
    if subprocess.run(cmd, check=False).returncode != 0:
        raise BuildError("pip wheel failed (needs PyPI or a pip index reachable from the host)")
    (out / ".complete").write_text("\n".join(reqs) + "\n")
    return out


def build(image: Image, args: dict[str, str], wheels: Path | None) -> float:
    cmd = ["build", "-f", str(DOCKER / image.dockerfile), "--layers"]
    cmd += ["--build-arg", f"{image.base_arg}={args[image.base_arg]}"]
    if image.python and wheels is not None:
        cmd += ["--build-arg", "WHEELHOUSE=/wheels", "-v", f"{wheels}:/wheels:ro"]
    if image.extras:
        cmd += ["--build-arg", f"EXTRAS={image.extras}"]
    for tag in image.tags:
        cmd += ["-t", tag]
    start = time.monotonic()
    print(f"building {image.name}: {', '.join(image.tags)}", flush=True)
    if image.python:
        # The build stage, tagged: its layers stay cached for the next run, and the
        # stages of earlier runs become dangling, so pruning them keeps the disk bounded.
        stage = f"localhost/edgecloud/build-stage:{image.name}"
        podman(*cmd[:-2 * len(image.tags)], "--target", "build", "-t", stage, str(REPO),
               quiet="merged")  # fmt: skip
    podman(*cmd, str(REPO), quiet="merged")
    return time.monotonic() - start


def image_size(ref: str) -> int:
    out = podman("image", "inspect", "--format", "{{.Size}}", ref, quiet=True).stdout
    return int(out.strip())


def dockerfile_problems(path: Path) -> list[str]:
    """Structure a build would trip over: COPY sources missing from the context, a
    final stage without a numeric non-root USER."""
    text = re.sub(r"\\\n", " ", path.read_text())
    steps = [line.strip().split(None, 1) for line in text.splitlines()]
    steps = [(s[0].upper(), s[1] if len(s) > 1 else "") for s in steps if s and s[0][0] != "#"]
    out = []
    for word, rest in steps:
        if word == "COPY" and "--from" not in rest:
            for src in rest.split()[:-1]:
                if not src.startswith("--") and not (REPO / src).exists():
                    out.append(f"{path.name}: COPY source {src} does not exist")
    last = max(i for i, (w, _) in enumerate(steps) if w == "FROM")
    users = [rest for word, rest in steps[last:] if word == "USER"]
    uid = users[-1].split(":")[0] if users else ""
    if not uid.isdigit() or int(uid) == 0:
        out.append(f"{path.name}: final stage must run as a numeric non-root USER")
    return out


def lint() -> list[str]:
    return [p for f in sorted(DOCKER.glob("*.Dockerfile")) for p in dockerfile_problems(f)]


def build_all(base: str = "auto") -> list[dict[str, object]]:
    problems = lint()
    if problems:
        raise BuildError("; ".join(problems))
    start = time.monotonic()
    args = base_images(base)
    base_s = time.monotonic() - start
    start = time.monotonic()
    wheels = wheelhouse()
    wheel_s = time.monotonic() - start
    rows: list[dict[str, object]] = []
    for image in IMAGES:
        seconds = build(image, args, wheels)
        rows.append({
            "image": image.name,
            "tags": list(image.tags),
            "base": args[image.base_arg],
            "size_mb": round(image_size(image.tags[0]) / 1e6, 1),
            "build_s": round(seconds, 1),
        })  # fmt: skip
    # Earlier builds' images are untagged now: remove them (ours only, by label).
    podman("image", "prune", "-f", "--filter", "label=org.edgecloud.project=edgecloud", quiet=True)
    for name in (args["PYTHON_IMAGE"], args["DEBIAN_IMAGE"]):
        rows.append({"image": f"base {name}", "tags": [name], "base": "",
                     "size_mb": round(image_size(name) / 1e6, 1), "build_s": None})  # fmt: skip
    rows.append({"image": "(base images ready)", "build_s": round(base_s, 1)})
    rows.append({"image": "(wheelhouse ready)", "build_s": round(wheel_s, 1)})
    return rows


def print_table(rows: list[dict[str, object]]) -> None:
    print(f"{'image':<48} {'size MB':>8} {'build s':>8}")
    for r in rows:
        size = "" if r.get("size_mb") is None else f"{r['size_mb']:.1f}"
        secs = "" if r.get("build_s") is None else f"{r['build_s']:.1f}"
        name = str(r["image"]) if "tags" not in r else f"{r['image']} ({r['tags'][0]})"
        print(f"{name:<48} {size:>8} {secs:>8}")
    for name, why in NOT_BUILT.items():
        print(f"{name:<48} not built: {why}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python docker/images.py", description=(__doc__ or "").split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build every image this machine can build")
    b.add_argument(
        "--base",
        choices=("auto", "official", "local"),
        default="auto",
        help="official bases (pulled), local debootstrap ones, or official if pullable",
    )
    b.add_argument("--json", type=Path, help="also write the measurements here")
    sub.add_parser("lint", help="static checks of every Dockerfile (also the unbuildable ones)")
    args = parser.parse_args(argv)
    try:
        if args.command == "lint":
            problems = lint()
            print("\n".join(problems) or f"{len(list(DOCKER.glob('*.Dockerfile')))} Dockerfiles ok")
            return 1 if problems else 0
        rows = build_all(args.base)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print_table(rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"images": rows, "not_built": NOT_BUILT}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
