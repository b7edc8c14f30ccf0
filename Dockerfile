# capbot: multi-stage build; the runtime image has no compiler and runs as a non-root user.
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY handlers ./handlers
COPY storage ./storage
# Questionnaires and catalogs are data read at start-up, next to the code.
COPY questionnaires ./questionnaires
COPY locales ./locales
RUN /opt/venv/bin/pip install -e .

FROM python:3.11-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 \
    CAPBOT_DATABASE_URL=sqlite+aiosqlite:////data/capbot.db
RUN useradd --system --uid 10001 --home-dir /data --create-home capbot
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /data
USER capbot
VOLUME ["/data"]
# capbot serve shuts down cleanly on SIGTERM (channels stop, pending turns commit).
STOPSIGNAL SIGTERM
ENTRYPOINT ["capbot"]
CMD ["serve"]
