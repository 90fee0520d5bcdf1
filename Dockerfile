# Agora node image. Production runs point it at PostgreSQL, Redis and RabbitMQ through the
# AGORA_* environment (see README); the embedded engines are for laptops, not containers.
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY agora ./agora
COPY bench ./bench
RUN python -m pip wheel --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
ENV PYTHONUNBUFFERED=1 AGORA_ENV=production AGORA_DATA_DIR=/var/lib/agora
RUN useradd --system --uid 10001 --home-dir /var/lib/agora --create-home agora
COPY --from=build /wheels /wheels
RUN python -m pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
WORKDIR /app
# The migration runner looks for migrations/ next to the installed package's parent.
COPY migrations /usr/local/lib/python3.11/site-packages/migrations
USER agora
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"
CMD ["agora", "serve", "--host", "0.0.0.0", "--port", "8080"]
