# infrabot: chat-ops bot for an infrastructure team's Matrix room.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY commands ./commands
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home-dir /var/lib/infrabot --create-home infrabot

USER infrabot
VOLUME ["/var/lib/infrabot"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status != 200)"
ENTRYPOINT ["infrabot"]
CMD ["run", "--config", "/config/config.yaml"]
