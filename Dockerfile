# redis-remediation-bot: small, non-root, pinned.
# Build:  docker build -t remediation-bot .
# Run:    docker run -p 8080:8080 -v $PWD/bot.yaml:/etc/remediation-bot/bot.yaml:ro remediation-bot
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
COPY bot ./bot
COPY playbooks ./playbooks
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-compile -c requirements.lock . \
    && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="redis-remediation-bot" \
      org.opencontainers.image.description="Alertmanager alerts -> runbook playbooks -> approved Redis remediation"
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/remediation-bot bot
COPY --from=build /opt/venv /opt/venv
# Charts (matplotlib, a runtime dependency) draw off-screen and keep their font cache in /tmp, which
# stays writable under Kubernetes' readOnlyRootFilesystem (an emptyDir there).
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    MPLBACKEND=Agg MPLCONFIGDIR=/tmp/matplotlib
USER 10001
WORKDIR /var/lib/remediation-bot
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=3)"]
ENTRYPOINT ["remediation-bot"]
CMD ["serve", "--config", "/etc/remediation-bot/bot.yaml", "--host", "0.0.0.0", "--port", "8080", "--log-json"]
