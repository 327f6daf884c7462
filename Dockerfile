# The exitguard demo bot for the compose stack: serves /metrics (OpenMetrics, with exemplars)
# on 9464 and exports traces over OTLP/HTTP.
#
# The base image is pinned by tag only: no registry was reachable where this was written, and
# a digest is never written down unseen. Pin it with
#   docker buildx imagetools inspect python:3.11-slim --format '{{json .Manifest.Digest}}'
# and `FROM python:3.11-slim@sha256:<digest>` (docs/security.md).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Every dependency, and the build backend, from the hashed lock file: pip refuses any file
# whose sha256 differs from the lock (regenerate it with the pip-compile command in its
# header; docs/security.md). Its own layer, so editing the code does not re-download it.
COPY requirements.lock ./
RUN pip install --require-hashes --no-deps -r requirements.lock
# The package itself: no index and no build isolation, so nothing is fetched unhashed.
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-index --no-deps --no-build-isolation . \
    && pip check \
    && rm -rf /src \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin exitguard

WORKDIR /
USER 10001:10001
EXPOSE 9464

HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/metrics', timeout=3)"]

ENTRYPOINT ["exitguard"]
CMD ["demo", "--serve", "--bind", "0.0.0.0", "--port", "9464"]
