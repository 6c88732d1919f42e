# pooljob as a container image for schedulers (cron, Airflow, Kubernetes CronJob):
# docs/deployment.md.
#
#   docker build -t pooljob .
#   docker run --rm -v "$PWD:/work" pooljob run /work/configs/demo.toml
#
# The image runs `pooljob` as the non-root user `pooljob` (uid 10001), with the
# extras a scheduled job needs (EXTRAS below). Object storage (s3://) needs no
# extra: pyarrow's S3 filesystem ships in its wheel. Credentials come from the
# AWS_* environment at run time, never from the image.
#
# tests/test_deployment.py builds the same wheel and installs it with the same
# EXTRAS into a clean virtual environment, then runs the CLI from there.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pooljob ./pooljob
COPY sql ./sql
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:${PYTHON_VERSION}-slim
ARG EXTRAS=delta
COPY --from=build /wheels /wheels
RUN wheel="$(ls /wheels/pooljob-*.whl)" \
    && pip install --no-cache-dir "pooljob[${EXTRAS}] @ file://${wheel}" \
    && rm -rf /wheels \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin pooljob \
    && mkdir -p /work && chown pooljob:pooljob /work \
    && pooljob --version
# Logs reach the scheduler as they are written. /work is the working directory,
# writable by the user: DuckDB spills to /work/.tmp beyond its memory limit.
ENV PYTHONUNBUFFERED=1

USER 10001
WORKDIR /work
ENTRYPOINT ["pooljob"]
CMD ["--help"]
