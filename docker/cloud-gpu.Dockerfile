# syntax=docker/dockerfile:1.7
# Cloud offload-server on NVIDIA GPUs: CUDA 12.6 + TensorRT 10.7 (NGC 24.12 release,
# Ubuntu 24.04, Python 3.12), ONNX Runtime GPU as the fallback backend. amd64.
#
# Build from the repository root (docs/deploy.md):
#   docker build -f docker/cloud-gpu.Dockerfile \
#     -t ghcr.io/edgecloud/offload-server:0.1.0-cuda12.6 .
#   docker push ghcr.io/edgecloud/offload-server:0.1.0-cuda12.6

ARG TENSORRT_IMAGE=nvcr.io/nvidia/tensorrt:24.12-py3
ARG ORT_GPU_VERSION=1.20.1

FROM ${TENSORRT_IMAGE} AS build
ARG ORT_GPU_VERSION
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# --system-site-packages: the NGC image's TensorRT Python bindings stay importable.
RUN python3 -m venv --system-site-packages /opt/edgecloud \
    && /opt/edgecloud/bin/pip install --upgrade pip
WORKDIR /src
COPY pyproject.toml README.md ./
COPY models ./models
COPY bus ./bus
COPY shell ./shell
COPY offload ./offload
COPY edge_agent ./edge_agent
COPY cloud_gateway ./cloud_gateway
COPY simulators ./simulators
# onnxruntime-gpu provides the same "onnxruntime" module with the CUDA and TensorRT EPs.
RUN /opt/edgecloud/bin/pip install . \
    && /opt/edgecloud/bin/pip uninstall -y onnxruntime \
    && /opt/edgecloud/bin/pip install "onnxruntime-gpu==${ORT_GPU_VERSION}" \
    && /opt/edgecloud/bin/python -c "import tensorrt, onnxruntime, offload.cli"

FROM ${TENSORRT_IMAGE} AS runtime
RUN groupadd --system --gid 10001 edgecloud \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/edgecloud \
       --shell /usr/sbin/nologin edgecloud \
    && install -d -o 10001 -g 10001 /var/lib/edgecloud
COPY --from=build /opt/edgecloud /opt/edgecloud
ENV PATH=/opt/edgecloud/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /var/lib/edgecloud
EXPOSE 8001 8002
CMD ["offload-server"]
