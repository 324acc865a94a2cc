"""Create (or re-key) the MLflow service account prodguard's containers log in as; run once
the MLflow server is up, with the human admin's credentials in MLFLOW_TRACKING_USERNAME/PASSWORD.

The account is an MLflow admin: prodguard owns the registry's aliases (promotion, rollback by the
guard) whoever created a model or experiment, and the basic-auth app authorizes proxied artifact
paths of non-admins only below an experiment id (mlflow-artifacts:/<id>/...), which an artifact
root such as mlflow-artifacts:/prodguard is not. Its own password keeps the human admin's out of
every container and can be rotated alone (rerun this).

Environment: MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD (admin),
MLFLOW_SERVICE_USERNAME, MLFLOW_SERVICE_PASSWORD (the account). Idempotent.
"""

from __future__ import annotations

import os
import sys
import time

from mlflow.exceptions import MlflowException
from mlflow.server.auth.client import AuthServiceClient


def main() -> int:
    client = AuthServiceClient(os.environ["MLFLOW_TRACKING_URI"])
    username = os.environ["MLFLOW_SERVICE_USERNAME"]
    password = os.environ["MLFLOW_SERVICE_PASSWORD"]
    for attempt in range(30):  # the server may still be starting its workers
        try:
            try:
                client.create_user(username, password)
                print(f"MLflow user {username} created")
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                client.update_user_password(username, password)
                print(f"MLflow user {username} exists; password updated")
            client.update_user_admin(username, True)
            return 0
        except MlflowException as exc:
            if attempt == 29 or exc.error_code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
                print(f"cannot create the MLflow user {username}: {exc.message}", file=sys.stderr)
                return 1
            time.sleep(2)
    return 1


if __name__ == "__main__":
    sys.exit(main())
