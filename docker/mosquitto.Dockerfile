# syntax=docker/dockerfile:1.7
# The MQTT broker: Debian's mosquitto (2.0.11 in bookworm) with the project's edge broker
# configuration, laid out like the eclipse-mosquitto image the manifests name
# (/usr/sbin/mosquitto, /mosquitto/{config,data}, uid 1883), so either image runs them.
# One stage: nothing is compiled.
#
# Build from the repository root (`make images` does it with podman):
#   docker build -f docker/mosquitto.Dockerfile -t ghcr.io/edgecloud/mosquitto:0.1.0 .

ARG DEBIAN_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${DEBIAN_IMAGE} AS runtime
LABEL org.edgecloud.project=edgecloud
RUN apt-get update \
    && apt-get install -y --no-install-recommends mosquitto \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
    && groupadd --system --gid 1883 broker \
    && useradd --system --uid 1883 --gid 1883 --home-dir /mosquitto/data \
       --shell /usr/sbin/nologin broker \
    && install -d -o 1883 -g 1883 /mosquitto/data \
    && install -d /mosquitto/config /mosquitto/secrets /mosquitto/bridge
# The edge broker's configuration and ACL; Kubernetes mounts its ConfigMap over them and
# the password file (Secret) at /mosquitto/secrets/passwd.
COPY manifests/edge/base/mosquitto/mosquitto.conf manifests/edge/base/mosquitto/acl /mosquitto/config/
USER 1883:1883
WORKDIR /mosquitto/data
EXPOSE 1883
CMD ["/usr/sbin/mosquitto", "-c", "/mosquitto/config/mosquitto.conf"]
