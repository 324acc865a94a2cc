# prodguard's images (docker-compose.yml builds both):
#   prodguard (default target)  the CLI: `prodguard serve`, the monitor and guard loops, one-off jobs
#   mlflow                      the MLflow server with its basic-auth app, on the same pinned mlflow
#                               as the clients (and psycopg for its PostgreSQL stores)
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    BENTOML_DO_NOT_TRACK=true \
    DO_NOT_TRACK=1 \
    GX_ANALYTICS_ENABLED=false \
    FEAST_USAGE=False \
    TQDM_DISABLE=1

WORKDIR /app

# Dependencies first (a layer that survives code changes): the runtime pins of pyproject.toml,
# constrained by the full lock (an unconstrained resolve backtracks for minutes).
COPY pyproject.toml requirements.lock ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -c requirements.lock -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY README.md ./
COPY src ./src
RUN pip install --no-deps -c requirements.lock . && rm -rf build src/*.egg-info

# The example project: settings, feature repo, suites, registry configs (paths in prodguard.yaml
# are relative to it). State lives on the shared volume /srv/prodguard (PRODGUARD_PATHS__DATA_DIR).
COPY prodguard.yaml ./
COPY feature_repo ./feature_repo
COPY expectations ./expectations
COPY mlruns_config ./mlruns_config

RUN useradd --uid 10001 --user-group --no-create-home --home-dir /srv/prodguard prodguard \
    && mkdir -p /srv/prodguard /mlartifacts \
    && chown prodguard:prodguard /srv/prodguard /mlartifacts

ENV PRODGUARD_CONFIG=/app/prodguard.yaml \
    PRODGUARD_PATHS__DATA_DIR=/srv/prodguard \
    HOME=/srv/prodguard


FROM base AS mlflow
COPY deploy/mlflow/requirements.txt /tmp/mlflow-auth.txt
RUN pip install -c requirements.lock -r /tmp/mlflow-auth.txt && rm /tmp/mlflow-auth.txt
COPY deploy/mlflow/create_user.py /app/deploy/mlflow/create_user.py
USER prodguard
EXPOSE 5000
CMD ["mlflow", "server", "--app-name", "basic-auth", "--host", "0.0.0.0", "--port", "5000"]


FROM base AS prodguard
USER prodguard
EXPOSE 3000
CMD ["prodguard", "serve", "--host", "0.0.0.0", "--port", "3000"]
