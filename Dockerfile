# The exitguard demo bot for the compose stack: serves /metrics (OpenMetrics, with exemplars)
# on 9464 and exports traces over OTLP/HTTP.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the package build needs, so editing tests or docs does not invalidate this layer.
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . \
    && rm -rf /src \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin exitguard

WORKDIR /
USER 10001:10001
EXPOSE 9464

HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/metrics', timeout=3)"]

ENTRYPOINT ["exitguard"]
CMD ["demo", "--serve", "--bind", "0.0.0.0", "--port", "9464"]
