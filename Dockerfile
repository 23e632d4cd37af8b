# edgesieve: the pipeline runtime and the device simulator in one image.
#   docker build -t edgesieve .
#   docker run --rm -v $PWD/compose/pipeline.yaml:/config/pipeline.yaml:ro edgesieve
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# Dependencies first (a cached layer while only the code changes), then the package itself.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt
COPY . .
RUN pip install --no-deps . \
 && useradd --system --uid 10001 --home /var/lib/edgesieve edgesieve \
 && mkdir -p /var/lib/edgesieve /config \
 && chown edgesieve /var/lib/edgesieve

USER edgesieve
# Outbox, checkpoints and spilled models live here: mount a named volume on it.
VOLUME ["/var/lib/edgesieve"]
ENV EDGESIEVE_STATE=/var/lib/edgesieve
EXPOSE 9108

# Healthy when the Prometheus endpoint answers (the pipeline is up and serving its counters).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:9108/metrics', timeout=4)" || exit 1

ENTRYPOINT ["edgesieve"]
CMD ["run", "/config/pipeline.yaml", "--metrics-port", "9108", "--metrics-addr", "0.0.0.0", "--log-format", "json"]
