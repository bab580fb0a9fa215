# syntax=docker/dockerfile:1.7
# Edge agent for NVIDIA Jetson (Orin, JetPack 6.1 / L4T r36.4): TensorRT through the
# NVIDIA container runtime (K3s runtimeClassName: nvidia). arm64 only.
#
# JetPack 6 ships TensorRT 10.3 with Python bindings for its system Python 3.10 only;
# the project needs Python >= 3.11, so the build stage compiles the bindings for 3.11
# from the TensorRT OSS sources of the same release against JetPack's libnvinfer.
#
# Build on a Jetson (or an arm64 builder with the L4T base pulled), from the repo root:
#   docker build -f docker/edge-jetson.Dockerfile \
#     -t ghcr.io/edgecloud/edge-agent:0.1.0-l4t-r36.4 .
#   docker push ghcr.io/edgecloud/edge-agent:0.1.0-l4t-r36.4

ARG L4T_IMAGE=nvcr.io/nvidia/l4t-jetpack:r36.4.0
ARG TENSORRT_TAG=v10.3.0
ARG PYBIND11_TAG=v2.13.6

FROM ${L4T_IMAGE} AS build
ARG TENSORRT_TAG
ARG PYBIND11_TAG
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get update \
    && apt-get install -y --no-install-recommends \
       python3.11 python3.11-dev python3.11-venv git cmake build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/edgecloud \
    && /opt/edgecloud/bin/pip install --upgrade pip wheel
# TensorRT Python bindings for Python 3.11, linked against JetPack's libnvinfer.
RUN git clone --depth 1 --branch ${TENSORRT_TAG} https://github.com/NVIDIA/TensorRT.git /tmp/trt \
    && git clone --depth 1 --branch ${PYBIND11_TAG} https://github.com/pybind/pybind11.git /tmp/pybind11 \
    && mkdir -p /tmp/ext/python3.11/include \
    && cp -r /usr/include/python3.11/. /tmp/ext/python3.11/include/ \
    && ln -s /tmp/pybind11 /tmp/ext/pybind11 \
    && cd /tmp/trt/python \
    && TRT_OSSPATH=/tmp/trt EXT_PATH=/tmp/ext PYTHON_MAJOR_VERSION=3 PYTHON_MINOR_VERSION=11 \
       TARGET_ARCHITECTURE=aarch64 TRT_LIBPATH=/usr/lib/aarch64-linux-gnu ./build.sh \
    && /opt/edgecloud/bin/pip install /tmp/trt/python/build/bindings_wheel/dist/tensorrt-*.whl
WORKDIR /src
COPY pyproject.toml README.md ./
COPY models ./models
COPY bus ./bus
COPY shell ./shell
COPY offload ./offload
COPY edge_agent ./edge_agent
COPY cloud_gateway ./cloud_gateway
COPY simulators ./simulators
RUN /opt/edgecloud/bin/pip install ".[jetson]" \
    && /opt/edgecloud/bin/python -c "import tensorrt, edge_agent.app.cli; print(tensorrt.__version__)"

FROM ${L4T_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 \
    && apt-get purge -y software-properties-common gpg-agent \
    && apt-get autoremove -y \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 edgecloud \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/edgecloud \
       --shell /usr/sbin/nologin edgecloud \
    && usermod -aG video edgecloud \
    && install -d -o 10001 -g 10001 /var/lib/edgecloud
COPY --from=build /opt/edgecloud /opt/edgecloud
ENV PATH=/opt/edgecloud/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /var/lib/edgecloud
EXPOSE 8080
CMD ["edge-agent"]
