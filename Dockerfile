# syntax=docker/dockerfile:1
#
# One image for the four EventPipe services (ingest, store, enrich, query): they share one Python
# package, one dependency set and the generated gRPC stubs, so one build serves all of them and
# the argument picks the service: `docker run eventpipe store` runs `python -m store`.
# docs/deployment.md explains the choice. Targets:
#
#   service (default)  the four services, Python only        docker build -t eventpipe .
#   spark              service + JRE 17 + Spark's k8s entrypoint: the enrich service (its Spark
#                      driver runs in-process) and its Spark executor pods
#                                                            docker build --target spark -t eventpipe-spark .
#   envoy              Envoy with the descriptor set baked in docker build --target envoy -t eventpipe-envoy .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# Spark's Kubernetes entrypoint script comes from the official image. Its contract (the
# `executor` argument and SPARK_* variables set by the driver) has held from Spark 3.4 to 4.x;
# move this to the pyspark pin of pyproject.toml once an official image of that version exists.
ARG SPARK_ENTRYPOINT_IMAGE=apache/spark:4.0.1-scala2.13-java17-ubuntu
ARG ENVOY_IMAGE=envoyproxy/envoy:distroless-v1.40.0
ARG GO_IMAGE=golang:1.26-bookworm
ARG NODE_IMAGE=node:20-bookworm-slim

# ---------------------------------------------------------------------------------------------
# The two tools code generation needs for the REST reference, at the versions
# eventpipe.stack.install pins (OPENAPIV2_VERSION, SWAGGER_UI_VERSION): keep them in step.
FROM ${GO_IMAGE} AS openapi-generator
RUN CGO_ENABLED=0 GOBIN=/out \
    go install github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-openapiv2@v2.33.0
FROM ${NODE_IMAGE} AS swagger-ui
RUN mkdir /out && cd /out && npm install --no-audit --no-fund swagger-ui-dist@5.35.0

# ---------------------------------------------------------------------------------------------
# builder: a venv at /opt/venv with the dependencies and the project, generated stubs included.
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, from pyproject.toml alone, so a source change does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

COPY protos/ protos/
COPY services/ services/
# Where eventpipe.stack.install.tool_path looks for them (EVENTPIPE_CACHE_DIR below).
COPY --from=openapi-generator /out/protoc-gen-openapiv2 \
    /opt/eventpipe-cache/go/protoc-gen-openapiv2-v2.33.0/protoc-gen-openapiv2
COPY --from=swagger-ui /out/node_modules /opt/eventpipe-cache/npm/swagger-ui-5.35.0/node_modules
# The one code-generation step: stubs into services/eventpipe/*/v1 and the descriptor set into
# .build/descriptors/eventpipe.pb. It runs from the source tree (PYTHONPATH=services) because it
# finds protos/ relative to its own file; `pip install .` then packages the generated stubs.
RUN EVENTPIPE_CACHE_DIR=/opt/eventpipe-cache PYTHONPATH=services python -m eventpipe.codegen \
    && pip install --no-deps . \
    && cd / && python -c "import eventpipe.ingest.v1.ingest_pb2_grpc, eventpipe.query.v1.query_pb2_grpc"

# ---------------------------------------------------------------------------------------------
# spark-connectors: the Spark connector jars (the Kafka source), resolved with Maven by the
# tooling's resolver (eventpipe.stack.spark_connectors: its pom, its version, minus the jars
# pyspark already ships) into the cache folder enrich reads at run time. Pods never run Maven.
FROM builder AS spark-connectors
RUN apt-get update \
    && apt-get install -y --no-install-recommends maven openjdk-17-jdk-headless \
    && rm -rf /var/lib/apt/lists/*
RUN EVENTPIPE_CACHE_DIR=/opt/eventpipe-cache PYTHONPATH=services python -m eventpipe.stack.spark_connectors

# Spark's official image, used only for its Kubernetes entrypoint scripts.
FROM ${SPARK_ENTRYPOINT_IMAGE} AS spark-dist

# ---------------------------------------------------------------------------------------------
# envoy: the edge proxy with the descriptor set for grpc_json_transcoder baked in, so the REST
# mapping always matches the stubs of the same build. Its config comes from a ConfigMap (k8s/).
# The distroless image runs Envoy directly as a non-root user and has no shell.
FROM ${ENVOY_IMAGE} AS envoy
COPY --from=builder /src/.build/descriptors/eventpipe.pb /etc/envoy/descriptors/eventpipe.pb
COPY --from=builder /src/.build/envoy/reject_unknown_fields.lua /etc/envoy/lua/reject_unknown_fields.lua
# The REST reference Envoy serves at /openapi.json and /docs (too big for a ConfigMap).
COPY --from=builder /src/.build/envoy/openapi.json /etc/envoy/openapi/openapi.json
COPY --from=builder /src/.build/envoy/docs.html /etc/envoy/openapi/docs.html
EXPOSE 8080

# ---------------------------------------------------------------------------------------------
# runtime: the venv only; no compiler, no pip cache, no sources, no protos. Non-root (10001).
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 eventpipe \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/eventpipe --create-home \
        --shell /usr/sbin/nologin eventpipe
COPY --from=builder /opt/venv /opt/venv
USER 10001:10001
WORKDIR /home/eventpipe
# By convention gRPC 50051..50054 and Prometheus 9101..9104 (ingest, store, enrich, query).
EXPOSE 50051 50052 50053 50054 9101 9102 9103 9104
ENTRYPOINT ["python", "-m"]
CMD ["ingest"]

# ---------------------------------------------------------------------------------------------
# spark: runtime + JRE 17. SPARK_HOME is pyspark's own distribution, so the driver (in the enrich
# pod) and the executors share one set of jars and one Python; Spark's k8s entrypoint runs the
# executor role (`/opt/entrypoint.sh executor`) and execs any other command as given.
FROM runtime AS spark
USER root
# tini: Spark's entrypoint runs the executor under it. procps: Spark's scripts call ps.
RUN mkdir -p /usr/share/man/man1 \
    && apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless tini procps \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s "$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")" /opt/java \
    && mkdir -p /opt/spark/conf
COPY --from=spark-dist /opt/entrypoint.sh /opt/decom.sh /opt/
COPY --from=spark-connectors /opt/eventpipe-cache/spark-connectors /opt/eventpipe-cache/spark-connectors
ENV EVENTPIPE_CACHE_DIR=/opt/eventpipe-cache \
    JAVA_HOME=/opt/java \
    SPARK_HOME=/opt/venv/lib/python3.11/site-packages/pyspark \
    SPARK_CONF_DIR=/opt/spark/conf \
    PYSPARK_PYTHON=/opt/venv/bin/python \
    PYSPARK_DRIVER_PYTHON=/opt/venv/bin/python
USER 10001:10001
ENTRYPOINT ["/opt/entrypoint.sh"]
CMD ["python", "-m", "enrich"]

# ---------------------------------------------------------------------------------------------
# service: the default target (the last stage), the image of ingest, store and query.
FROM runtime AS service
