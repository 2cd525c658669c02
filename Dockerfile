# v1motion service image: `docker build -t v1motion .` then
#   docker run -p 8000:8000 -e V1MOTION_TOKEN=change-me v1motion
# (bound to 0.0.0.0 the service refuses to start without a token). Notes: docker/README.md.
#
# Two images from this file: the default (last) stage `runtime`, without Ray, and `--target ray`: the
# same plus Ray for the compose file's `ray` profile (the service as Ray client, the Ray head and
# workers), so that Ray's ~300 MB stay out of the default image.
ARG BASE_IMAGE=python:3.12-slim

# ------------------------------------------------------------------ requirements, from pyproject.toml
# Only the lists reach the next stage: editing another part of pyproject.toml does not reinstall.
FROM ${BASE_IMAGE} AS requirements
COPY pyproject.toml /src/
RUN python -c 'import tomllib; \
p = tomllib.load(open("/src/pyproject.toml", "rb"))["project"]; \
open("/src/requirements.txt", "w").write("\n".join(p["dependencies"]) + "\n"); \
open("/src/requirements-ray.txt", "w").write("\n".join(p["optional-dependencies"]["ray"]) + "\n")'

# ------------------------------------------------------------------ deps: the venv, as pip makes it
FROM ${BASE_IMAGE} AS deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
# binutils: `strip` for docker/prune_venv.sh (build stages only).
RUN apt-get update -q && apt-get install -y -q --no-install-recommends binutils \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, so a code change does not reinstall them.
COPY --from=requirements /src/requirements.txt /tmp/
RUN cat /tmp/requirements.txt && pip install -r /tmp/requirements.txt
COPY docker/prune_venv.sh /usr/local/bin/prune_venv.sh

# ------------------------------------------------------------------ venv: deps + project, pruned
FROM deps AS venv
COPY pyproject.toml README.md ./
COPY models ./models
COPY service ./service
RUN pip install --no-deps . && pip check && sh /usr/local/bin/prune_venv.sh /opt/venv

# ------------------------------------------------------------------ venv-ray: the same with Ray
FROM deps AS venv-ray
COPY --from=requirements /src/requirements-ray.txt /tmp/
RUN cat /tmp/requirements-ray.txt && pip install -r /tmp/requirements-ray.txt
COPY pyproject.toml README.md ./
COPY models ./models
COPY service ./service
RUN pip install --no-deps . && pip check && sh /usr/local/bin/prune_venv.sh /opt/venv

# ------------------------------------------------------------------ base of both runtime images
FROM ${BASE_IMAGE} AS runtime-base
ARG APP_UID=10001
# A system user with no login; in group "video" so a passed-through camera (/dev/video0) is readable.
RUN groupadd --system --gid ${APP_UID} v1motion \
 && useradd --system --uid ${APP_UID} --gid v1motion --groups video \
            --home-dir /app --no-create-home --shell /usr/sbin/nologin v1motion \
 && mkdir -p /app /data /var/cache/v1motion/numba \
 && chown v1motion:v1motion /data /var/cache/v1motion/numba
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    NUMBA_CACHE_DIR=/var/cache/v1motion/numba \
    MPLBACKEND=Agg \
    MPLCONFIGDIR=/tmp/matplotlib \
    V1MOTION_HOST=0.0.0.0 \
    V1MOTION_PORT=8000 \
    V1MOTION_DATA_DIR=/data \
    V1MOTION_WEB_DIR=/app/web
WORKDIR /app
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 CMD ["python", "/app/healthcheck.py"]
CMD ["v1motion", "serve"]

# ------------------------------------------------------------------ ray: the image of the ray profile
FROM runtime-base AS ray
COPY --from=venv-ray /opt/venv /opt/venv
COPY web /app/web
COPY docker/healthcheck.py docker/runtime_check.py /app/
USER v1motion
# Every feature once, as the app user: fills NUMBA_CACHE_DIR with every kernel the service uses (ready
# in seconds instead of compiling at each start; a host with another CPU model recompiles once, there)
# and fails the build if pruning took something the service needs (docker/runtime_check.py).
RUN python /app/runtime_check.py --absent networkx pip --require ray ray.util.client

# ------------------------------------------------------------------ runtime: the default image
FROM runtime-base AS runtime
COPY --from=venv /opt/venv /opt/venv
COPY web /app/web
COPY docker/healthcheck.py docker/runtime_check.py /app/
USER v1motion
RUN python /app/runtime_check.py --absent networkx pip ray
