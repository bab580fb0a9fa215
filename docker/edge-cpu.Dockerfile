# syntax=docker/dockerfile:1.7
# Edge agent for CPU nodes (ONNX Runtime), amd64 or arm64. The same image also serves
# the cloud-gateway and the CPU offload-server (it holds every console script of the
# distribution, without the [sim] extra: no matplotlib, no amqtt).
#
# Build from the repository root (docs/deploy.md). With podman and no registry access,
# `make images` (docker/images.py) does it from a local base and a host wheelhouse.
#   docker buildx build --platform linux/amd64,linux/arm64 -f docker/edge-cpu.Dockerfile \
#     -t ghcr.io/edgecloud/edge-agent:0.1.0 -t ghcr.io/edgecloud/cloud-gateway:0.1.0 \
#     -t ghcr.io/edgecloud/offload-server:0.1.0-cpu --push .
# The gateway for several replicas on PostgreSQL (manifests/cloud-postgres) adds the
# [postgres] extra (psycopg 3 with its libpq, ~10 MB; outside the edge image's budget):
#   docker buildx build --platform linux/amd64,linux/arm64 -f docker/edge-cpu.Dockerfile \
#     --build-arg EXTRAS=postgres -t ghcr.io/edgecloud/cloud-gateway:0.1.0-postgres --push .

ARG PYTHON_IMAGE=docker.io/library/python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# docker/images.py keeps the latest build stage tagged (its layer cache) and prunes the
# untagged images of earlier builds by this label.
LABEL org.edgecloud.project=edgecloud
# Optional: a directory of wheels mounted into the build (docker/images.py passes the host's
# wheelhouse with `podman build -v`); pip then installs offline from it, no index needed.
ARG WHEELHOUSE=
# Optional extras of the distribution to install, e.g. "postgres".
ARG EXTRAS=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# A runtime-only Python base (docker/images.py makes one) lacks venv: add it here.
RUN (python3 -m ensurepip --version >/dev/null 2>&1 || (apt-get update \
        && apt-get install -y --no-install-recommends python3-venv)) \
    && python3 -m venv /opt/edgecloud
WORKDIR /src
# Dependencies first, from pyproject.toml alone (a cached layer while it is unchanged),
# against empty packages; then the sources, installed without dependencies.
COPY pyproject.toml README.md ./
RUN for p in bus shell models offload edge_agent cloud_gateway simulators; do \
        mkdir -p "$p" && touch "$p/__init__.py"; done \
    && /opt/edgecloud/bin/pip install ${WHEELHOUSE:+--no-index --find-links "$WHEELHOUSE"} \
        ".${EXTRAS:+[$EXTRAS]}" \
    && /opt/edgecloud/bin/pip uninstall -y edgecloud
COPY models ./models
COPY bus ./bus
COPY shell ./shell
COPY offload ./offload
COPY edge_agent ./edge_agent
COPY cloud_gateway ./cloud_gateway
COPY simulators ./simulators
RUN /opt/edgecloud/bin/pip install --no-deps ${WHEELHOUSE:+--no-index --find-links "$WHEELHOUSE"} . \
    && /opt/edgecloud/bin/pip check \
    && /opt/edgecloud/bin/python -c "import edge_agent.app.cli, cloud_gateway.cli, offload.cli"
# Slim the venv (the edge image budget is 300 MB), keeping only what runs:
# - no pip/setuptools, no test suites or conformance data of the dependencies, no type
#   stubs, C headers or sources;
# - none of their build/optimisation tools (ONNX Runtime's transformers, quantization and
#   tools; numpy's f2py and distutils): the agent, gateway and server import none of them;
# - debug sections stripped from extension modules (ml_dtypes and rapidjson ship ~30 MB),
#   but not from the vendored *.libs, which patchelf rewrote and strip would break;
# - ONNX Runtime's C-API library: its Python binding links the runtime statically and
#   does not load it (ldd shows so);
# - bytecode only for what our processes import (every module of our packages, and with
#   them the dependencies' modules they pull in): the rest compiles in memory if ever used.
# The last lines prove the result still imports and builds and runs a model.
ARG IMPORT_ALL="import importlib, pkgutil; [importlib.import_module(m.name) for p in \
('bus', 'shell', 'edge_agent', 'offload', 'cloud_gateway', 'models') for m in \
pkgutil.walk_packages(importlib.import_module(p).__path__, p + '.') \
if not m.name.endswith('__main__')]"
RUN apt-get update \
    && apt-get install -y --no-install-recommends binutils \
    && /opt/edgecloud/bin/pip uninstall -y -q pip setuptools \
    && cd /opt/edgecloud/lib/python3.11/site-packages \
    && find . -depth -type d -name tests -exec rm -rf {} + \
    && rm -rf onnx/backend/test onnxruntime/transformers onnxruntime/quantization \
       onnxruntime/tools numpy/f2py numpy/distutils \
    && find . -type f \( -name "*.pyi" -o -name "*.h" -o -name "*.c" -o -name "*.cpp" \
       -o -name "*.pxd" -o -name "*.pyx" \) -delete \
    && find . -name "*.so" -type f -not -path "*.libs/*" -exec strip --strip-debug {} + \
    && rm -f onnxruntime/capi/libonnxruntime.so.* \
    && find . -name __pycache__ -type d -prune -exec rm -rf {} + \
    && /opt/edgecloud/bin/python -c "$IMPORT_ALL" \
    && /opt/edgecloud/bin/python -c "import edge_agent.app.cli, cloud_gateway.cli, offload.cli" \
    && /opt/edgecloud/bin/python -m models build --out /tmp/smoke --model motion-edge \
    && rm -rf /tmp/smoke

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.edgecloud.project=edgecloud
# Fixed uid/gid: the manifests' runAsUser and the node's hostPath ownership use 10001.
RUN groupadd --system --gid 10001 edgecloud \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/edgecloud \
       --shell /usr/sbin/nologin edgecloud \
    && install -d -o 10001 -g 10001 /var/lib/edgecloud
COPY --from=build /opt/edgecloud /opt/edgecloud
# The root filesystem is read-only in Kubernetes: no .pyc writes (pip compiled them).
ENV PATH=/opt/edgecloud/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /var/lib/edgecloud
EXPOSE 8080
CMD ["edge-agent"]
