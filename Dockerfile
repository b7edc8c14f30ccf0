# capbot: multi-stage build. The build stage makes the wheel (code, questionnaires and catalogs
# as package data) and installs it into a venv; the runtime image has no compiler, no source
# tree, and runs as a non-root user.
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY handlers ./handlers
COPY storage ./storage
COPY reports ./reports
COPY questionnaires ./questionnaires
COPY locales ./locales
RUN /opt/venv/bin/pip wheel --no-deps . -w /wheels && /opt/venv/bin/pip install /wheels/*.whl

FROM python:3.11-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 \
    CAPBOT_DATABASE_URL=sqlite+aiosqlite:////data/capbot.db
RUN useradd --system --uid 10001 --home-dir /data --create-home capbot
COPY --from=build /opt/venv /opt/venv
WORKDIR /data
USER capbot
VOLUME ["/data"]
# capbot serve shuts down cleanly on SIGTERM (channels stop, pending turns commit).
STOPSIGNAL SIGTERM
ENTRYPOINT ["capbot"]
CMD ["serve"]
