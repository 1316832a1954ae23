FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY policies ./policies
# /data/spool exists, owned by the image's user, so a named volume mounted there is writable.
RUN pip install --no-cache-dir . && useradd --system --home /data gateway \
    && mkdir -p /data/spool && chown -R gateway /data
USER gateway
ENV GATEWAY_DATA_DIR=/data \
    GATEWAY_STORE_URL=sqlite:////data/gateway.db \
    GATEWAY_ADMIN_HOST=0.0.0.0
EXPOSE 8080 8081
VOLUME ["/data"]
CMD ["sh", "-c", "ingest-gateway migrate && exec ingest-gateway serve"]
