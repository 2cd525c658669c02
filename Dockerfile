# v1motion service image: `docker build -t v1motion .` then
#   docker run -p 8000:8000 -e V1MOTION_TOKEN=change-me v1motion
# (bound to 0.0.0.0 the service refuses to start without a token). Notes: docker/README.md.
ARG BASE_IMAGE=python:3.12-slim

# ------------------------------------------------------------------ builder: the venv
FROM ${BASE_IMAGE} AS builder
# Optional extras of pyproject.toml, comma-separated (e.g. EXTRAS=ray for the compose Ray profile).
ARG EXTRAS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, from pyproject.toml alone, so a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN python -c 'import os, tomllib; \
p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
extras = [e.strip() for e in os.environ.get("EXTRAS", "").split(",") if e.strip()]; \
print("\n".join(p["dependencies"] + [d for e in extras for d in p["optional-dependencies"][e]]))' \
    > /tmp/requirements.txt \
 && cat /tmp/requirements.txt && pip install -r /tmp/requirements.txt
COPY models ./models
COPY service ./service
RUN pip install --no-deps . && pip check

# ------------------------------------------------------------------ runtime
FROM ${BASE_IMAGE}
ARG APP_UID=10001
# A system user with no login; in group "video" so a passed-through camera (/dev/video0) is readable.
RUN groupadd --system --gid ${APP_UID} v1motion \
 && useradd --system --uid ${APP_UID} --gid v1motion --groups video \
            --home-dir /app --no-create-home --shell /usr/sbin/nologin v1motion \
 && mkdir -p /app /data /var/cache/v1motion/numba \
 && chown v1motion:v1motion /data /var/cache/v1motion/numba
COPY --from=builder /opt/venv /opt/venv
COPY web /app/web
COPY docker/healthcheck.py /app/healthcheck.py
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
USER v1motion
# Compile the Numba kernels once, as the app user, into NUMBA_CACHE_DIR: the container is ready in
# seconds instead of compiling at every start (a host with another CPU model recompiles once, there).
RUN python -c "from models.motion.engine import MotionEngine; MotionEngine.load_default().warmup(); MotionEngine.random().warmup()"
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 CMD ["python", "/app/healthcheck.py"]
CMD ["v1motion", "serve"]
