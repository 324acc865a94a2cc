#!/usr/bin/env bash
# Run once by the postgres image on an empty data volume (/docker-entrypoint-initdb.d): the roles
# and databases of the stack. Passwords come from the container's environment, never from files:
#   PRODGUARD_DB_PASSWORD  role prodguard, database prodguard (prediction log, feedback, alerts,
#                          alert state, audit log, Feast SQL registry)
#   MLFLOW_DB_PASSWORD     role mlflow, databases mlflow (tracking + model registry) and
#                          mlflow_auth (the basic-auth app's users and permissions)
# psql variables (:'name') quote the values, so any password is safe here.
set -euo pipefail
: "${PRODGUARD_DB_PASSWORD:?set PRODGUARD_DB_PASSWORD}"
: "${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD}"

psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
    -v prodguard_password="$PRODGUARD_DB_PASSWORD" \
    -v mlflow_password="$MLFLOW_DB_PASSWORD" <<'SQL'
CREATE ROLE prodguard LOGIN PASSWORD :'prodguard_password';
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE prodguard OWNER prodguard;
CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE mlflow_auth OWNER mlflow;
REVOKE ALL ON DATABASE prodguard FROM PUBLIC;
REVOKE ALL ON DATABASE mlflow FROM PUBLIC;
REVOKE ALL ON DATABASE mlflow_auth FROM PUBLIC;
SQL
