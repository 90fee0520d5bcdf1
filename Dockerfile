# Agora node image. Production runs point it at PostgreSQL, Redis and RabbitMQ through the
# AGORA_* environment (see README); the embedded engines are for laptops, not containers.
# The wheel is the unit of deployment: the build stage makes Agora's wheel (migrations, templates
# and static files inside as package data) and its dependencies' wheels; the runtime stage installs
# that wheel from them, without the network, and copies nothing else by hand.
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY agora ./agora
COPY bench ./bench
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
# MALLOC_ARENA_MAX: libvips' worker threads each get a glibc arena otherwise; two keep its RSS at
# Pillow's level.
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MALLOC_ARENA_MAX=2 AGORA_ENV=production AGORA_DATA_DIR=/var/lib/agora
RUN useradd --system --uid 10001 --home-dir /var/lib/agora --create-home agora
COPY --from=build /wheels /wheels
RUN python -m pip install --no-cache-dir --no-index --find-links=/wheels /wheels/agora-*.whl \
    && rm -rf /wheels
WORKDIR /app
# By number: the runtime need not resolve the name (the same user, uid 10001).
USER 10001
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"]
CMD ["agora", "serve", "--host", "0.0.0.0", "--port", "8080"]
