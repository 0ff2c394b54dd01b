"""Pure domain: digests, names, media types and manifests. Imports nothing of ours."""
