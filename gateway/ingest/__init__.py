"""The ingest plane: the ASGI app, the metering middleware, body reading, payload counting,
keys, the reverse proxy and the upstream client."""
