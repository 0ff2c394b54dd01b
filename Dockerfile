# The cangku image: `docker run -d -p 5001:5000 -v DIR:/var/lib/registry cangku`.
#
#   docker build -t cangku .      from PyPI, on the public slim Python image (users)
#   make image                    offline: wheels built on the host (build/wheelhouse) and a
#                                 base made with debootstrap (BASE=cangku-base:bookworm)
#
# The server runs as the non-root user `cangku` (uid 10001); the entrypoint starts as root
# only to hand a root-owned data volume to that user, then drops privileges for good.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
WORKDIR /src
COPY . .
# A wheelhouse in the context (make image) is used alone; otherwise pip asks PyPI.
RUN set -eu; \
    python3 -m venv /opt/cangku; \
    if [ -d build/wheelhouse ]; then \
        /opt/cangku/bin/pip install --no-cache-dir --no-index --find-links build/wheelhouse \
            'cangku[postgresql,otel]'; \
    else \
        /opt/cangku/bin/pip install --no-cache-dir '.[postgresql,otel]'; \
    fi; \
    /opt/cangku/bin/pip uninstall --yes pip

FROM ${BASE}
RUN set -eu; \
    groupadd --system --gid 10001 cangku; \
    useradd --system --uid 10001 --gid cangku --no-create-home \
        --home-dir /var/lib/registry --shell /usr/sbin/nologin cangku; \
    mkdir -p /var/lib/registry /etc/cangku; \
    chown cangku:cangku /var/lib/registry
COPY --from=build /opt/cangku /opt/cangku
COPY docker/entrypoint.sh /usr/local/bin/cangku-entrypoint
COPY docker/config.yml /etc/cangku/config.yml
# Settings: /etc/cangku/config.yml (mount your own there), each overridden by CANGKU_*.
ENV PATH=/opt/cangku/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OTEL_SERVICE_NAME=cangku
VOLUME /var/lib/registry
EXPOSE 5000
# /readyz: the database answers and the storage can be written.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-m", "cangku.healthcheck"]
ENTRYPOINT ["cangku-entrypoint"]
CMD ["serve"]
