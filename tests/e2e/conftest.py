from tests.e2e.cli import mlflow_ui  # noqa: F401 - fixture shared by the e2e tests
