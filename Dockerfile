# pooljob as a container: mount a directory holding the config, data and output.
#   docker build -t pooljob .
#   docker run --rm -v "$PWD:/work" pooljob run /work/configs/demo.toml
FROM python:3.11-slim

WORKDIR /opt/pooljob
COPY pyproject.toml README.md ./
COPY pooljob ./pooljob
COPY sql ./sql
RUN pip install --no-cache-dir . && useradd --create-home pooljob

USER pooljob
WORKDIR /work
ENTRYPOINT ["pooljob"]
CMD ["--help"]
