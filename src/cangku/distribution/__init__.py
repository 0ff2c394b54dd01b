"""The OCI Distribution API (/v2/...): translates HTTP to registry use cases and back."""
