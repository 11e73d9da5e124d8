# The fillprob-operator image: `python3 -m fillprob_operator` in a venv, as a non-root user,
# able to run with readOnlyRootFilesystem (the chart mounts an emptyDir at /tmp).
#
#   docker build --build-arg VERSION=0.1.0 -t fillprob-operator:0.1.0 .
#
# testbed/images.sh builds it with buildah from a local Debian base (BASE) and PIP_OFFLINE=1,
# because the testbed has no route to a package index.
ARG BASE=python:3.11-slim

# ---------------------------------------------------------------- builder: the venv
FROM ${BASE} AS builder
# Non-empty: install only from wheels mounted at /wheels (no index). Empty (the default):
# the package index, as any user's build.
ARG PIP_OFFLINE=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/venv

# The pinned dependencies first, in a layer of their own: with a layer cache (docker build),
# a change to the operator's code reuses it.
COPY requirements.lock /src/requirements.lock
RUN set --; if [ -n "$PIP_OFFLINE" ]; then set -- --no-index --find-links /wheels; fi; \
    /opt/venv/bin/pip install "$@" -r /src/requirements.lock

# Then the project alone. `pip check` fails the build when requirements.lock no longer
# satisfies pyproject.toml's dependencies (someone changed one without regenerating the lock).
# The image runs the operator and installs nothing: pip and setuptools leave the venv.
COPY pyproject.toml /src/pyproject.toml
COPY operator/ /src/operator/
RUN set --; if [ -n "$PIP_OFFLINE" ]; then set -- --no-index --find-links /wheels; fi; \
    /opt/venv/bin/pip install "$@" --no-deps /src \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/python3 -m pip uninstall -q -y pip setuptools

# ---------------------------------------------------------------- the image
FROM ${BASE}
# The project version (pyproject.toml, the chart's appVersion; tests/unit/test_images.py keeps them equal).
ARG VERSION=0.1.0
ARG SOURCE=""
LABEL org.opencontainers.image.title="fillprob-operator" \
      org.opencontainers.image.description="Kubernetes operator that walks grinder's fill-probability rollout ceremony (runbook 32)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE}"

# A name for UID 65532 (the chart's runAsUser): kopf calls getpass.getuser() for its peer
# identity when POD_ID is unset, which raises for a UID without a passwd entry.
RUN echo 'nonroot:x:65532:65532:nonroot:/tmp:/usr/sbin/nologin' >> /etc/passwd \
    && echo 'nonroot:x:65532:' >> /etc/group

COPY --from=builder /opt/venv /opt/venv

# The root filesystem is read-only in the chart: Python must not try to write bytecode, so
# it is compiled here, once. HOME points at the writable /tmp so a library that looks under
# ~ (the kubernetes client's ~/.kube/config) finds a real directory.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
RUN python3 -m compileall -q -j 0 /opt/venv/lib

USER 65532:65532
ENTRYPOINT ["python3", "-m", "fillprob_operator"]
