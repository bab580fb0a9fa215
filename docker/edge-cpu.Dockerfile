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

ARG PYTHON_IMAGE=docker.io/library/python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# Optional: a directory of wheels mounted into the build (docker/images.py passes the host's
# wheelhouse with `podman build -v`); pip then installs offline from it, no index needed.
ARG WHEELHOUSE=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/edgecloud
WORKDIR /src
# Dependencies first, from pyproject.toml alone (a cached layer while it is unchanged),
# against empty packages; then the sources, installed without dependencies.
COPY pyproject.toml README.md ./
RUN for p in models offload edge_agent cloud_gateway simulators; do \
        mkdir -p "$p" && touch "$p/__init__.py"; done \
    && /opt/edgecloud/bin/pip install ${WHEELHOUSE:+--no-index --find-links "$WHEELHOUSE"} . \
    && /opt/edgecloud/bin/pip uninstall -y edgecloud
COPY models ./models
COPY offload ./offload
COPY edge_agent ./edge_agent
COPY cloud_gateway ./cloud_gateway
COPY simulators ./simulators
RUN /opt/edgecloud/bin/pip install --no-deps ${WHEELHOUSE:+--no-index --find-links "$WHEELHOUSE"} . \
    && /opt/edgecloud/bin/pip check \
    && /opt/edgecloud/bin/python -c "import edge_agent.cli, cloud_gateway.cli, offload.cli"
# Slim the venv (the edge image budget is 300 MB): no pip/setuptools at run time, no test
# suites of the dependencies, debug sections stripped from the extension modules
# (ml_dtypes and rapidjson ship ~30 MB of them; not the vendored *.libs, which patchelf
# rewrote and strip would break), and ONNX Runtime's C-API library, which
# the Python binding does not load (it links the runtime statically; `ldd` shows it).
RUN apt-get update \
    && apt-get install -y --no-install-recommends binutils \
    && /opt/edgecloud/bin/pip uninstall -y -q pip setuptools \
    && cd /opt/edgecloud/lib/python3.11/site-packages \
    && find . -depth -type d -name tests -exec rm -rf {} + \
    && find . -name "*.so" -type f -not -path "*.libs/*" -exec strip --strip-debug {} + \
    && rm -f onnxruntime/capi/libonnxruntime.so.* \
    && /opt/edgecloud/bin/python -c "import numpy, onnx, onnxruntime, grpc, edge_agent.cli, offload.cli"

FROM ${PYTHON_IMAGE} AS runtime
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
