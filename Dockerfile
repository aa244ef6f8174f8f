# One image for every orderstream component; the command picks the component:
#   python -m producer | python -m consumer | python -m reclaimer | python -m autoscaler
# Build:  docker build -t orderstream:dev .
# Here (no registry, Debian's docker.io): `make image` (k8s/local/image.sh) builds it with
#   PYTHON_IMAGE=<a local Debian base made by debootstrap>, APT_BUILD_PACKAGES= (nothing to
#   compile) and PIP_INSTALL_ARGS="--no-index --find-links=/wheels" (a wheelhouse made on the host).
# The Dockerfile needs no BuildKit feature, so the classic builder (DOCKER_BUILDKIT=0) builds it.
# The final stage holds only the Python runtime and a prebuilt virtualenv: no compiler,
# no pip cache, no source tree, and it runs as the numeric non-root UID 10001 so that
# Kubernetes can verify `runAsNonRoot` without resolving a user name.

ARG PYTHON_IMAGE=python:3.11-slim

########################################################################################
# builder: resolve and build every dependency into /opt/venv.
########################################################################################
FROM ${PYTHON_IMAGE} AS builder

# Compilers live only in this stage; they are needed when a dependency has no wheel for
# the target platform (e.g. hiredis on an unusual architecture). Empty: install none (a
# wheelhouse build has nothing to compile).
ARG APT_BUILD_PACKAGES=build-essential
RUN if [ -n "$APT_BUILD_PACKAGES" ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends $APT_BUILD_PACKAGES \
        && rm -rf /var/lib/apt/lists/*; \
    fi
# Extra pip arguments, e.g. "--no-index --find-links=/wheels" to install from the wheelhouse only.
ARG PIP_INSTALL_ARGS=

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# The venv path must be the same in both stages: scripts in /opt/venv/bin carry it in
# their shebang lines.
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# Dependencies first, from pyproject.toml alone, so that a source-only change reuses
# this (slow) layer from the build cache.
COPY pyproject.toml README.md ./
# build/wheelhouse (made by `make image`, admitted by .dockerignore) lands in /wheels when it
# exists; the wildcard keeps a plain `docker build .` without it working (pyproject.toml always
# matches, so the instruction never copies nothing).
COPY pyproject.toml build/wheelhous[e] /wheels/
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt \
    && if [ -z "$PIP_INSTALL_ARGS" ]; then pip install --upgrade pip; fi \
    && pip install $PIP_INSTALL_ARGS -r /tmp/requirements.txt

# Then the project itself, without touching the dependencies installed above.
COPY streamcore ./streamcore
COPY producer ./producer
COPY consumer ./consumer
COPY reclaimer ./reclaimer
COPY autoscaler ./autoscaler
COPY soak ./soak
# pip and setuptools are only needed to build the venv (about 23 MB): the runtime never installs.
RUN pip install $PIP_INSTALL_ARGS --no-deps . \
    && pip uninstall --yes --quiet pip setuptools \
    && python -m compileall -q /opt/venv

########################################################################################
# runtime: what runs in the cluster.
########################################################################################
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="orderstream" \
      org.opencontainers.image.description="Order processing on Redis Streams consumer groups" \
      org.opencontainers.image.licenses="MIT"

# A fixed numeric UID/GID (10001, see docs/CONTRACT.md) that the chart's securityContext
# repeats. No home directory and no login shell: nothing is supposed to write there.
RUN groupadd --system --gid 10001 orderstream \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin orderstream

COPY --from=builder /opt/venv /opt/venv

# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only in Kubernetes, and the
# bytecode was compiled at build time. PYTHONUNBUFFERED: logs reach `kubectl logs` at once.
# The only writable path the components need is /tmp (an emptyDir in the chart).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp

WORKDIR /app
USER 10001:10001

# Documentation only; the chart sets ports explicitly (producer PORT, HEALTH_PORT, METRICS_PORT).
EXPOSE 3000 8081 8080 9090

# The producer is the default; every other component is chosen by overriding the command.
CMD ["python", "-m", "producer"]
