# The streammon image: the package, the example app and the demo producer.
#   docker build -t streammon .
#   docker run --rm streammon run examples/taxi_app.py:monitor --bootstrap-servers kafka:9092 ...
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# Dependencies change less often than the code: install the package from its metadata first.
COPY pyproject.toml README.md ./
COPY streammon ./streammon
RUN pip install .

COPY examples ./examples
COPY deploy/demo_producer.py ./deploy/demo_producer.py

# State and generated files live in volumes; the folders exist here so that a fresh named volume
# starts owned by the unprivileged user.
RUN useradd --system --uid 10001 --home-dir /app streammon \
    && mkdir -p /state /generated/grafana /generated/prometheus \
    && chown -R streammon /state /generated
USER streammon

EXPOSE 9108
ENTRYPOINT ["streammon"]
CMD ["--help"]
