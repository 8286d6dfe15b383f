# The bridgestat coordinator: the researchers' and coordinators' `bridgestat` command (study
# plan/run, report) in an image. Build from the repository root after
#   pip wheel -c constraints.txt -w build/wheels ".[coordinator]"   (or `make wheels-coordinator`):
#   docker build -f deploy/coordinator.Dockerfile -t bridgestat-coordinator .
ARG BASE=python:3.11-slim
FROM ${BASE}

RUN if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
           python3 python3-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi

COPY build/wheels /tmp/wheels
COPY constraints.txt /tmp/constraints.txt
RUN python3 -m venv /opt/bridgestat \
    && /opt/bridgestat/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheels \
       -c /tmp/constraints.txt "bridgestat[coordinator]" \
    && rm -rf /tmp/wheels /tmp/constraints.txt \
    && (getent passwd bridgestat >/dev/null || useradd --system --uid 10001 --home-dir /work bridgestat) \
    && mkdir -p /work && chown bridgestat /work

ENV PATH=/opt/bridgestat/bin:$PATH PYTHONUNBUFFERED=1 MPLCONFIGDIR=/tmp/matplotlib
USER bridgestat
WORKDIR /work
ENTRYPOINT ["bridgestat"]
CMD ["--help"]
