# The bridgestat node: answers the network's typed queries with DP releases from the
# member's own data. Build from the repository root after
#   pip wheel -c constraints.txt -w build/wheels ".[node]"   (or `make wheels-node`):
#   docker build -f deploy/node.Dockerfile -t bridgestat-node .
# The base is a build argument so an air-gapped member can use its own (see
# README "For member IT"); a base without Python gets Debian's python3. It is used only to
# build: the image itself starts from scratch and holds the interpreter, the node's virtual
# environment and the shared libraries they load (deploy/node-rootfs.sh), nothing else: no
# shell, package manager, pip, compiler, tests, headers, docs or locales.
ARG BASE=python:3.11-slim
FROM ${BASE} AS build

# binutils for strip; python3 (and venv) when the base has none.
RUN packages="binutils ca-certificates"; \
    command -v python3 >/dev/null 2>&1 || packages="$packages python3 python3-venv"; \
    apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $packages \
    && rm -rf /var/lib/apt/lists/*

# Wheels built on the host: no PyPI access is needed inside the build.
# The node extra only (no scipy, matplotlib or report libraries), at the locked versions.
COPY build/wheels /tmp/wheels
COPY constraints.txt /tmp/constraints.txt
COPY deploy/node-slim.sh deploy/node-rootfs.sh /tmp/
RUN python3 -m venv /opt/bridgestat \
    && /opt/bridgestat/bin/pip install --quiet --no-cache-dir --no-compile --no-index \
       --find-links /tmp/wheels -c /tmp/constraints.txt "bridgestat[node]" \
    && sh /tmp/node-slim.sh "$(/opt/bridgestat/bin/python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    && sh /tmp/node-rootfs.sh /opt/bridgestat /rootfs

FROM scratch
COPY --from=build /rootfs /
ENV PATH=/opt/bridgestat/bin:/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /var/lib/bridgestat
# /etc/bridgestat: node.yaml, certificates, policy (read-only); /data: the member's export
# (read-only); /var/lib/bridgestat: ledger and audit log (the only writable state).
VOLUME ["/var/lib/bridgestat"]
EXPOSE 50051 9464
# Health: grpc.health.v1 Check on the config's listen port over loopback, through the same
# mutual TLS as every caller, as the node's own certificate (a probe identity: health and
# reflection only, never a query). Exit 0 SERVING, 1 otherwise. A node started with another
# config path needs the same path here (compose: `healthcheck`); a connect-only node (no
# listen) has no port to probe: run it with --no-healthcheck and watch the
# bridgestat_node_connected metric instead. Start period: loading a large export takes time.
HEALTHCHECK --interval=30s --timeout=15s --start-period=180s --retries=3 \
    CMD ["bridgestat-node", "health", "--config", "/etc/bridgestat/node.yaml"]
ENTRYPOINT ["bridgestat-node"]
CMD ["serve", "--config", "/etc/bridgestat/node.yaml"]
