# syntax=docker/dockerfile:1.7
# Edge agent for CPU nodes (ONNX Runtime), amd64 or arm64. The same image also serves
# the cloud-gateway (it holds every console script of the distribution).
#
# Build from the repository root (docs/deploy.md):
#   docker buildx build --platform linux/amd64,linux/arm64 -f docker/edge-cpu.Dockerfile \
#     -t ghcr.io/edgecloud/edge-agent:0.1.0 -t ghcr.io/edgecloud/cloud-gateway:0.1.0 --push .

ARG PYTHON_IMAGE=docker.io/library/python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/edgecloud
WORKDIR /src
# Dependencies first (cached layer), then the project itself (non-editable).
COPY pyproject.toml README.md ./
COPY models ./models
COPY bus ./bus
COPY shell ./shell
COPY offload ./offload
COPY edge_agent ./edge_agent
COPY cloud_gateway ./cloud_gateway
COPY simulators ./simulators
RUN /opt/edgecloud/bin/pip install --upgrade pip \
    && /opt/edgecloud/bin/pip install . \
    && /opt/edgecloud/bin/python -c "import edge_agent.cli, cloud_gateway.cli, offload.cli"

FROM ${PYTHON_IMAGE} AS runtime
# Fixed uid/gid: the manifests' runAsUser and the node's hostPath ownership use 10001.
RUN groupadd --system --gid 10001 edgecloud \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/edgecloud \
       --shell /usr/sbin/nologin edgecloud \
    && install -d -o 10001 -g 10001 /var/lib/edgecloud
COPY --from=build /opt/edgecloud /opt/edgecloud
# The root filesystem is read-only in Kubernetes: no .pyc writes, matplotlib caches in /tmp.
ENV PATH=/opt/edgecloud/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
WORKDIR /var/lib/edgecloud
EXPOSE 8080
CMD ["edge-agent"]
