"""Model registry: MLflow adapter, the alias operations and their audit log."""
