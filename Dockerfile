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
# binutils: `strip` for docker/prune_venv.sh, `nm`, `as` and `ld` for docker/share_blas.sh (build
# stages only).
RUN apt-get update -q && apt-get install -y -q --no-install-recommends binutils \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, so a code change does not reinstall them.
COPY --from=requirements /src/requirements.txt /tmp/
RUN cat /tmp/requirements.txt && pip install -r /tmp/requirements.txt
COPY docker/prune_venv.sh docker/share_blas.sh /usr/local/bin/

# ------------------------------------------------------------------ venv: deps + project, pruned
FROM deps AS venv
COPY pyproject.toml README.md ./
COPY models ./models
COPY service ./service
RUN pip install --no-deps . && pip check \
 && sh /usr/local/bin/share_blas.sh /opt/venv && sh /usr/local/bin/prune_venv.sh /opt/venv

# ------------------------------------------------------------------ venv-ray: the same with Ray
FROM deps AS venv-ray
COPY --from=requirements /src/requirements-ray.txt /tmp/
RUN cat /tmp/requirements-ray.txt && pip install -r /tmp/requirements-ray.txt
COPY pyproject.toml README.md ./
COPY models ./models
COPY service ./service
RUN pip install --no-deps . && pip check \
 && sh /usr/local/bin/share_blas.sh /opt/venv && sh /usr/local/bin/prune_venv.sh /opt/venv

# ------------------------------------------------------------------ the base's Python, stripped
# The base's interpreter, libpython and stdlib extension modules without their debug symbols (the
# official python images link them so; a base that kept them carries ~35 MB more). Here because
# `deps` has binutils; its /usr/local is the base's.
FROM deps AS python-stripped
RUN cp -a /usr/local /tmp/local \
 && find /tmp/local -type f \( -name "*.so" -o -name "*.so.*" -o -path "*/bin/python3*" \) \
      -exec sh -c 'for f; do if head -c 4 "$f" | grep -q ELF; then \
                              strip --strip-unneeded "$f" || exit 1; fi; done' sh {} +

# ------------------------------------------------------------------ the base's file system, slimmed
FROM ${BASE_IMAGE} AS runtime-root
COPY --from=python-stripped /tmp/local/ /usr/local/
COPY docker/slim_base.sh /tmp/
RUN sh /tmp/slim_base.sh && rm /tmp/slim_base.sh

# ------------------------------------------------------------------ base of both runtime images
# The slimmed base as one layer (files deleted in a layer on top of the base would still be shipped
# in the base's layer). It is rebuilt only when the base image or docker/slim_base.sh changes; the
# base's ENV does not carry over, so PATH and LANG are set here as the python images set them.
FROM scratch AS runtime-base
COPY --from=runtime-root / /
ARG APP_UID=10001
# A system user with no login; in group "video" so a passed-through camera (/dev/video0) is readable.
RUN groupadd --system --gid ${APP_UID} v1motion \
 && useradd --system --uid ${APP_UID} --gid v1motion --groups video \
            --home-dir /app --no-create-home --shell /usr/sbin/nologin v1motion \
 && mkdir -p /app /data /var/cache/v1motion/numba \
 && chown v1motion:v1motion /data /var/cache/v1motion/numba
ENV PATH=/opt/venv/bin:/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
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
